"""Active selection: how unsure the reward model is about a prompt, from the scores of its K completions.

A prompt whose completions the reward model already orders with confidence teaches it little when
a person ranks it; one whose best two completions it cannot tell apart, or on which several reward
models disagree, is worth a person's time (uncertainty sampling, Lewis and Gale 1994; query by
committee, Seung et al. 1992; for reward models, the ensemble disagreement of Christiano et al. 2017,
section 2.2.4). Both scores below lie in [0, 1] or [0, inf), higher = more uncertain, one per prompt.
"""

from __future__ import annotations

import torch

from rlhfkit.algos._checks import check_rank


def top_pair_uncertainty(scores: torch.Tensor) -> torch.Tensor:
    """u = 1 - |2 sigmoid(r_(1) - r_(2)) - 1| = 2 sigmoid(r_(2) - r_(1)), r_(1) >= r_(2) the two highest scores.

    sigmoid(r_(1) - r_(2)) is the Bradley-Terry probability (Bradley and Terry 1952; the reward
    model's own loss) that the completion it scores best beats the runner-up. u = 1 when the two
    scores are equal (a coin flip: the person's ranking decides what the model cannot) and falls to
    0 as the gap d = r_(1) - r_(2) >= 0 grows. Since 1 - (2 sigmoid(d) - 1) = 2 (1 - sigmoid(d)) =
    2 sigmoid(-d), it is computed that way: exact for any gap, where 1 - |...| would round to 0
    beyond a gap of about 37 in float64. Only the top pair counts: which of the two best
    completions is better is what a policy optimised against the model acts on.

    Args:
      scores: (P, K) reward-model scores of K >= 2 completions of each of P prompts.

    Returns:
      (P,) uncertainties in [0, 1], no grad.
    """
    check_rank("scores", scores, "P", "K")
    if scores.shape[1] < 2:
        raise ValueError(f"scores must have K >= 2 completions per prompt, got shape {tuple(scores.shape)}")
    with torch.no_grad():
        top = scores.topk(2, dim=-1).values  # (P, 2) best first
        return 2 * torch.sigmoid(top[:, 1] - top[:, 0])  # (P,)


def ensemble_disagreement(scores: torch.Tensor) -> torch.Tensor:
    """u = (1/K) sum_k sqrt((1/E) sum_e (c_e,k - cbar_k)^2), c_e,k = r_e,k - (1/K) sum_j r_e,j, cbar_k = mean_e c_e,k.

    The spread of an ensemble of E reward models over each completion's score (query by committee,
    Seung et al. 1992; Christiano et al. 2017 pick the pairs on which an ensemble's predictions vary
    most), averaged over the prompt's K completions. Each member's scores are first centred on the
    prompt (c = r minus the member's mean over the K completions): a Bradley-Terry model is defined
    only up to a constant per prompt, so members that differ by an offset agree and score u = 0.
    Population std over members (divide by E).

    Args:
      scores: (E, P, K) scores of E >= 2 reward models for K >= 2 completions of each of P prompts.

    Returns:
      (P,) disagreements >= 0 (in the scores' units), no grad.
    """
    check_rank("scores", scores, "E", "P", "K")
    if scores.shape[0] < 2 or scores.shape[2] < 2:
        raise ValueError(f"scores must have E >= 2 members and K >= 2 completions, got shape {tuple(scores.shape)}")
    with torch.no_grad():
        centred = scores - scores.mean(dim=-1, keepdim=True)  # (E, P, K)
        return centred.std(dim=0, correction=0).mean(dim=-1)  # (P,)
