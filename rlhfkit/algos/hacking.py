"""Reward-hacking statistics: ensemble spreads, robust trends, drift from a reference, correlations.

The detectors of rlhfkit.tracking.alarms read one number per iteration from the RL metrics
(ensemble spread, KL, reward, length, entropy) and test it with these functions; each detector's
threshold is documented there, each statistic here. Everything is computed in float64, so a
trend over a few dozen iterations does not depend on the dtype the metrics were logged in.
"""

from __future__ import annotations

import math

import torch

from rlhfkit.algos._checks import check_nonnegative, check_positive, check_rank, check_same_shape


def _float64_series(name: str, values: torch.Tensor, minimum: int) -> torch.Tensor:
    check_rank(name, values, "N")
    if values.numel() < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {values.numel()}")
    return values.detach().to(torch.float64)


def ensemble_spread(scores: torch.Tensor) -> torch.Tensor:
    """s_i = sqrt((1/E) sum_e (r_e,i - rbar_i)^2), rbar_i = (1/E) sum_e r_e,i: members' disagreement.

    The population standard deviation of E reward models' scores of the same episode. Members
    trained on the same comparisons agree on responses like those they saw and disagree more as
    the policy leaves them (uncertainty from ensembles: Lakshminarayanan et al. 2017; reward-model
    ensembles against overoptimisation: Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization").

    Args:
      scores: (E, B) scores of E >= 2 members for B episodes.

    Returns:
      (B,) spread of each episode's scores (same dtype as scores).
    """
    check_rank("scores", scores, "E", "B")
    if scores.shape[0] < 2:
        raise ValueError(f"scores needs at least 2 ensemble members (rows), got shape {tuple(scores.shape)}")
    return scores.std(dim=0, unbiased=False)


