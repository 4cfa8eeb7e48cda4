"""Reward-model math: Bradley-Terry loss, accuracy, rankings to pairs, weights, normalisation."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    bradley_terry_loss,
    normalization_gain_bias,
    pair_weights,
    preference_accuracy,
    ranking_to_pairs,
    reward_centering_penalty,
)

F64 = torch.float64
LOG2 = math.log(2.0)
finite = st.floats(-30, 30, allow_nan=False)


def t(*values):
    return torch.tensor(values, dtype=F64)


def test_bradley_terry_hand():
    """Pairs (2, 0) and (0, 0): -log sigmoid(2) = log(1 + e^-2) and -log sigmoid(0) = log 2; loss = their mean."""
    want = (math.log(1 + math.exp(-2)) + LOG2) / 2
    assert bradley_terry_loss(t(2.0, 0.0), t(0.0, 0.0)).item() == pytest.approx(want, abs=1e-12)


def test_bradley_terry_weighted_mean():
    """weights (1, 3): (1 * log(1 + e^-2) + 3 * log 2) / 4."""
    want = (math.log(1 + math.exp(-2)) + 3 * LOG2) / 4
    loss = bradley_terry_loss(t(2.0, 0.0), t(0.0, 0.0), weights=t(1.0, 3.0))
    assert loss.item() == pytest.approx(want, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(r=finite, m=st.floats(0, 10))
def test_bradley_terry_equal_rewards_and_margin(r, m):
    """Equal rewards give log 2 = 0.693147; a margin m gives -log sigmoid(-m) = log(1 + e^m)
    (docs/implementation-details.md, "Equal rewards give a reward-model loss of log 2")."""
    assert bradley_terry_loss(t(r), t(r)).item() == pytest.approx(0.693147, abs=1e-6)
    assert bradley_terry_loss(t(r), t(r), margin=m).item() == pytest.approx(math.log1p(math.exp(m)), abs=1e-9)
    assert bradley_terry_loss(t(r, r), t(r, r), margin=t(m, 0.0)).item() == pytest.approx(
        (math.log1p(math.exp(m)) + LOG2) / 2, abs=1e-9
    )


@settings(max_examples=30, deadline=None)
@given(a=finite, b=finite)
def test_bradley_terry_antisymmetry(a, b):
    """softplus(b - a) - softplus(a - b) = b - a, so L(a, b) - L(b, a) = -(a - b)
    (docs/implementation-details.md, "Equal rewards give a reward-model loss of log 2")."""
    diff = bradley_terry_loss(t(a), t(b)) - bradley_terry_loss(t(b), t(a))
    assert diff.item() == pytest.approx(-(a - b), abs=1e-9)


def test_bradley_terry_is_stable_for_large_gaps():
    """log(1 + e^1000) = 1000 + log(1 + e^-1000) = 1000; a naive log(sigmoid) would give inf."""
    assert bradley_terry_loss(t(-500.0), t(500.0)).item() == 1000.0
    assert bradley_terry_loss(t(500.0), t(-500.0)).item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_bradley_terry_against_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    r_c, r_r, w = torch.randn(3, 8, generator=g, dtype=F64)
    w = w.abs()
    margin = 0.3
    losses = [-math.log(1 / (1 + math.exp(-(c - r - margin)))) for c, r in zip(r_c.tolist(), r_r.tolist())]
    assert bradley_terry_loss(r_c, r_r, margin=margin).item() == pytest.approx(sum(losses) / 8, abs=1e-12)
    weighted = sum(wi * li for wi, li in zip(w.tolist(), losses)) / sum(w.tolist())
    assert bradley_terry_loss(r_c, r_r, margin=margin, weights=w).item() == pytest.approx(weighted, abs=1e-12)


def test_bradley_terry_gradient_pushes_rewards_apart():
    """d/dr_c softplus(r_r - r_c) = -sigmoid(r_r - r_c) = -1/2 at equality (B = 1)."""
    r_c, r_r = t(0.0).requires_grad_(), t(0.0).requires_grad_()
    bradley_terry_loss(r_c, r_r).backward()
    assert r_c.grad.item() == -0.5 and r_r.grad.item() == 0.5


def test_bradley_terry_bad_arguments():
    with pytest.raises(ValueError, match=r"r_rejected must have the shape of r_chosen \(2,\), got r_rejected \(3,\)"):
        bradley_terry_loss(t(1, 2), t(1, 2, 3))
    with pytest.raises(ValueError, match=r"r_chosen must have shape \(B\), got shape \(2, 1\)"):
        bradley_terry_loss(t(1, 2)[:, None], t(1, 2)[:, None])
    with pytest.raises(ValueError, match="margin must be >= 0"):
        bradley_terry_loss(t(1, 2), t(1, 2), margin=-1.0)
    with pytest.raises(ValueError, match="margin must have the shape of r_chosen"):
        bradley_terry_loss(t(1, 2), t(1, 2), margin=t(1.0))
    with pytest.raises(ValueError, match="weights must have the shape of r_chosen"):
        bradley_terry_loss(t(1, 2), t(1, 2), weights=t(1.0))
    with pytest.raises(ValueError, match="weights must be >= 0 with a positive sum"):
        bradley_terry_loss(t(1, 2), t(1, 2), weights=t(0.0, 0.0))


def test_preference_accuracy_hand_strict():
    """(1 > 0) yes, (2 > 2) no (a tie is not a win), (3 > 4) no: 1/3. Equal rewards give 0
    (docs/implementation-details.md, "Equal rewards give a reward-model loss of log 2")."""
    assert preference_accuracy(t(1, 2, 3), t(0, 2, 4)).item() == pytest.approx(1 / 3, abs=1e-7)
    assert preference_accuracy(t(5, 5), t(5, 5)).item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_preference_accuracy_against_loop(seed):
    g = torch.Generator().manual_seed(seed)
    r_c, r_r = torch.randint(0, 3, (2, 20), generator=g).to(F64)  # many ties
    want = sum(c > r for c, r in zip(r_c.tolist(), r_r.tolist())) / 20
    assert preference_accuracy(r_c, r_r).item() == pytest.approx(want, abs=1e-7)


def test_preference_accuracy_has_no_grad_and_checks_shapes():
    r = t(1.0, 2.0).requires_grad_()
    assert not preference_accuracy(r, r.detach()).requires_grad
    with pytest.raises(ValueError, match=r"r_rejected must have the shape of r_chosen"):
        preference_accuracy(t(1, 2), t(1))


def test_ranking_to_pairs_hand():
    """ranks [1, 0, 2]: (0, 1) -> 1 is better; (0, 2) -> 0 is better; (1, 2) -> 1 is better.
    A tie [0, 0, 1] gives only the two pairs against completion 2."""
    assert ranking_to_pairs([1, 0, 2]) == [(1, 0), (0, 2), (1, 2)]
    assert ranking_to_pairs([0, 0, 1]) == [(0, 2), (1, 2)]
    assert ranking_to_pairs([3, 3]) == []
    assert ranking_to_pairs([]) == []


@settings(max_examples=40, deadline=None)
@given(ranks=st.lists(st.integers(0, 4), max_size=7))
def test_ranking_to_pairs_against_brute_force(ranks):
    """Every ordered pair with rank_i < rank_j, once; K distinct ranks give K choose 2 pairs."""
    pairs = ranking_to_pairs(ranks)
    want = {(i, j) for i, j in itertools.permutations(range(len(ranks)), 2) if ranks[i] < ranks[j]}
    assert set(pairs) == want and len(pairs) == len(want)
    assert pairs == ranking_to_pairs(list(ranks))  # deterministic
    if len(set(ranks)) == len(ranks):
        assert len(pairs) == math.comb(len(ranks), 2)


def test_ranking_to_pairs_bad_arguments():
    with pytest.raises(ValueError, match=r"ranks must be ints >= 0.*ranks\[1\] = -1"):
        ranking_to_pairs([0, -1])
    with pytest.raises(ValueError, match=r"ranks\[0\] = 0.5"):
        ranking_to_pairs([0.5, 1])


def test_pair_weights_hand():
    """Prompt 1 has 3 pairs (K = 3), prompt 2 has 1, prompt 3 none: weights 1/3, 1/3, 1/3, 1."""
    w = pair_weights([3, 1, 0], dtype=F64)
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0], abs=1e-15)


def test_pair_weights_make_each_prompt_count_once():
    """Weighted BT loss = mean over prompts of each prompt's mean pair loss."""
    g = torch.Generator().manual_seed(0)
    counts = [6, 1, 3]  # K = 4, K = 2, K = 3
    r_c, r_r = torch.randn(2, sum(counts), generator=g, dtype=F64)
    loss = bradley_terry_loss(r_c, r_r, weights=pair_weights(counts, dtype=F64))
    losses = [math.log1p(math.exp(r - c)) for c, r in zip(r_c.tolist(), r_r.tolist())]
    starts = [0, 6, 7, 10]
    per_prompt = [sum(losses[a:b]) / (b - a) for a, b in zip(starts, starts[1:])]
    assert loss.item() == pytest.approx(sum(per_prompt) / 3, abs=1e-12)


