"""Masked reductions: sums, means, variance, whitening, and the one `aggregate` of per-token terms.

A mask is a torch.bool tensor with the shape of the values: True on real response tokens (up to
and including the first EOS), False on prompt, padding and everything after EOS. Values under
False never change a result: they are selected away with `torch.where` (not multiplied by 0,
so even inf garbage cannot leak in as NaN).
"""

from __future__ import annotations

import math

import torch

from rlhfkit.algos._checks import (
    check_choice,
    check_mask,
    check_positive,
    check_rank,
    check_same_shape,
    value_checks_enabled,
)

AGGREGATE_MODES = ("token", "sequence", "sequence_sum", "constant")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i x_i.

    Args:
      x: values, any shape.
      mask: torch.bool, shape of `x`.
      dim: reduce only this dimension; None sums everything.

    Returns:
      0-dim tensor, or `x`'s shape without `dim`.
    """
    check_mask(mask, x, "x")
    kept = torch.where(mask, x, 0.0)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i x_i / sum_i m_i.

    An empty selection (no True entry, overall or in a row when `dim` is given) gives 0, not NaN.

    Args:
      x: values, any shape.
      mask: torch.bool, shape of `x`.
      dim: average only along this dimension; None averages all True entries.

    Returns:
      0-dim tensor, or `x`'s shape without `dim`.
    """
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """var = sum_i m_i (x_i - mu)^2 / n, times n / (n - 1) when unbiased; mu = masked mean, n = sum_i m_i.

    Biased (population) variance by default, as lm-human-preferences (`tf.nn.moments`, utils/core.py)
    and summarize_from_feedback_details (`masked_var(.., False)`); TRL's `masked_whiten` and
    CleanRL use the unbiased one.

    Args:
      x: values, any shape.
      mask: torch.bool, shape of `x`; needs >= 1 True entry (>= 2 when unbiased), checked only
        when value checks are on (`rlhfkit.algos.value_checks`), since counting them syncs the device.
      unbiased: apply Bessel's correction n / (n - 1).

    Returns:
      0-dim tensor.
    """
    check_mask(mask, x, "x")
    n = mask.sum()  # a tensor: the count stays on the device
    if value_checks_enabled():
        count = int(n)
        if count < (2 if unbiased else 1):
            raise ValueError(
                f"mask selects {count} entries of x {tuple(x.shape)}: masked_var needs at least "
                f"{2 if unbiased else 1} (unbiased={unbiased})"
            )
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    unbiased: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """x_hat = (x - mu) / sqrt(var + eps)  (+ mu when shift_mean=False), 0 where mask is False.

    Masked whitening over all True entries of the batch (lm-human-preferences utils/core.py
    `whiten`; docs/implementation-details.md, "Whitening advantages and rewards"). mu and var are the
    masked mean and variance; the variance is biased by default (see `masked_var`).
    shift_mean=False keeps the mean (used for whitening rewards).

    Args:
      x: values, any shape, e.g. advantages (B, T).
      mask: torch.bool, shape of `x`.
      shift_mean: True gives mean 0; False adds mu back.
      unbiased: use the unbiased variance (TRL's default) instead of the biased one.
      eps: > 0, keeps constant inputs finite (they whiten to 0).

    Returns:
      shape of `x`, 0 where mask is False.
    """
    check_positive("eps", eps)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=unbiased)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token",
    constant: float | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """token:        sum_{i,t} m l / sum_{i,t} m            (mean over all tokens of the batch)
    sequence:     mean_{i: n_i > 0} (sum_t m l / n_i)    (mean per sequence, then over sequences)
    sequence_sum: (1/B) sum_i sum_t m l                  (sum per sequence, mean over sequences)
    constant:     sum_{i,t} m l / (B * constant)         (Dr. GRPO: constant = max length)

    The one reduction of per-token terms l_{i,t} to a scalar (m = mask, n_i = sum_t m_{i,t}).
    "token" is the token mean of N+ / TRL PPO (and TRL GRPO's default `dapo`); "sequence" is the
    GRPO paper's (1/G) sum_i (1/|o_i|) sum_t; "sequence_sum" is the textbook REINFORCE estimator
    (1/N) sum_i sum_t; "constant" is Dr. GRPO (Liu et al. 2025), which drops the length bias of
    dividing by the token count. Sequences with no True token are skipped by "sequence" and count
    as zero-loss samples in "sequence_sum" and "constant".

    Every mode is a sum over the rows divided by a count (`aggregate_denominator`). When the batch
    is one part of a larger one (a micro-batch, or one process's share), pass the count of the
    whole batch as `denominator`: the parts' results then add up to the whole batch's result
    exactly, whatever the split.

    Args:
      per_token: (B, T) per-token terms.
      mask: torch.bool (B, T).
      mode: one of "token", "sequence", "sequence_sum", "constant".
      constant: > 0, required by mode "constant" (ignored by the others).
      denominator: the count to divide by; None = `aggregate_denominator(mask, mode)` of this batch.

    Returns:
      0-dim tensor.
    """
    check_rank("per_token", per_token, "B", "T")
    check_mask(mask, per_token, "per_token")
    check_choice("mode", mode, AGGREGATE_MODES)
    if denominator is None:
        denominator = aggregate_denominator(mask, mode)
    if mode == "sequence":
        total = masked_mean(per_token, mask, dim=-1).sum()  # sum of per-sequence means, 0 for empty rows
    else:
        total = masked_sum(per_token, mask)
    if mode == "constant":
        if constant is None:
            raise ValueError("constant must be given with mode='constant' (e.g. the maximum response length)")
        return total / (denominator * check_positive("constant", constant))
    return total / denominator


def aggregate_denominator(mask: torch.Tensor, mode: str = "token") -> torch.Tensor:
    """The count `aggregate` divides by: tokens (token), sequences with a token (sequence), or rows
    (sequence_sum, constant); at least 1, so an empty batch gives 0 rather than NaN.

    Computed on the mask of the whole batch (for example the global minibatch, which every process
    has after the rollout is gathered) and passed to `aggregate` for each of its parts.

    Args:
      mask: torch.bool (B, T).
      mode: one of "token", "sequence", "sequence_sum", "constant".

    Returns:
      0-dim float tensor on the mask's device (no device sync).
    """
    check_rank("mask", mask, "B", "T")
    check_choice("mode", mode, AGGREGATE_MODES)
    if mode == "token":
        count = mask.sum()
    elif mode == "sequence":
        count = mask.any(dim=-1).sum()
    else:
        count = torch.tensor(mask.shape[0], device=mask.device)
    return count.clamp(min=1).float()


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """EV = 1 - Var[R - V] / Var[R],  population variances over the masked tokens.

    How much of the variance of the value targets the critic explains (lm-human-preferences
    `var_explained`; CleanRL `explained_var`): 1 is perfect, 0 is no better than a constant,
    below 0 is worse. A diagnostic, computed without grad; NaN when the returns do not vary
    (as CleanRL), since then there is nothing to explain.

    Args:
      values: (B, T) value predictions V(s_t).
      returns: (B, T) value targets R_t.
      mask: torch.bool (B, T), with >= 1 True entry.

    Returns:
      0-dim tensor.
    """
    check_rank("values", values, "B", "T")
    check_same_shape(values=values, returns=returns)
    check_mask(mask, values, "values")
    var_returns = masked_var(returns, mask)
    if not var_returns > 0:
        return torch.full_like(var_returns, math.nan)
    return 1.0 - masked_var(returns - values, mask) / var_returns