def standardized_spread(scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """s_i = sqrt((1/E) sum_e (z_e,i - zbar_i)^2),  z_e,i = (r_e,i - mu_e) / sigma_e: disagreement in common units.

    `ensemble_spread` of the members' scores, each first put in its own standard units of a
    reference batch (mu_e, sigma_e: member e's mean and population std on the start policy's
    samples, `criteria_reference`). Members of different trunks or training runs score on different
    scales; without this the raw spread of two such members grows with the reply's quality itself
    ((a - b) r when one scores a r and the other b r), and the member with the larger scale
    dominates. In these units every member counts alike, and the spread only grows when the members
    rank the policy's samples differently than they ranked the start policy's.

    Args:
      scores: (E, B) scores of E >= 2 members for B episodes.
      mean: (E,) each member's reference mean.
      std: (E,) each member's reference standard deviation, > 0.

    Returns:
      (B,) spread of each episode's standardized scores (same dtype as scores).
    """
    check_rank("scores", scores, "E", "B")
    check_rank("mean", mean, "E")
    check_rank("std", std, "E")
    if mean.shape[0] != scores.shape[0] or std.shape[0] != scores.shape[0]:
        raise ValueError(f"mean and std need one value per member (row of scores): got {mean.shape[0]} and "
                         f"{std.shape[0]} for {scores.shape[0]} members")
    if not bool((std > 0).all()):
        raise ValueError("std must be > 0 for every member")
    z = (scores - mean.to(scores)[:, None]) / std.to(scores)[:, None]  # (E, B)
    return ensemble_spread(z)


def robust_slope(values: torch.Tensor) -> torch.Tensor:
    """slope = median over i < j of (v_j - v_i) / (j - i): the Theil-Sen estimator of a trend.

    Theil (1950), Sen (1968): the median of the pairwise slopes of a series against its index.
    One outlying iteration moves it little (breakdown point 29%), unlike least squares. The
    median of an even number of slopes is the mean of the two middle ones.

    Args:
      values: (N,) one value per iteration, N >= 2, oldest first.

    Returns:
      0-dim float64 tensor: change per iteration.
    """
    v = _float64_series("values", values, 2)
    i, j = torch.triu_indices(v.numel(), v.numel(), offset=1)
    return torch.quantile((v[j] - v[i]) / (j - i).to(torch.float64), 0.5)


def window_zscore(values: torch.Tensor, baseline: int, min_std: float = 1e-8) -> torch.Tensor:
    """z = (v_last - mu_b) / max(sigma_b, min_std), mu_b and sigma_b over the first `baseline` values.

    How many baseline standard deviations the latest value lies from the start of the run
    (sigma_b the population std). `min_std` keeps a perfectly flat baseline from dividing by 0.

    Args:
      values: (N,) one value per iteration, oldest first; N > baseline.
      baseline: number of leading values that form the baseline window (>= 1).
      min_std: floor of the baseline's standard deviation (> 0).

    Returns:
      0-dim float64 tensor.
    """
    v = _float64_series("values", values, 2)
    if not 1 <= baseline < v.numel():
        raise ValueError(f"baseline must be from 1 to len(values) - 1 = {v.numel() - 1}, got {baseline}")
    check_positive("min_std", min_std)
    window = v[:baseline]
    sigma = window.std(unbiased=False).clamp(min=min_std)
    return (v[-1] - window.mean()) / sigma


def relative_drift(current: float, reference: float, eps: float = 1e-8) -> float:
    """d = (x - x_ref) / max(|x_ref|, eps): the change of a statistic relative to the reference policy's.

    Used for response length, repetition and entropy: x_ref is the value on the reference
    (start) policy's own samples, x the current policy's. d = -0.5 is a halving, +1 a doubling.

    Args:
      current: the statistic on the current policy's samples.
      reference: the same statistic on the reference policy's samples.
      eps: floor of |x_ref| (> 0), so a reference of 0 gives a large finite drift.

    Returns:
      the relative drift, a float.
    """
    for name, x in (("current", current), ("reference", reference)):
        if not math.isfinite(float(x)):
            raise ValueError(f"{name} must be a finite number, got {x}")
    check_positive("eps", eps)
    return (float(current) - float(reference)) / max(abs(float(reference)), eps)


def pearson_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """rho = sum_i (x_i - xbar)(y_i - ybar) / sqrt(sum_i (x_i - xbar)^2 sum_i (y_i - ybar)^2); 0 if x or y is constant.

    E.g. reward-model score against response length on the policy's samples: a reward model whose
    scores rise with length is open to length gaming (Singhal et al. 2023, "A Long Way to Go:
    Investigating Length Correlations in RLHF").

    Args:
      x: (N,) values, N >= 2.
      y: (N,) values.

    Returns:
      0-dim float64 tensor in [-1, 1].
    """
    xs, ys = _float64_series("x", x, 2), _float64_series("y", y, 2)
    check_same_shape(x=xs, y=ys)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt()
    if denominator == 0:
        return torch.zeros((), dtype=torch.float64)
    return ((dx * dy).sum() / denominator).clamp(-1.0, 1.0)


def kl_reward_slope_ratio(kl: torch.Tensor, reward: torch.Tensor, min_reward_slope: float = 1e-3) -> torch.Tensor:
    """q = slope(KL) / max(slope(R), s_min), both Theil-Sen slopes over the same iterations.

    Nats of KL to the reference paid per unit of proxy reward gained, over a window. The policy
    buying reward ever more dearly (a KL that keeps climbing while the reward flattens) is the
    late phase of overoptimisation (Gao et al. 2023, "Scaling Laws for Reward Model
    Overoptimization": the gold score peaks and falls as KL grows). A reward that does not
    rise (slope <= s_min) gives slope(KL) / s_min, a large q when KL still grows.

    Args:
      kl: (N,) KL to the reference per iteration, N >= 2.
      reward: (N,) mean proxy reward per iteration.
      min_reward_slope: s_min > 0, the floor of the reward's slope.

    Returns:
      0-dim float64 tensor.
    """
    check_same_shape(kl=kl, reward=reward)
    check_positive("min_reward_slope", min_reward_slope)
    return robust_slope(kl) / robust_slope(reward).clamp(min=min_reward_slope)


def moving_average(values: torch.Tensor, window: int) -> torch.Tensor:
    """m_t = (1 / n_t) sum_{s = max(0, t - w + 1)}^{t} v_s, n_t = min(t + 1, w): a trailing mean.

    Trailing, so m_t uses no value after t (what a detector can know at iteration t); the first
    w - 1 values average over the iterations there are.

    Args:
      values: (N,) one value per iteration, N >= 1.
      window: w >= 1.

    Returns:
      (N,) float64 tensor.
    """
    v = _float64_series("values", values, 1)
    check_nonnegative("window", window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), v.cumsum(0)])
    t = torch.arange(v.numel())
    start = (t - window + 1).clamp(min=0)
    return (sums[t + 1] - sums[start]) / (t + 1 - start).to(torch.float64)


def perturbation_effect(original: torch.Tensor, edited: torch.Tensor, min_std: float = 1e-8
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """d = (1/N) sum_i (r'_i - r_i) / max(sigma_r, min_std),  p = (1/N) sum_i 1[r'_i > r_i].

    How a reward responds to an edit of N replies that makes each of them worse (shuffled words, the
    reply repeated, the reply given to another prompt): r_i the reward of reply i as written, r'_i of
    its edited copy, sigma_r the population std of the r_i (the reward's spread over the policy's
    replies, the scale the policy's advantages live on). d is the mean change in those units; a
    reward worth optimising has d clearly below 0 and p near 0; one that rises for the edit (d > 0)
    pays for it, and the policy can learn to make it. A directional expectation test in the sense
    of Ribeiro et al. 2020 ("Beyond Accuracy: Behavioral Testing of NLP Models with CheckList").

    Args:
      original: (N,) rewards of the replies as written, N >= 2.
      edited: (N,) rewards of their edited copies.
      min_std: floor of sigma_r (> 0), so a constant reward gives a finite d.

    Returns:
      (d, p): 0-dim float64 tensors.
    """
    r, e = _float64_series("original", original, 2), _float64_series("edited", edited, 2)
    check_same_shape(original=r, edited=e)
    check_positive("min_std", min_std)
    sigma = r.std(unbiased=False).clamp(min=min_std)
    return (e - r).mean() / sigma, (e > r).to(torch.float64).mean()
