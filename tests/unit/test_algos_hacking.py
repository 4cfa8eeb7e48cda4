"""Reward-hacking statistics and reward transforms against hand-computed values and naive loops."""

import itertools
import math
import random
import statistics

import pytest
import torch

from rlhfkit.algos import (
    clip_reward,
    conservative_reward,
    ensemble_spread,
    kl_reward_slope_ratio,
    length_penalty,
    moving_average,
    pearson_correlation,
    relative_drift,
    robust_slope,
    standardized_spread,
    window_zscore,
)

f64 = torch.float64


def test_ensemble_spread_hand():
    """Episode 0: members 1 and 3, mean 2, population std sqrt((1 + 1) / 2) = 1; episode 1: 2 and 2 -> 0."""
    got = ensemble_spread(torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=f64))
    assert got.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)


def test_ensemble_spread_against_statistics_pstdev():
    rng = random.Random(0)
    rows = [[rng.gauss(0, 1) for _ in range(5)] for _ in range(4)]  # 4 members, 5 episodes
    got = ensemble_spread(torch.tensor(rows, dtype=f64))
    want = [statistics.pstdev([rows[e][i] for e in range(4)]) for i in range(5)]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_ensemble_spread_rejects_one_member():
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        ensemble_spread(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="scores must have shape"):
        ensemble_spread(torch.zeros(3))


def test_standardized_spread_hand():
    """Member 1 scores 10x member 0 plus 20: in their own units (mean 2 / 20, std 1 / 10) they agree,
    spread 0, where the raw spread is 4.5 and 13.5. Reversed order: z = (-1, 1) and (1, -1), spread 1."""
    scores = torch.tensor([[1.0, 3.0], [10.0, 30.0]], dtype=f64)
    mean, std = torch.tensor([2.0, 20.0], dtype=f64), torch.tensor([1.0, 10.0], dtype=f64)
    assert standardized_spread(scores, mean, std).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert ensemble_spread(scores).tolist() == pytest.approx([4.5, 13.5], abs=1e-12)
    reversed_ = torch.tensor([[1.0, 3.0], [30.0, 10.0]], dtype=f64)
    assert standardized_spread(reversed_, mean, std).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_standardized_spread_ignores_each_members_scale_and_offset():
    """Property: rescaling member e by a_e > 0 and shifting it by b_e (its reference moves with it)
    leaves the spread unchanged; checked against statistics.pstdev of hand-standardized scores."""
    rng = random.Random(1)
    rows = [[rng.gauss(0, 1) for _ in range(6)] for _ in range(3)]  # 3 members, 6 episodes
    mean = [statistics.fmean(r) for r in rows]
    std = [statistics.pstdev(r) for r in rows]
    want = [statistics.pstdev([(rows[e][i] - mean[e]) / std[e] for e in range(3)]) for i in range(6)]
    a, b = [0.5, 3.0, 40.0], [-2.0, 7.0, 0.25]
    moved = [[a[e] * x + b[e] for x in rows[e]] for e in range(3)]
    got = standardized_spread(torch.tensor(moved, dtype=f64), torch.tensor([a[e] * mean[e] + b[e] for e in range(3)],
                              dtype=f64), torch.tensor([a[e] * std[e] for e in range(3)], dtype=f64))
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_standardized_spread_rejects_bad_references():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="one value per member"):
        standardized_spread(scores, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="std must be > 0"):
        standardized_spread(scores, torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_robust_slope_hand():
    """[0, 1, 3]: pairwise slopes 1, 3/2, 2 -> median 1.5. [0, 1, 3, 10]: 1, 1.5, 10/3, 2, 4.5, 7 -> (2 + 10/3) / 2."""
    assert robust_slope(torch.tensor([0.0, 1.0, 3.0])).item() == pytest.approx(1.5, abs=1e-12)
    assert robust_slope(torch.tensor([0.0, 1.0, 3.0, 10.0])).item() == pytest.approx((2 + 10 / 3) / 2, abs=1e-12)


def test_robust_slope_ignores_one_outlier_and_matches_a_naive_loop():
    # slopes 1 except the four pairs with the last point: the median stays 1
    assert robust_slope(torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0])).item() == pytest.approx(1.0, abs=1e-12)
    rng = random.Random(1)
    v = [rng.gauss(0, 1) for _ in range(9)]
    slopes = [(v[j] - v[i]) / (j - i) for i, j in itertools.combinations(range(9), 2)]
    assert robust_slope(torch.tensor(v)).item() == pytest.approx(statistics.median(slopes), abs=1e-6)


def test_robust_slope_of_a_line_is_its_slope():
    assert robust_slope(0.25 * torch.arange(7, dtype=f64) - 3).item() == pytest.approx(0.25, abs=1e-12)


def test_robust_slope_rejects_short_series():
    with pytest.raises(ValueError, match="at least 2 values"):
        robust_slope(torch.tensor([1.0]))


def test_window_zscore_hand():
    """Baseline [1, 3]: mean 2, population std 1; latest 5 -> z = (5 - 2) / 1 = 3."""
    assert window_zscore(torch.tensor([1.0, 3.0, 2.0, 5.0]), baseline=2).item() == pytest.approx(3.0, abs=1e-12)


