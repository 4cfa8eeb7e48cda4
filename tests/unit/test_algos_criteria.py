"""Combining several criteria's scores: reference statistics, normalisation, weighted sum and the gate,
against hand-computed float64 values and a naive loop."""

import math
import random
import statistics

import pytest
import torch

from rlhfkit.algos import criteria_reference, gated_reward, normalize_criteria, weighted_sum

f64 = torch.float64


def test_criteria_reference_hand():
    """Criterion 0: 1, 2, 6 -> mean 3, population variance (4 + 1 + 9) / 3 = 14/3.
    Criterion 1: -1, 1, 0 -> mean 0, variance (1 + 1 + 0) / 3 = 2/3."""
    mean, std = criteria_reference(torch.tensor([[1.0, -1.0], [2.0, 1.0], [6.0, 0.0]], dtype=f64))
    assert mean.tolist() == pytest.approx([3.0, 0.0], abs=1e-12)
    assert std.tolist() == pytest.approx([math.sqrt(14 / 3), math.sqrt(2 / 3)], abs=1e-12)


def test_criteria_reference_matches_statistics_per_column():
    rng = random.Random(0)
    rows = [[rng.gauss(0, 1), rng.gauss(5, 3), rng.gauss(-2, 0.1)] for _ in range(7)]
    mean, std = criteria_reference(torch.tensor(rows, dtype=f64))
    for c in range(3):
        column = [r[c] for r in rows]
        assert mean[c].item() == pytest.approx(statistics.fmean(column), abs=1e-12)
        assert std[c].item() == pytest.approx(statistics.pstdev(column), abs=1e-12)


def test_criteria_reference_constant_criterion_is_only_centred():
    """A criterion equal on every episode has sigma 0: it gets sigma = 1, so z = r - mu = 0, not 0/0."""
    scores = torch.tensor([[1.0, 5.0], [3.0, 5.0]], dtype=f64)
    mean, std = criteria_reference(scores)
    assert std.tolist() == [1.0, 1.0]
    z = normalize_criteria(scores, mean, std)
    assert z.flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-12)


def test_normalize_criteria_hand():
    """(1 - 2) / 1 = -1, (4 - 2) / 2 = 1, (3 - 2) / 1 = 1, (0 - 2) / 2 = -1."""
    z = normalize_criteria(torch.tensor([[1.0, 4.0], [3.0, 0.0]], dtype=f64), torch.tensor([2.0, 2.0], dtype=f64),
                           torch.tensor([1.0, 2.0], dtype=f64))
    assert z.flatten().tolist() == pytest.approx([-1.0, 1.0, 1.0, -1.0], abs=1e-12)


def test_normalised_reference_batch_has_mean_0_and_std_1():
    """The property the reference is chosen for: on its own batch each criterion is standardised."""
    scores = torch.tensor([[0.3, 10.0], [1.7, 30.0], [-0.4, 20.0], [2.2, 60.0]], dtype=f64)
    z = normalize_criteria(scores, *criteria_reference(scores))
    assert z.mean(0).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert z.std(0, unbiased=False).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_weighted_sum_hand():
    """Row 0: 1 x 1 + 2 x 2 = 5; row 1: 1 x -1 + 2 x 0.5 = 0."""
    got = weighted_sum(torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=f64), torch.tensor([1.0, 2.0], dtype=f64))
    assert got.tolist() == pytest.approx([5.0, 0.0], abs=1e-12)


def test_weighted_sum_zero_weight_drops_a_criterion_and_matches_a_loop():
    z = torch.tensor([[0.5, -3.0, 2.0], [1.5, 7.0, -1.0]], dtype=f64)
    assert weighted_sum(z, torch.tensor([1.0, 0.0, 0.0], dtype=f64)).tolist() == [0.5, 1.5]
    w = [0.25, -1.0, 3.0]
    naive = [sum(w[c] * z[i, c].item() for c in range(3)) for i in range(2)]
    assert weighted_sum(z, torch.tensor(w, dtype=f64)).tolist() == pytest.approx(naive, abs=1e-12)


def test_one_criterion_is_the_identity_after_normalisation():
    """One criterion with weight 1: the reward is z = (r - mu) / sigma itself."""
    scores = torch.tensor([[2.0], [4.0], [9.0]], dtype=f64)
    mean, std = criteria_reference(scores)
    z = normalize_criteria(scores, mean, std)
    got = weighted_sum(z, torch.tensor([1.0], dtype=f64))
    want = [(r - 5.0) / math.sqrt((9 + 1 + 16) / 3) for r in (2.0, 4.0, 9.0)]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_gated_reward_hand():
    """Gate = criterion 1 with tau = 0: row 0 has z_g = -1 < 0 -> -1; row 1 has z_g = 0.5 -> 1 x 2 + 0 x 0.5 = 2."""
    z = torch.tensor([[2.0, -1.0], [2.0, 0.5]], dtype=f64)
    got = gated_reward(z, torch.tensor([1.0, 0.0], dtype=f64), gate=1, threshold=0.0)
    assert got.tolist() == pytest.approx([-1.0, 2.0], abs=1e-12)


def test_gated_reward_tie_at_the_threshold_is_not_gated():
    """z_g == tau is not below it: the weighted sum (0.5 x 3 + 1 x -0.5 = 1) is the reward."""
    z = torch.tensor([[3.0, -0.5]], dtype=f64)
    got = gated_reward(z, torch.tensor([0.5, 1.0], dtype=f64), gate=1, threshold=-0.5)
    assert got.tolist() == pytest.approx([1.0], abs=1e-12)
    below = gated_reward(z, torch.tensor([0.5, 1.0], dtype=f64), gate=1, threshold=-0.5 + 1e-9)
    assert below.tolist() == pytest.approx([-0.5], abs=1e-12)


def test_gated_reward_tagged_prompts_are_always_gated():
    z = torch.tensor([[3.0, 1.0], [3.0, 1.0]], dtype=f64)
    got = gated_reward(z, torch.tensor([1.0, 0.0], dtype=f64), gate=1, threshold=0.0,
                       tagged=torch.tensor([True, False]))
    assert got.tolist() == [1.0, 3.0]


def test_gate_below_every_score_is_the_weighted_sum():
    z = torch.tensor([[0.1, 2.0], [-4.0, -3.0]], dtype=f64)
    w = torch.tensor([2.0, 1.0], dtype=f64)
    assert torch.equal(gated_reward(z, w, gate=1, threshold=-10.0), weighted_sum(z, w))


def test_wrong_inputs_raise():
    with pytest.raises(ValueError, match="scores must have shape"):
        criteria_reference(torch.zeros(3))
    with pytest.raises(ValueError, match="at least one episode"):
        criteria_reference(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="std must have shape"):
        normalize_criteria(torch.zeros(2, 2), torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="weights must have shape"):
        weighted_sum(torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="gate must be a criterion index"):
        gated_reward(torch.zeros(2, 2), torch.ones(2), gate=2, threshold=0.0)
    with pytest.raises(ValueError, match="threshold must be finite"):
        gated_reward(torch.zeros(2, 2), torch.ones(2), gate=0, threshold=math.nan)
    with pytest.raises(ValueError, match="tagged must be a torch.bool"):
        gated_reward(torch.zeros(2, 2), torch.ones(2), gate=0, threshold=0.0, tagged=torch.ones(2))