def test_pair_weights_bad_arguments():
    with pytest.raises(ValueError, match="num_pairs_per_prompt must be ints >= 0, got entry 1 = -2"):
        pair_weights([1, -2])


def test_normalization_gain_bias_hand():
    """r = 1, 2, 3, 4: mean 2.5, population var 1.25; gain = 1 / sqrt(1.25), bias = -2.5 * gain."""
    gain, bias = normalization_gain_bias(t(1, 2, 3, 4))
    assert gain == pytest.approx(1 / math.sqrt(1.25), abs=1e-12)
    assert bias == pytest.approx(-2.5 / math.sqrt(1.25), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mu=st.floats(-5, 5), sigma=st.floats(0.1, 5))
def test_normalization_hits_its_targets(seed, mu, sigma):
    """The normalisation samples themselves get the target mean and population std
    (docs/implementation-details.md, "Normalised rewards hit their targets")."""
    g = torch.Generator().manual_seed(seed)
    rewards = 7.0 * torch.randn(64, generator=g, dtype=F64) - 3.0
    gain, bias = normalization_gain_bias(rewards, target_mean=mu, target_std=sigma)
    normalized = gain * rewards + bias
    assert normalized.mean().item() == pytest.approx(mu, abs=1e-9)
    assert normalized.std(unbiased=False).item() == pytest.approx(sigma, abs=1e-9)