def test_window_zscore_flat_baseline_uses_the_floor():
    assert window_zscore(torch.tensor([1.0, 1.0, 1.5]), baseline=2, min_std=0.1).item() == pytest.approx(5.0)


def test_window_zscore_rejects_bad_baseline():
    with pytest.raises(ValueError, match="baseline must be from 1 to"):
        window_zscore(torch.tensor([1.0, 2.0]), baseline=2)


def test_relative_drift_hand():
    assert relative_drift(15.0, 10.0) == pytest.approx(0.5)
    assert relative_drift(5.0, 10.0) == pytest.approx(-0.5)
    assert relative_drift(1.0, 0.0, eps=0.5) == pytest.approx(2.0)


def test_relative_drift_rejects_nan():
    with pytest.raises(ValueError, match="current must be a finite number"):
        relative_drift(math.nan, 1.0)


def test_pearson_correlation_hand():
    """x = [1, 2, 3], y = [2, 4, 7]: sum dx dy = 5, sum dx^2 = 2, sum dy^2 = 114/9 -> 5 / sqrt(228/9)."""
    got = pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))
    assert got.item() == pytest.approx(15 / math.sqrt(228), abs=1e-12)


def test_pearson_correlation_properties():
    rng = random.Random(2)
    x = torch.tensor([rng.gauss(0, 1) for _ in range(20)], dtype=f64)
    y = torch.tensor([rng.gauss(0, 1) for _ in range(20)], dtype=f64)
    assert pearson_correlation(x, 3 * x + 1).item() == pytest.approx(1.0, abs=1e-12)
    assert pearson_correlation(x, -x).item() == pytest.approx(-1.0, abs=1e-12)
    assert pearson_correlation(x, torch.full_like(x, 2.0)).item() == 0.0
    assert pearson_correlation(x, y).item() == pytest.approx(statistics.correlation(x.tolist(), y.tolist()), abs=1e-12)


def test_pearson_correlation_rejects_different_lengths():
    with pytest.raises(ValueError, match="must have the shape of"):
        pearson_correlation(torch.zeros(3), torch.zeros(4))


def test_kl_reward_slope_ratio_hand():
    """KL slope 1 per iteration, reward slope 0.5 -> 2 nats per unit of reward; flat reward -> 1 / s_min."""
    kl = torch.tensor([0.0, 1.0, 2.0])
    assert kl_reward_slope_ratio(kl, torch.tensor([0.0, 0.5, 1.0])).item() == pytest.approx(2.0, abs=1e-12)
    assert kl_reward_slope_ratio(kl, torch.ones(3), min_reward_slope=0.01).item() == pytest.approx(100.0)


def test_kl_reward_slope_ratio_rejects_bad_floor():
    with pytest.raises(ValueError, match="min_reward_slope"):
        kl_reward_slope_ratio(torch.zeros(3), torch.zeros(3), min_reward_slope=0.0)


def test_moving_average_hand_and_naive_loop():
    got = moving_average(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2)
    assert got.tolist() == pytest.approx([1.0, 1.5, 2.5, 3.5], abs=1e-12)
    v = [random.Random(3).gauss(0, 1) for _ in range(11)]
    want = [sum(v[max(0, t - 3):t + 1]) / len(v[max(0, t - 3):t + 1]) for t in range(11)]
    assert moving_average(torch.tensor(v, dtype=f64), 4).tolist() == pytest.approx(want, abs=1e-12)


def test_moving_average_rejects_window_0():
    with pytest.raises(ValueError, match="window must be >= 1"):
        moving_average(torch.ones(3), 0)


def test_conservative_reward_hand():
    """Means [2, 2], spreads [1, 0] (test_ensemble_spread_hand): k = 1 gives [1, 2]; k = 0 the mean."""
    scores = torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=f64)
    assert conservative_reward(scores, k=1.0).tolist() == pytest.approx([1.0, 2.0], abs=1e-12)
    assert conservative_reward(scores, k=0.0).tolist() == pytest.approx([2.0, 2.0], abs=1e-12)


def test_conservative_reward_rejects_negative_k():
    with pytest.raises(ValueError, match="k"):
        conservative_reward(torch.zeros(2, 3), k=-1.0)


def test_length_penalty_hand():
    """L_ref 20: length 10 has no excess, 30 has 10/20 = 0.5, times c = 0.5 -> 1 - 0.25."""
    got = length_penalty(torch.tensor([1.0, 1.0]), torch.tensor([10, 30]), coef=0.5, reference_length=20.0)
    assert got.tolist() == pytest.approx([1.0, 0.75], abs=1e-7)


def test_length_penalty_rejects_bad_reference():
    with pytest.raises(ValueError, match="reference_length"):
        length_penalty(torch.zeros(2), torch.zeros(2), coef=1.0, reference_length=0.0)
    with pytest.raises(ValueError, match="must have the shape of"):
        length_penalty(torch.zeros(2), torch.zeros(3), coef=1.0, reference_length=1.0)


def test_clip_reward_hand():
    assert clip_reward(torch.tensor([-3.0, 0.5, 2.0]), bound=1.0).tolist() == pytest.approx([-1.0, 0.5, 1.0])


def test_clip_reward_rejects_zero_bound():
    with pytest.raises(ValueError, match="bound"):
        clip_reward(torch.zeros(2), bound=0.0)
