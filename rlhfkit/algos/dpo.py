"""Direct preference optimisation: DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023).

Both use h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)], with
sequence log-probs summed over the completion tokens (prompt and padding masked), as
summarize_from_feedback_details and OpenRLHF do (TRL averages over the length for IPO).
The reference log-probs are constants (compute them once; they are detached here).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhfkit.algos._checks import (
    check_mask,
    check_nonnegative,
    check_positive,
    check_rank,
    check_same_shape,
    value_checks_enabled,
)
from rlhfkit.algos.masked import masked_sum


class DPOStats(NamedTuple):
    """Implicit rewards beta * (logp - ref_logp) and their accuracy, detached."""

    chosen_rewards: torch.Tensor  # (B,)
    rejected_rewards: torch.Tensor  # (B,)
    reward_accuracy: torch.Tensor  # () mean [r_c > r_r], strict
    reward_margin: torch.Tensor  # () mean (r_c - r_r)


def sequence_logprobs(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) = sum_t m_t log pi(y_t | x, y_<t).

    Args:
      logp: (B, T) per-token log-probs.
      mask: torch.bool (B, T), True on completion tokens only.

    Returns:
      (B,) sequence log-probs.
    """
    check_rank("logp", logp, "B", "T")
    return masked_sum(logp, check_mask(mask, logp, "logp"), dim=-1)


def _log_ratio_margin(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, DPOStats]:
    check_rank("logp_chosen", logp_chosen, "B")
    check_same_shape(
        logp_chosen=logp_chosen,
        logp_rejected=logp_rejected,
        ref_logp_chosen=ref_logp_chosen,
        ref_logp_rejected=ref_logp_rejected,
    )
    check_positive("beta", beta)
    chosen_log_ratio = logp_chosen - ref_logp_chosen.detach()  # (B,)
    rejected_log_ratio = logp_rejected - ref_logp_rejected.detach()  # (B,)
    h = chosen_log_ratio - rejected_log_ratio  # (B,)
    with torch.no_grad():
        chosen_rewards, rejected_rewards = beta * chosen_log_ratio, beta * rejected_log_ratio
        stats = DPOStats(
            chosen_rewards=chosen_rewards,
            rejected_rewards=rejected_rewards,
            reward_accuracy=(chosen_rewards > rejected_rewards).to(h.dtype).mean(),
            reward_margin=(chosen_rewards - rejected_rewards).mean(),
        )
    return h, stats


def _reduce_pairs(
    losses: torch.Tensor, weights: torch.Tensor | None, denominator: torch.Tensor | float | None
) -> torch.Tensor:
    """sum_i w_i l_i / D with D = sum_i w_i (or B) unless the whole batch's D is given (as bradley_terry_loss)."""
    if weights is None:
        return losses.sum() / (losses.shape[0] if denominator is None else denominator)
    check_same_shape(logp_chosen=losses, weights=weights)
    # a part of a batch (denominator given) may hold only weight-0 stand-in rows
    if value_checks_enabled() and (bool((weights < 0).any()) or (denominator is None and not bool(weights.sum() > 0))):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights.tolist()}")
    return (weights * losses).sum() / (weights.sum() if denominator is None else denominator)


def dpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, DPOStats]:
    """loss = sum_i w_i [-(1 - eps) log sigmoid(beta h_i) - eps log sigmoid(-beta h_i)] / sum_i w_i.

    DPO (Rafailov et al. 2023, eq. 7) for eps = 0; eps > 0 is conservative DPO (Mitchell 2023,
    "A note on DPO with noisy preferences": labels flipped with probability eps; TRL's and
    OpenRLHF's `label_smoothing`). At pi = pi_ref, h = 0 and the loss is log 2 for any beta and
    eps. Implicit rewards beta (logp - ref_logp) go into the stats. Without weights the loss is
    the mean over pairs. Weights (1 / K-choose-2 for the pairs of a ranked list) and
    `denominator` work as in `bradley_terry_loss`: pass the whole batch's sum_i w_i (or pair
    count) when these pairs are one micro-batch of it, so the parts add up to the batch's loss.

    Args:
      logp_chosen, logp_rejected: (B,) sequence log-probs under pi_theta (`sequence_logprobs`).
      ref_logp_chosen, ref_logp_rejected: (B,) the same under the frozen reference.
      beta: > 0 (Rafailov et al.: 0.1; N+ 0.05).
      label_smoothing: eps in [0, 0.5).
      weights: None or (B,) non-negative pair weights.
      denominator: None (this batch's weight sum, or B) or the whole batch's.

    Returns:
      (0-dim loss, DPOStats).
    """
    if check_nonnegative("label_smoothing", label_smoothing) >= 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5), got {label_smoothing!r} "
            "(at 0.5 the loss no longer prefers the chosen completion)"
        )
    h, stats = _log_ratio_margin(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, beta)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)  # (B,)
    return _reduce_pairs(losses, weights, denominator), stats


def ipo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float = 0.1,
    weights: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, DPOStats]:
    """loss = sum_i w_i (h_i - 1 / (2 beta))^2 / sum_i w_i  (the mean over pairs without weights).

    IPO (Azar et al. 2023, eq. 17): regresses the log-ratio margin to 1/(2 beta) instead of
    pushing it to infinity. At pi = pi_ref the loss is (1/(2 beta))^2 (beta 0.1 -> 25). TRL feeds
    IPO length-averaged log-probs; pass `sequence_logprobs(...) / lengths` for that scale.

    Args:
      logp_chosen, logp_rejected: (B,) sequence log-probs under pi_theta.
      ref_logp_chosen, ref_logp_rejected: (B,) the same under the frozen reference.
      beta: > 0, the regularisation strength (tau in the paper).
      weights: None or (B,) non-negative pair weights (as in `dpo_loss`).
      denominator: None (this batch's weight sum, or B) or the whole batch's.

    Returns:
      (0-dim loss, DPOStats).
    """
    h, stats = _log_ratio_margin(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected, beta)
    return _reduce_pairs((h - 1.0 / (2.0 * beta)) ** 2, weights, denominator), stats
