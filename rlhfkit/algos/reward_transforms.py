"""Transforms of the reward model's scores before they enter the RL loss: guards against reward hacking.

Each takes the scores of one rollout batch and returns the reward the policy is trained on; the
KL penalty (rlhfkit.algos.kl) is applied after them, as before.
"""

from __future__ import annotations

import torch

from rlhfkit.algos._checks import check_nonnegative, check_positive, check_rank, check_same_shape
from rlhfkit.algos.hacking import ensemble_spread


def conservative_reward(scores: torch.Tensor, k: float) -> torch.Tensor:
    """r_i = rbar_i - k s_i: the ensemble mean minus k times the members' spread (a lower confidence bound).

    Uncertainty-weighted optimisation of Coste et al. 2024 ("Reward Model Ensembles Help Mitigate
    Overoptimization", UWO with the spread as the penalty): where the members disagree, the
    policy cannot gain by pleasing one of them. k = 0 is the plain ensemble mean.

    Args:
      scores: (E, B) scores of E >= 2 members for B episodes.
      k: weight of the spread, >= 0.

    Returns:
      (B,) rewards.
    """
    check_rank("scores", scores, "E", "B")
    check_nonnegative("k", k)
    return scores.mean(dim=0) - k * ensemble_spread(scores)


def length_penalty(scores: torch.Tensor, lengths: torch.Tensor, coef: float, reference_length: float
                   ) -> torch.Tensor:
    """r_i = score_i - c max(L_i - L_ref, 0) / L_ref: a penalty on length beyond the reference policy's.

    L_i is the response's length in tokens, L_ref the mean length of the reference policy's
    responses, so c is the reward lost for doubling it. A reward model that prefers longer
    answers is the most common way RLHF is gamed (Singhal et al. 2023, "A Long Way to Go:
    Investigating Length Correlations in RLHF"); only the excess is charged, so short replies
    are not pushed to grow.

    Args:
      scores: (B,) scores.
      lengths: (B,) response lengths in tokens.
      coef: c >= 0.
      reference_length: L_ref > 0.

    Returns:
      (B,) rewards.
    """
    check_rank("scores", scores, "B")
    check_same_shape(scores=scores, lengths=lengths)
    check_nonnegative("coef", coef)
    check_positive("reference_length", reference_length)
    excess = (lengths.to(scores.dtype) - reference_length).clamp(min=0) / reference_length
    return scores - coef * excess


def clip_reward(scores: torch.Tensor, bound: float) -> torch.Tensor:
    """r_i = clip(score_i, -c, c): a reward model's extreme scores, the ones hacking finds, count at most c.

    With the reward model normalised to mean 0 on its training responses (`rlhfkit reward
    --normalize mean`), c of one or two of its standard deviations leaves ordinary replies untouched
    (OpenRLHF's `--reward_clip_range` does the same).

    Args:
      scores: (B,) scores.
      bound: c > 0.

    Returns:
      (B,) rewards.
    """
    check_rank("scores", scores, "B")
    check_positive("bound", bound)
    return scores.clamp(-bound, bound)
