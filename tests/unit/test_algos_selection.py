"""Active-selection scores (rlhfkit.algos.selection) against hand-computed values, loops and identities."""

import itertools
import math

import pytest
import torch

from rlhfkit.algos import ensemble_disagreement, top_pair_uncertainty


def test_top_pair_uncertainty_hand():
    """Row 1: scores (2, 0, 1): the top pair is (2, 1), gap 1, sigmoid(1) = 0.731059, so
    u = 1 - |2 * 0.731059 - 1| = 1 - 0.462117 = 0.537883. Row 2: the top two tie at 0.5: u = 1.
    Row 3: gap 4 (scores 3, -1): u = 1 - (2 sigmoid(4) - 1) = 2 - 2 * 0.982014 = 0.035972."""
    scores = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, -1.0], [-1.0, 3.0, -5.0]], dtype=torch.float64)
    sig = [1 / (1 + math.exp(-1.0)), 0.5, 1 / (1 + math.exp(-4.0))]
    expected = [1 - abs(2 * s - 1) for s in sig]
    assert expected == pytest.approx([0.537883, 1.0, 0.035972], abs=1e-6)
    assert top_pair_uncertainty(scores).tolist() == pytest.approx(expected, abs=1e-12)


def test_top_pair_uncertainty_is_the_bradley_terry_probability():
    """u = 1 - |P(best beats runner-up) - P(runner-up beats best)|, with P from sigmoid of the
    difference, for every order of the K scores (the completions' order must not matter)."""
    base = [0.3, -1.2, 2.5, 2.1]
    p = 1 / (1 + math.exp(-(2.5 - 2.1)))
    expected = 1 - abs(p - (1 - p))
    for order in itertools.permutations(base):
        got = top_pair_uncertainty(torch.tensor([order], dtype=torch.float64)).item()
        assert got == pytest.approx(expected, abs=1e-12)


def test_top_pair_uncertainty_far_gap_is_exact():
    """A gap of 40: u = 2 - 2 sigmoid(40) = 2 e^-40 / (1 + e^-40), which 1 - |2 sigmoid - 1| in float64 rounds to 0."""
    got = top_pair_uncertainty(torch.tensor([[40.0, 0.0]], dtype=torch.float64)).item()
    assert got == pytest.approx(2 * math.exp(-40) / (1 + math.exp(-40)), rel=1e-9)
    assert got > 0


def test_top_pair_uncertainty_bad_input():
    with pytest.raises(ValueError, match="scores must have shape"):
        top_pair_uncertainty(torch.zeros(4))
    with pytest.raises(ValueError, match="K >= 2"):
        top_pair_uncertainty(torch.zeros(3, 1))


def test_ensemble_disagreement_hand():
    """Two members scoring (1, 0) and (0, 1): centred (0.5, -0.5) and (-0.5, 0.5); per completion the
    population std of {0.5, -0.5} is 0.5, so u = 0.5. Second prompt: members (0, 2) and (0, 4):
    centred (-1, 1) and (-2, 2); stds 0.5 and 0.5, u = 0.5. Third: both (3, 1): u = 0."""
    scores = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]],
                           [[0.0, 1.0], [0.0, 4.0], [3.0, 1.0]]], dtype=torch.float64)  # (E=2, P=3, K=2)
    assert ensemble_disagreement(scores).tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-12)


def test_ensemble_disagreement_against_loop():
    """The vectorised score equals a plain loop over prompts, completions and members (float64)."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, 4, generator=gen, dtype=torch.float64)  # (E, P, K)
    e, p, k = scores.shape
    expected = []
    for i in range(p):
        centred = [[scores[m, i, j].item() - sum(scores[m, i, :].tolist()) / k for j in range(k)] for m in range(e)]
        stds = []
        for j in range(k):
            column = [centred[m][j] for m in range(e)]
            mu = sum(column) / e
            stds.append(math.sqrt(sum((c - mu) ** 2 for c in column) / e))
        expected.append(sum(stds) / k)
    assert ensemble_disagreement(scores).tolist() == pytest.approx(expected, abs=1e-12)


def test_ensemble_offsets_do_not_count():
    """Members that differ by a constant per prompt (and per member) agree: u = 0; adding such offsets
    to a disagreeing ensemble leaves u unchanged."""
    gen = torch.Generator().manual_seed(1)
    one = torch.randn(1, 6, 3, generator=gen, dtype=torch.float64)
    offsets = torch.randn(4, 6, 1, generator=gen, dtype=torch.float64)  # (E, P, 1)
    assert ensemble_disagreement(one + offsets).tolist() == pytest.approx([0.0] * 6, abs=1e-12)
    spread = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    assert ensemble_disagreement(spread + offsets).tolist() == pytest.approx(
        ensemble_disagreement(spread).tolist(), abs=1e-12)


def test_ensemble_disagreement_bad_input():
    with pytest.raises(ValueError, match="scores must have shape"):
        ensemble_disagreement(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="E >= 2"):
        ensemble_disagreement(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="K >= 2"):
        ensemble_disagreement(torch.zeros(2, 3, 1))
