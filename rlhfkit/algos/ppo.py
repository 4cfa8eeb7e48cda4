"""PPO losses (Schulman et al. 2017): clipped surrogate, clipped value loss, entropy term, and their sum.

The method's objective, to maximise:  L_PPO = L_CLIP - c1 L_VF + c2 H.  Each function returns a
loss to minimise (the negative of what it maximises) and diagnostics computed under no_grad, as
0-dim detached tensors (call `.item()` when logging, so the training loop never waits on the
device for them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from rlhfkit.algos._checks import (
    check_mask,
    check_nonnegative,
    check_per_sequence_or_token,
    check_positive,
    check_rank,
    check_same_shape,
)
from rlhfkit.algos.kl import kl_k3
from rlhfkit.algos.masked import aggregate, masked_mean


class PolicyLossStats(NamedTuple):
    """Diagnostics of the clipped surrogate, 0-dim detached tensors over the masked tokens."""

    clipfrac: torch.Tensor  # share of tokens where the clipped branch is the one used
    approx_kl: torch.Tensor  # 0.5 * mean (logp - old_logp)^2  (k2; lm-human-preferences, N+, TRL)
    approx_kl_k3: torch.Tensor  # mean (rho - 1) - log rho  (k3 of KL(old || new); CleanRL)
    ratio_mean: torch.Tensor
    ratio_max: torch.Tensor
    ratio_min: torch.Tensor


class ValueLossStats(NamedTuple):
    """Diagnostics of the value loss, 0-dim detached tensors over the masked tokens."""

    clipfrac: torch.Tensor  # share of tokens where the clipped value's error is the larger one
    values_mean: torch.Tensor


def _masked_extreme(x: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    # max / min over True entries; an empty mask gives 1 (the ratio of unchanged policies)
    fill = -math.inf if largest else math.inf
    kept = torch.where(mask, x, fill)
    extreme = kept.amax() if largest else kept.amin()
    return torch.where(mask.any(), extreme, torch.ones_like(extreme))


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    mode: str = "token",
    constant: float | None = None,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """loss = -L_CLIP = aggregate(max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))),
    rho_t = exp(logp_t - old_logp_t).

    The clipped surrogate (Schulman et al. 2017, eq. 7), written as its negative as
    lm-human-preferences train_policy.py and N+/TRL do: max of the negated terms = -min of the
    terms. Where the ratio has left [1 - eps, 1 + eps] in the direction the advantage pushes it,
    the clipped branch is used and the gradient is 0. At rho = 1 (first minibatch of an
    iteration) the gradient is the policy gradient -grad aggregate(A logp).

    clipfrac follows lm-human-preferences/TRL: the share of tokens where the clipped branch is
    strictly larger (the clip binds), not CleanRL's |rho - 1| > eps (which also counts ratios
    outside the band on the side the clip does not act on).

    Args:
      logp: (B, T) log pi_theta of the rollout tokens, with grad.
      old_logp: (B, T) log-probs at rollout time (detached here).
      advantages: (B, T) per-token advantages (GAE), or (B,) per sequence (RLOO/GRPO); detached.
      mask: torch.bool (B, T).
      clip_eps: eps > 0.
      mode, constant, denominator: the reduction, see `aggregate`.

    Returns:
      (0-dim loss, PolicyLossStats).
    """
    check_rank("logp", logp, "B", "T")
    check_same_shape(logp=logp, old_logp=old_logp)
    check_mask(mask, logp, "logp")
    advantages = check_per_sequence_or_token("advantages", advantages, logp).detach()
    clip_eps = check_positive("clip_eps", clip_eps)
    # zero the garbage under the mask before any exp or product, so it reaches no gradient either
    log_ratio = torch.where(mask, logp - old_logp.detach(), 0.0)  # (B, T)
    advantages = torch.where(mask, advantages, 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)  # (B, T)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, mode=mode, constant=constant, denominator=denominator)
    with torch.no_grad():
        stats = PolicyLossStats(
            clipfrac=masked_mean((clipped > unclipped).to(logp.dtype), mask),
            approx_kl=masked_mean(0.5 * log_ratio**2, mask),
            approx_kl_k3=masked_mean(kl_k3(old_logp.detach(), logp.detach(), mask), mask),
            ratio_mean=masked_mean(ratio, mask),
            ratio_max=_masked_extreme(ratio, mask, largest=True),
            ratio_min=_masked_extreme(ratio, mask, largest=False),
        )
    return loss, stats


def sequence_ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """loss = (1/N) sum_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps)),
    rho_i = exp(sum_t m_i,t (logp_i,t - old_logp_i,t)).

    The clipped surrogate with the whole reply as one action: `ppo_policy_loss` on each reply's
    summed log-prob (one "token" per row, reduction sequence_sum), so its ratio is the product of
    the reply's token ratios. Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs") model the completion as a single action
    for RLOO; TRL's RLOOTrainer clips this ratio. A sequence ratio leaves [1 - eps, 1 + eps] far
    sooner than its tokens' ratios do (a drift of 0.01 nats per token is 0.32 nats over 32 tokens:
    rho = 1.38), so more of the batch is clipped and gets no gradient. clipfrac and the ratio
    statistics are over the replies; approx_kl and approx_kl_k3 stay per token, like every other
    loss's (the health checks' thresholds are per token).

    Args:
      logp: (B, T) log pi_theta of the rollout tokens, with grad.
      old_logp: (B, T) log-probs at rollout time (detached here).
      advantages: (B,) one advantage per sequence (RLOO, GRPO); detached.
      mask: torch.bool (B, T); a row without a True token adds 0.
      clip_eps: eps > 0.
      denominator: N, the number of sequences of the whole batch when this is a part of it
        (default: B).

    Returns:
      (0-dim loss, PolicyLossStats).
    """
    check_rank("logp", logp, "B", "T")
    check_same_shape(logp=logp, old_logp=old_logp)
    check_mask(mask, logp, "logp")
    check_rank("advantages", advantages, "B")
    # zero the garbage under the mask before the sum, so it reaches no gradient either
    token_log_ratio = torch.where(mask, logp - old_logp.detach(), 0.0)  # (B, T)
    reply_log_ratio = token_log_ratio.sum(dim=1, keepdim=True)  # (B, 1): log rho_i, relative to old (0)
    loss, stats = ppo_policy_loss(reply_log_ratio, torch.zeros_like(reply_log_ratio), advantages,
                                  mask.any(dim=1, keepdim=True), clip_eps, mode="sequence_sum",
                                  denominator=denominator)
    with torch.no_grad():
        stats = stats._replace(approx_kl=masked_mean(0.5 * token_log_ratio**2, mask),
                               approx_kl_k3=masked_mean(kl_k3(old_logp.detach(), logp.detach(), mask), mask))
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps_value: float | None = 0.2,
    mode: str = "token",
    constant: float | None = None,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, ValueLossStats]:
    """loss = L_VF = 0.5 * aggregate(max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)).

    Clipped value loss of OpenAI baselines, lm-human-preferences train_policy.py and N+/TRL
    (eps_v = 0.2), with their factor 0.5. clip_eps_value=None gives the plain
    0.5 * aggregate((V - R)^2). The returns R (GAE's value targets) and V_old are detached.

    Args:
      values: (B, T) V(s_t) from the current value model, with grad.
      old_values: (B, T) values at rollout time.
      returns: (B, T) value targets R_t.
      mask: torch.bool (B, T).
      clip_eps_value: eps_v > 0, or None for no clipping.
      mode, constant, denominator: the reduction, see `aggregate`.

    Returns:
      (0-dim loss, ValueLossStats).
    """
    check_rank("values", values, "B", "T")
    check_same_shape(values=values, old_values=old_values, returns=returns)
    check_mask(mask, values, "values")
    # garbage under the mask is zeroed before squaring, so it reaches no gradient
    values = torch.where(mask, values, 0.0)  # (B, T)
    old_values = torch.where(mask, old_values.detach(), 0.0)  # (B, T)
    returns = torch.where(mask, returns.detach(), 0.0)  # (B, T)
    unclipped = (values - returns) ** 2  # (B, T)
    if clip_eps_value is None:
        per_token, clip_active = unclipped, torch.zeros_like(mask)
    else:
        eps_v = check_positive("clip_eps_value", clip_eps_value)
        clipped_values = old_values + torch.clamp(values - old_values, -eps_v, eps_v)  # (B, T)
        clipped = (clipped_values - returns) ** 2  # (B, T)
        per_token, clip_active = torch.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * aggregate(per_token, mask, mode=mode, constant=constant, denominator=denominator)
    with torch.no_grad():
        stats = ValueLossStats(
            clipfrac=masked_mean(clip_active.to(values.dtype), mask),
            values_mean=masked_mean(values.detach(), mask),
        )
    return loss, stats


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token",
    constant: float | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """H = aggregate(H(pi(.|s_t))),  H(pi) = -sum_a pi(a) log pi(a)  (to maximise).

    The entropy term of the PPO objective (Schulman et al. 2017, eq. 9), reduced like the other
    terms. Per-token entropies come from `entropy_from_logits`, which explains the sign.

    Args:
      entropy: (B, T) per-token entropies.
      mask: torch.bool (B, T).
      mode, constant, denominator: the reduction, see `aggregate`.

    Returns:
      0-dim tensor.
    """
    check_rank("entropy", entropy, "B", "T")
    check_mask(mask, entropy, "entropy")
    return aggregate(entropy, mask, mode=mode, constant=constant, denominator=denominator)


class PPOLoss(NamedTuple):
    """The PPO objective's terms: `total` carries the gradient, the rest are detached 0-dim tensors."""

    total: torch.Tensor  # -L_PPO = pg_loss + c1 L_VF - c2 H, to minimise
    policy: torch.Tensor  # -L_CLIP
    value: torch.Tensor  # L_VF
    entropy: torch.Tensor | None  # H, when per-token entropies were given
    policy_stats: PolicyLossStats
    value_stats: ValueLossStats


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor | None,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_value: float | None = 0.2,
    vf_coef: float = 0.1,
    ent_coef: float = 0.0,
    mode: str = "token",
    constant: float | None = None,
    denominator: torch.Tensor | float | None = None,
) -> PPOLoss:
    """loss = -L_PPO = -(L_CLIP - c1 L_VF + c2 H) = pg_loss + c1 L_VF - c2 H.

    The PPO objective as the method states it (Schulman et al. 2017, eq. 9), with
    L_CLIP = -`ppo_policy_loss`, L_VF = `ppo_value_loss` (with its 0.5 factor) and
    H = `entropy_bonus`. Defaults c1 = vf_coef = 0.1 and c2 = ent_coef = 0 are those of
    lm-human-preferences, N+ and TRL (CleanRL: 0.5 and 0.01). One mask serves all three terms,
    since the score sits on the last real token (see `shaped_rewards`).

    Args:
      logp, old_logp: (B, T) current and rollout log-probs of the rollout tokens.
      advantages: (B, T) or (B,).
      values, old_values, returns: (B, T) current values, rollout values, value targets.
      entropy: (B, T) per-token entropies, or None when ent_coef == 0 (saves the softmax).
      mask: torch.bool (B, T).
      clip_eps, clip_eps_value: clip ranges, see `ppo_policy_loss` and `ppo_value_loss`.
      vf_coef: c1 >= 0.  ent_coef: c2 >= 0.
      mode, constant, denominator: the reduction of every term, see `aggregate`.

    Returns:
      PPOLoss: `total` to minimise (with grad) and each term and diagnostic, detached.
    """
    vf_coef = check_nonnegative("vf_coef", vf_coef)
    ent_coef = check_nonnegative("ent_coef", ent_coef)
    pg_loss, policy_stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps, mode, constant, denominator)
    vf_loss, value_stats = ppo_value_loss(values, old_values, returns, mask, clip_eps_value, mode, constant,
                                          denominator)
    if entropy is None:
        if ent_coef != 0.0:
            raise ValueError(f"entropy is None but ent_coef = {ent_coef}: pass the per-token entropies")
        entropy_term = torch.zeros((), dtype=pg_loss.dtype, device=pg_loss.device)
    else:
        entropy_term = entropy_bonus(entropy, mask, mode=mode, constant=constant, denominator=denominator)
    l_clip = -pg_loss  # the surrogate to maximise
    objective = l_clip - vf_coef * vf_loss + ent_coef * entropy_term  # L_PPO, to maximise
    return PPOLoss(
        total=-objective,
        policy=pg_loss.detach(),
        value=vf_loss.detach(),
        entropy=None if entropy is None else entropy_term.detach(),
        policy_stats=policy_stats,
        value_stats=value_stats,
    )
