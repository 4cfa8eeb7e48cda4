"""Policy gradient: returns, the REINFORCE loss, and its baselines (moving mean, RLOO, GRPO).

Notation of the method: J(theta) = E_{tau ~ pi_theta}[R(tau)], estimated by
grad J = E[sum_t grad log pi(a_t|s_t) (R(tau) - b)] with a baseline b that does not depend on a_t.
"""

from __future__ import annotations

import torch

from rlhfkit.algos._checks import (
    check_choice,
    check_group_size,
    check_mask,
    check_per_sequence_or_token,
    check_positive,
    check_rank,
    check_same_shape,
    check_tensor,
    check_unit_interval,
)
from rlhfkit.algos.masked import aggregate

GRPO_SCALES = ("group", "batch", "none")


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t'-t) r_t' = r_t + gamma G_{t+1}  (reward-to-go), over masked tokens.

    Computed backwards; the sum stops at the first False after t (right-padded responses: the
    end of the response). With gamma = 1, G_t is the sum of the rewards still to come
    (OpenRLHF `reinforce_baseline` token returns).

    Args:
      rewards: (B, T) per-token rewards r_t.
      mask: torch.bool (B, T).
      gamma: discount in [0, 1].

    Returns:
      (B, T) returns, 0 where mask is False.
    """
    check_rank("rewards", rewards, "B", "T")
    check_mask(mask, rewards, "rewards")
    gamma = check_unit_interval("gamma", gamma)
    rewards = torch.where(mask, rewards, 0.0)
    future = torch.zeros_like(rewards[:, 0])  # (B,) G_{t+1}, 0 after the last token
    returns = []
    for t in reversed(range(rewards.shape[1])):
        future = torch.where(mask[:, t], rewards[:, t] + gamma * future, 0.0)  # (B,)
        returns.append(future)
    return torch.stack(returns[::-1], dim=1)  # (B, T)


def reinforce_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    mode: str = "sequence",
    constant: float | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """loss = -aggregate_{i,t}(log pi(a_i,t | s_i,t) * A_i(,t)),  whose gradient is -grad J.

    REINFORCE (Williams 1992): grad J = E[sum_t grad log pi(a_t|s_t) R(tau)]; with a baseline,
    A = R(tau) - b (`baseline_advantages`, `rloo_advantages`, `grpo_advantages`) or per-token
    advantages. The exact textbook estimator -(1/B) sum_i sum_t logp_i,t A_i is
    mode="sequence_sum" (also RLOO's loss, Ahmadian et al. 2024); "sequence" averages each
    sequence's tokens first (GRPO), "token" averages all tokens of the batch, "constant" divides
    by B * constant (Dr. GRPO). See `aggregate`. Advantages are constants of the loss: they are
    detached so no gradient reaches a learned baseline through them.

    Args:
      logp: (B, T) log pi(a_t|s_t) of the sampled tokens, with grad.
      mask: torch.bool (B, T).
      advantages: (B,) one value per sequence (e.g. R(tau) or R - b), broadcast over its tokens,
        or (B, T) per token.
      mode: "token", "sequence", "sequence_sum" or "constant" (see `aggregate`).
      constant: for mode "constant".
      denominator: the count of the whole batch when this is one part of it (see `aggregate`).

    Returns:
      0-dim loss to minimise.
    """
    check_rank("logp", logp, "B", "T")
    check_mask(mask, logp, "logp")
    advantages = check_per_sequence_or_token("advantages", advantages, logp).detach()
    return -aggregate(logp * advantages, mask, mode=mode, constant=constant, denominator=denominator)


def baseline_advantages(rewards: torch.Tensor, baseline: float | torch.Tensor) -> torch.Tensor:
    """A = R(tau) - b.

    The baseline form of the policy gradient, sum_t grad log pi(a_t|s_t) (R(tau) - b(s_t)):
    unbiased for any b that does not depend on a_t, and lower variance when b is close to E[R]
    (e.g. a moving mean of R from `moving_mean_update`, or the value V(s_t)).

    Args:
      rewards: (B,) returns R(tau), or (B, T) per-token returns.
      baseline: a float, a 0-dim tensor, or a tensor with the shape of `rewards`.

    Returns:
      shape of `rewards`.
    """
    check_tensor("rewards", rewards)
    if isinstance(baseline, torch.Tensor):
        if baseline.dim() != 0:
            check_same_shape(rewards=rewards, baseline=baseline)
    elif isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"baseline must be a number or a tensor, got {baseline!r}")
    return rewards - baseline


def moving_mean_update(
    mean: float | torch.Tensor | None,
    value: float | torch.Tensor,
    decay: float,
) -> float | torch.Tensor:
    """m <- value if m is None, else decay * m + (1 - decay) * value.

    Exponential moving mean of past rewards, the "REINFORCE with baseline" of Ahmadian et al.
    2024. The first value initialises it, so an early baseline is not biased towards 0.

    Args:
      mean: the current mean, or None before the first update.
      value: the new observation (e.g. the batch's mean reward), a float or 0-dim tensor.
      decay: in [0, 1]; the weight kept on the old mean.

    Returns:
      the new mean.
    """
    decay = check_unit_interval("decay", decay)
    if mean is None:
        return value
    return decay * mean + (1.0 - decay) * value


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = R_i - (1/(k-1)) sum_{j != i} R_j = k/(k-1) (R_i - mean_j R_j).

    REINFORCE leave-one-out (Ahmadian et al. 2024; Kool et al. 2019): each sample's baseline is
    the mean reward of the other k-1 samples of the same prompt, so it does not depend on the
    sample's own actions. Advantages sum to 0 in each group.

    Args:
      rewards: (B,) rewards laid out as B/k consecutive groups of k samples of one prompt.
      group_size: k >= 2, dividing B.

    Returns:
      (B,) advantages.
    """
    check_rank("rewards", rewards, "B")
    k = check_group_size(group_size, rewards.shape[0])
    groups = rewards.reshape(-1, k)  # (B/k, k)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)  # (B/k, k)
    return (groups - others_mean).reshape(-1)  # (B,)


def grpo_advantages(
    rewards: torch.Tensor,
    group_size: int,
    eps: float = 1e-4,
    scale: str = "group",
) -> torch.Tensor:
    """A_i = (R_i - mean(R_group)) / (std(R_group) + eps)  (std unbiased).

    Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath section 4.1.2), given to
    every token of sample i. eps = 1e-4 and the unbiased std follow TRL's GRPOTrainer; scale
    picks the divisor as TRL's `scale_rewards`: "group" the group's std, "batch" the std of the
    whole batch, "none" no division (Dr. GRPO). A group of equal rewards gives 0, never NaN.

    Args:
      rewards: (B,) rewards laid out as B/G consecutive groups of G samples of one prompt.
      group_size: G >= 2, dividing B.
      eps: > 0.
      scale: "group", "batch" or "none".

    Returns:
      (B,) advantages.
    """
    check_rank("rewards", rewards, "B")
    g = check_group_size(group_size, rewards.shape[0])
    check_positive("eps", eps)
    check_choice("scale", scale, GRPO_SCALES)
    groups = rewards.reshape(-1, g)  # (B/G, G)
    centred = groups - groups.mean(dim=1, keepdim=True)  # (B/G, G)
    if scale == "group":
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    return centred.reshape(-1)  # (B,)
