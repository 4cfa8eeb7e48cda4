"""Reward model math: Bradley-Terry and Plackett-Luce losses, accuracy, rankings to pairs, reward normalisation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rlhfkit.algos._checks import (
    check_finite,
    check_mask,
    check_nonnegative,
    check_positive,
    check_rank,
    check_same_shape,
    value_checks_enabled,
)


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: float | torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """loss = sum_i w_i (-log sigmoid(r_c,i - r_r,i - m_i)) / sum_i w_i  (w_i = 1 without weights).

    Pairwise Bradley-Terry loss of the reward model (InstructGPT, Ouyang et al. 2022, eq. 1;
    Stiennon et al. 2020), with the optional margin m of Llama 2. Computed as -log_sigmoid, which
    equals softplus(r_r - r_c + m) exactly and never overflows (torch's softplus switches to
    the identity above 20, an error of up to 2e-9). Weights from `pair_weights` make every ranked
    prompt count once whatever its number of pairs (InstructGPT divides each prompt's loss by
    K choose 2). When these pairs are one part of a batch (a micro-batch, or one process's share),
    pass the whole batch's sum_i w_i (or pair count) as `denominator`: the parts' losses then add
    up to the whole batch's loss exactly.

    Args:
      r_chosen: (B,) rewards of the preferred completions.
      r_rejected: (B,) rewards of the other completions.
      margin: None, a float >= 0, or (B,) per-pair margins m_i.
      weights: None or (B,) non-negative pair weights, not all zero unless `denominator` is given
        (checked with value checks on).
      denominator: None (this batch's weight sum, or B) or the whole batch's.

    Returns:
      0-dim tensor.
    """
    check_rank("r_chosen", r_chosen, "B")
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    logits = r_chosen - r_rejected  # (B,)
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            check_same_shape(r_chosen=r_chosen, margin=margin)
        else:
            margin = check_nonnegative("margin", margin)
        logits = logits - margin
    losses = -F.logsigmoid(logits)  # (B,) = softplus(-logits)
    if weights is None:
        return losses.sum() / (losses.shape[0] if denominator is None else denominator)
    check_same_shape(r_chosen=r_chosen, weights=weights)
    # a part of a batch (denominator given) may hold only weight-0 stand-in rows
    if value_checks_enabled() and (bool((weights < 0).any()) or (denominator is None and not bool(weights.sum() > 0))):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights.tolist()}")
    return (weights * losses).sum() / (weights.sum() if denominator is None else denominator)


@torch.no_grad()
def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """accuracy = mean_i [r_c,i > r_r,i]  (strict: a tie counts as wrong).

    Reward-model accuracy on preference pairs (InstructGPT; TRL RewardTrainer). Equal rewards give
    0, so an untrained constant model does not look like it is at chance.

    Args:
      r_chosen: (B,) rewards of the preferred completions.
      r_rejected: (B,) rewards of the other completions.

    Returns:
      0-dim float tensor in [0, 1], no grad.
    """
    check_rank("r_chosen", r_chosen, "B")
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    return (r_chosen > r_rejected).float().mean()


def ranking_to_pairs(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """{(i, j) : rank_i < rank_j}: every pair of completions with distinct ranks, better first.

    K ranked completions give up to K(K-1)/2 comparisons (InstructGPT section 3.5); tied
    completions give no pair. Pairs are listed in index order: (i, j) for i < j, each written as
    (better_index, worse_index).

    Args:
      ranks: the rank of each completion, 0 = best; equal ranks are ties.

    Returns:
      list of (better_index, worse_index).
    """
    for index, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"ranks must be ints >= 0 (0 = best), got ranks[{index}] = {rank!r}")
    pairs = []
    for i, j in itertools.combinations(range(len(ranks)), 2):
        if ranks[i] < ranks[j]:
            pairs.append((i, j))
        elif ranks[j] < ranks[i]:
            pairs.append((j, i))
    return pairs


def pair_weights(
    num_pairs_per_prompt: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """w = 1 / n_p for each of the n_p pairs of prompt p  (n_p = K choose 2 without ties).

    With `bradley_terry_loss(..., weights=w)` every prompt then weighs the same, however many
    completions it had ranked: InstructGPT puts all pairs of a prompt in one batch and divides by
    K choose 2 so prompts with many comparisons do not dominate (and overfit).

    Args:
      num_pairs_per_prompt: n_p >= 0 for each prompt, in the order its pairs are laid out.

    Returns:
      (sum_p n_p,) weights; prompts with no pair contribute no entry.
    """
    for index, n in enumerate(num_pairs_per_prompt):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_pairs_per_prompt must be ints >= 0, got entry {index} = {n!r}")
    weights = [1.0 / n for n in num_pairs_per_prompt for _ in range(n)]
    return torch.tensor(weights, dtype=dtype, device=device)


@torch.no_grad()
def normalization_gain_bias(
    rewards: torch.Tensor,
    target_mean: float = 0.0,
    target_std: float = 1.0,
) -> tuple[float, float]:
    """gain = sigma_T / sigma_D,  bias = mu_T - gain * mu_D,  so gain * r + bias has mean mu_T, std sigma_T.

    Reward normalisation of lm-human-preferences (rewards.py; Ziegler et al. 2019: "mean 0 and
    variance 1" on samples of the reference policy). mu_D and sigma_D are the mean and the
    population std of `rewards`, computed in float64.

    Args:
      rewards: (N,) rewards of reference-policy samples, N >= 2, not all equal.
      target_mean: mu_T.
      target_std: sigma_T > 0.

    Returns:
      (gain, bias) as Python floats.
    """
    check_rank("rewards", rewards, "N")
    check_positive("target_std", target_std)
    check_finite("target_mean", target_mean)
    if rewards.numel() < 2:
        raise ValueError(f"rewards needs at least 2 samples to estimate a std, got {rewards.numel()}")
    r = rewards.double()
    mean, std = float(r.mean()), float(r.std(unbiased=False))
    if not std > 0:
        raise ValueError(f"rewards all equal ({mean}): their std is 0, so no gain can normalise them")
    gain = target_std / std
    return gain, target_mean - gain * mean


def reward_centering_penalty(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                             denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """mean_i (r_c,i + r_r,i)^2  = sum_i (r_c,i + r_r,i)^2 / B.

    The auxiliary term that keeps a reward model's outputs centred on 0 (Eisenstein et al. 2023;
    TRL `center_rewards_coefficient`, recommended weight 0.01): the Bradley-Terry loss only sees
    differences r_c - r_r, so without it the rewards can drift by any constant.

    Args:
      r_chosen, r_rejected: (B,) rewards of the chosen and rejected responses.
      denominator: None (B) or the pair count of the whole batch these pairs are part of.

    Returns:
      0-dim penalty, to be added to the loss times its coefficient.
    """
    check_rank("r_chosen", r_chosen, "B")
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    return (r_chosen + r_rejected).pow(2).sum() / (r_chosen.shape[0] if denominator is None else denominator)


def plackett_luce_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """loss = sum_g w_g l_g / sum_g w_g c_g,  l_g = sum_{i in g} -log sigmoid(r_i - log sum_{l in W_i} exp(r_l)),
    W_i = {l in g : rank_l > rank_i} (the completions ranked below i; a term with W_i empty is 0),
    c_g = 1 if group g holds two distinct ranks, else 0.

    Listwise reward-model loss: the negative log-likelihood of each group's ranking under the
    Plackett-Luce model (Plackett 1975; Luce 1959's choice axiom; the K-wise maximum-likelihood
    estimator of Zhu et al. 2023, "Principled RLHF from pairwise or K-wise comparisons"). Without
    ties, for the ranking pi (best first),

        l_g = -log prod_{j=1..K} exp(r_pi(j)) / sum_{l >= j} exp(r_pi(l)):

    the best completion is drawn from all K by softmax, the next from the K - 1 left, and so on.
    Term j is r_pi(j) - log(exp(r_pi(j)) + exp(L_j)), L_j = logsumexp of the rewards below, which is
    log sigmoid(r_pi(j) - L_j): computed so (logsumexp, then log-sigmoid), it never overflows, and
    for K = 2 it is bradley_terry_loss's -log sigmoid(r_c - r_r) operation for operation.

    Ties (equal ranks): each member of a tied block is drawn from itself and the completions ranked
    strictly below the block; tied completions never compete with each other, as
    `ranking_to_pairs` gives them no pair. The worst block adds log 1 = 0, so a group whose
    completions all tie adds 0 and is not counted (c_g = 0), like a prompt without pairs under
    `pair_weights`. A tied block above a single completion w gives the sum of its members' pair
    terms -log sigmoid(r_i - r_w). Without ties it is the Plackett-Luce likelihood above.

    Every group counts once, whatever its K (w_g = 1 without weights). When these groups are one
    part of a batch (a micro-batch, or one process's share), pass the whole batch's
    sum_g w_g c_g (its number of groups) as `denominator`: the parts then add up to the whole
    batch's loss exactly. No counted group (and no denominator) gives 0, not NaN.

    Args:
      rewards: (G, K) rewards of the K completions of each group; entries outside `mask` are ignored.
      ranks: (G, K) integer ranks, lower = better (0 = best), equal = tied; only their order counts.
      mask: None (every entry real) or torch.bool (G, K), False on the padding of groups with fewer
        than K completions.
      weights: None or (G,) non-negative group weights (checked with value checks on), e.g. 0 for a
        process's stand-in group.
      denominator: None (this batch's sum_g w_g c_g) or the whole batch's.

    Returns:
      0-dim tensor.
    """
    check_rank("rewards", rewards, "G", "K")
    check_same_shape(rewards=rewards, ranks=ranks)
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be an integer tensor (0 = best), got dtype {ranks.dtype}; pass `ranks.long()`")
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    check_mask(mask, rewards, "rewards")
    # padding entries become 0 before any arithmetic: inf or NaN garbage there cannot reach the
    # forward or (as 0 * NaN) the backward
    r = torch.where(mask, rewards, 0.0)  # (G, K)
    below = (ranks.unsqueeze(1) > ranks.unsqueeze(2)) & mask.unsqueeze(1) & mask.unsqueeze(2)  # (G, K_i, K_l)
    has_below = below.any(dim=-1)  # (G, K) W_i not empty
    # rows with an empty W_i take 0s instead of all -inf, whose logsumexp has a NaN gradient; their term is 0
    logits = torch.where(below, r.unsqueeze(1), torch.where(has_below.unsqueeze(-1), -math.inf, 0.0))
    log_p = torch.where(has_below, F.logsigmoid(r - torch.logsumexp(logits, dim=-1)), 0.0)  # (G, K)
    losses = -log_p.sum(dim=-1)  # (G,)
    counted = has_below.any(dim=-1).to(losses.dtype)  # (G,) c_g: the group holds a comparison
    if weights is not None:
        check_same_shape(groups=losses, weights=weights)
        if value_checks_enabled() and bool((weights < 0).any()):
            raise ValueError(f"weights must be >= 0, got {weights.tolist()}")
        losses, counted = weights * losses, weights * counted
    if denominator is None:
        denominator = counted.sum()
        denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return losses.sum() / denominator