def test_normalization_gain_bias_bad_arguments():
    with pytest.raises(ValueError, match="rewards all equal"):
        normalization_gain_bias(t(2, 2, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        normalization_gain_bias(t(2))
    with pytest.raises(ValueError, match="target_std must be positive"):
        normalization_gain_bias(t(1, 2), target_std=0.0)
    with pytest.raises(ValueError, match=r"rewards must have shape \(N\)"):
        normalization_gain_bias(t(1, 2)[None])


def test_reward_centering_penalty_hand():
    """Pairs (1, 0) and (-2, 1): sums 1 and -1, squares 1 and 1, mean 1. Gradient d/dr_c = 2 (r_c + r_r) / B."""
    r_c, r_r = t(1.0, -2.0).requires_grad_(), t(0.0, 1.0)
    penalty = reward_centering_penalty(r_c, r_r)
    assert penalty.item() == 1.0
    penalty.backward()
    assert r_c.grad.tolist() == [1.0, -1.0]


@pytest.mark.parametrize("seed", range(3))
def test_reward_centering_penalty_against_loop(seed):
    r_c, r_r = torch.randn(2, 9, generator=torch.Generator().manual_seed(seed), dtype=F64)
    want = sum((c + r) ** 2 for c, r in zip(r_c.tolist(), r_r.tolist())) / 9
    assert reward_centering_penalty(r_c, r_r).item() == pytest.approx(want, abs=1e-12)
    assert reward_centering_penalty(r_c - 5.0, r_r + 5.0).item() == pytest.approx(want, abs=1e-12)  # shift-free sum


def test_reward_centering_penalty_bad_arguments():
    with pytest.raises(ValueError, match=r"r_rejected must have the shape of r_chosen \(2,\), got r_rejected \(1,\)"):
        reward_centering_penalty(t(1, 2), t(1))
    with pytest.raises(ValueError, match=r"r_chosen must have shape \(B\)"):
        reward_centering_penalty(t(1, 2)[None], t(1, 2)[None])
