"""Advantages A(s, a) = Q(s, a) - V(s) from a value function: TD errors and GAE.

Responses are right-padded: each row's mask is True on its tokens, then False. The state after
a row's last True token is terminal, so V there is 0 (bootstrap 0), and a row's padding never
reaches its advantages.
"""

from __future__ import annotations

import torch

from rlhfkit.algos._checks import check_mask, check_rank, check_same_shape, check_unit_interval


def td_errors(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
) -> torch.Tensor:
    """delta_t = r_t + gamma V(s_{t+1}) - V(s_t),  V(s_{t+1}) = 0 after the last real token.

    One-step temporal-difference errors (Schulman et al. 2016, eq. 9); GAE with lambda = 0.

    Args:
      rewards: (B, T) per-token rewards r_t.
      values: (B, T) V(s_t) for each response token.
      mask: torch.bool (B, T).
      gamma: discount in [0, 1].

    Returns:
      (B, T) TD errors, 0 where mask is False.
    """
    check_rank("rewards", rewards, "B", "T")
    check_same_shape(rewards=rewards, values=values)
    check_mask(mask, rewards, "rewards")
    gamma = check_unit_interval("gamma", gamma)
    rewards = torch.where(mask, rewards, 0.0)
    values = torch.where(mask, values, 0.0)  # a False slot is terminal: V = 0 there
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T)
    return torch.where(mask, rewards + gamma * next_values - values, 0.0)  # (B, T)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = delta_t + gamma lam A_{t+1} = sum_l (gamma lam)^l delta_{t+l};  R_t = A_t + V(s_t).

    Generalised advantage estimation (Schulman et al. 2016, eq. 16), an estimate of
    A(s, a) = Q(s, a) - V(s), computed backwards over the tokens as lm-human-preferences
    train_policy.py and OpenRLHF experience_maker.py do. delta_t are the `td_errors`, with V = 0
    after each row's last real token. The returns R_t are the value targets. lam = 1 gives
    A_t = G_t - V(s_t) (reward-to-go minus value); lam = 0 gives A_t = delta_t. gamma = 1,
    lam = 0.95 are the defaults of lm-human-preferences, N+ and TRL. No gradient is stopped here:
    call it under torch.no_grad() on rollout tensors.

    Args:
      rewards: (B, T) per-token rewards (e.g. `shaped_rewards`).
      values: (B, T) V(s_t) for each response token.
      mask: torch.bool (B, T), right-padded.
      gamma: discount in [0, 1].
      lam: GAE lambda in [0, 1].

    Returns:
      advantages (B, T) and returns (B, T), both 0 where mask is False.
    """
    deltas = td_errors(rewards, values, mask, gamma=gamma)  # (B, T), checks the arguments
    lam = check_unit_interval("lam", lam)
    next_advantage = torch.zeros_like(deltas[:, 0])  # (B,) A_{t+1}, 0 after the last token
    advantages = []
    for t in reversed(range(deltas.shape[1])):
        next_advantage = torch.where(mask[:, t], deltas[:, t] + gamma * lam * next_advantage, 0.0)
        advantages.append(next_advantage)
    advantages = torch.stack(advantages[::-1], dim=1)  # (B, T)
    returns = torch.where(mask, advantages + values, 0.0)  # (B, T)
    return advantages, returns
