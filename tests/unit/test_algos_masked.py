"""Masked sums, means, variance, whitening and `aggregate` against hand-computed values and loops."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import aggregate, explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

F64 = torch.float64
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
MASK = torch.tensor([[True, True, False], [True, False, False]])


def random_batch(seed, batch=4, length=6):
    """Random (B, T) float64 values and a right-padded mask with >= 1 token per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=g, dtype=F64)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    return x, torch.arange(length) < lengths[:, None]


def with_garbage(x, mask, seed):
    """x with every False position replaced by large random values."""
    g = torch.Generator().manual_seed(seed)
    return torch.where(mask, x, 1e6 * torch.randn(x.shape, generator=g, dtype=x.dtype))


def test_masked_sum_hand():
    """Kept entries 1, 2 | 4: total 7, rows [3, 4], columns [1+4, 2, 0]."""
    assert masked_sum(X, MASK).item() == 7.0
    assert masked_sum(X, MASK, dim=1).tolist() == [3.0, 4.0]
    assert masked_sum(X, MASK, dim=0).tolist() == [5.0, 2.0, 0.0]


def test_masked_mean_hand_and_empty_rows():
    """(1 + 2 + 4) / 3 overall; rows 3/2 and 4/1; a row with no True entry gives 0, not NaN."""
    assert masked_mean(X, MASK).item() == pytest.approx(7 / 3, abs=1e-12)
    assert masked_mean(X, MASK, dim=1).tolist() == [1.5, 4.0]
    empty_row = torch.tensor([[True, False, False], [False, False, False]])
    assert masked_mean(X, empty_row, dim=1).tolist() == [1.0, 0.0]
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_var_hand():
    """x = 1..4: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; biased 5/4, unbiased 5/3."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, True, False]])
    assert masked_var(x, mask).item() == pytest.approx(1.25, abs=1e-12)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(5 / 3, abs=1e-12)


def test_masked_whiten_oai_example_shift_mean_false():
    """The 3x3 example of the N implementation details blog post (lm-human-preferences `whiten`),
    with shift_mean=False (docs/implementation-details.md, "Whitening gives mean 0 and std 1").

    x = 1.6 + d with d = -0.4, -0.3, ..., 0.4: mean 1.6, sum d^2 = 2 (0.16 + 0.09 + 0.04 + 0.01) = 0.6,
    biased var 0.6 / 9 = 1/15, unbiased 0.6 / 8 = 0.075, and x_hat = d / sqrt(var + 1e-8) + 1.6.
    """
    x = torch.tensor([[1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0]], dtype=F64)
    mask = torch.ones(3, 3, dtype=torch.bool)
    d = torch.arange(-4, 5, dtype=F64).reshape(3, 3) / 10
    biased = masked_whiten(x, mask, shift_mean=False)
    unbiased = masked_whiten(x, mask, shift_mean=False, unbiased=True)
    torch.testing.assert_close(biased, d / math.sqrt(1 / 15 + 1e-8) + 1.6, rtol=0, atol=1e-12)
    torch.testing.assert_close(unbiased, d / math.sqrt(0.075 + 1e-8) + 1.6, rtol=0, atol=1e-12)
    # the rounded values printed in the blog post
    oai = [[0.0508, 0.4381, 0.8254], [1.2127, 1.6000, 1.9873], [2.3746, 2.7619, 3.1492]]
    trl = [[0.1394, 0.5046, 0.8697], [1.2349, 1.6000, 1.9651], [2.3303, 2.6954, 3.0606]]
    torch.testing.assert_close(biased, torch.tensor(oai, dtype=F64), rtol=0, atol=5e-5)
    torch.testing.assert_close(unbiased, torch.tensor(trl, dtype=F64), rtol=0, atol=5e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_whiten_gives_mean_0_std_1(seed):
    """Mean 0 and population std sqrt(var / (var + eps)) over the mask; 0 elsewhere
    (docs/implementation-details.md, "Whitening gives mean 0 and std 1")."""
    x, mask = random_batch(seed)
    x = 3.0 * x + 5.0
    var = masked_var(x, mask)
    white = masked_whiten(x, mask)
    assert abs(masked_mean(white, mask).item()) < 1e-12
    assert masked_var(white, mask).sqrt().item() == pytest.approx(math.sqrt(var / (var + 1e-8)), abs=1e-9)
    assert white[~mask].eq(0).all()


def test_masked_whiten_unbiased_population_std():
    """With the unbiased variance, the n = 12 masked values whiten to (x - mean) / std with numpy's
    ddof=1 std, so their population std (ddof=0) is sqrt(11/12) = 0.957427
    (docs/implementation-details.md, "Whitening gives mean 0 and std 1")."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g, dtype=F64)
    mask = torch.arange(5) < torch.tensor([5, 4, 3])[:, None]  # 12 tokens
    white = masked_whiten(x, mask, unbiased=True, eps=1e-30)
    # independent float64 reference: numpy on the selected values, eps 1e-30 negligible
    values = x.numpy()[mask.numpy()]
    want = np.zeros((3, 5))
    want[mask.numpy()] = (values - values.mean()) / values.std(ddof=1)
    np.testing.assert_allclose(white.numpy(), want, rtol=0, atol=1e-12)
    assert np.std(white.numpy()[mask.numpy()], ddof=0) == pytest.approx(0.957427, abs=1e-6)
    # the biased default divides by the ddof=0 std instead: population std 1
    biased = masked_whiten(x, mask, eps=1e-30).numpy()[mask.numpy()]
    np.testing.assert_allclose(biased, (values - values.mean()) / values.std(ddof=0), rtol=0, atol=1e-12)


def test_aggregate_hand():
    """Tokens 1, 2 | 4 (B = 2): token 7/3; sequence (1.5 + 4)/2; sequence_sum (3 + 4)/2; constant 7/(2*3)."""
    assert aggregate(X, MASK, "token").item() == pytest.approx(7 / 3, abs=1e-12)
    assert aggregate(X, MASK, "sequence").item() == pytest.approx(2.75, abs=1e-12)
    assert aggregate(X, MASK, "sequence_sum").item() == pytest.approx(3.5, abs=1e-12)
    assert aggregate(X, MASK, "constant", constant=3).item() == pytest.approx(7 / 6, abs=1e-12)


def test_aggregate_sequence_skips_empty_rows():
    """Row 2 has no token: "sequence" averages row 1 only (1.5); "sequence_sum" still divides by B = 2."""
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert aggregate(X, mask, "sequence").item() == 1.5
    assert aggregate(X, mask, "sequence_sum").item() == 1.5  # (1 + 2) / 2
    assert aggregate(X, torch.zeros_like(mask), "sequence").item() == 0.0


def naive_reductions(x, mask, constant):
    """All reductions as Python loops over the entries."""
    rows = [[x[b, t].item() for t in range(x.shape[1]) if mask[b, t]] for b in range(x.shape[0])]
    tokens = [v for row in rows for v in row]
    mean = sum(tokens) / len(tokens)
    var = sum((v - mean) ** 2 for v in tokens) / len(tokens)
    return {
        "sum": sum(tokens),
        "mean": mean,
        "var": var,
        "var_unbiased": var * len(tokens) / (len(tokens) - 1),
        "row_means": [sum(r) / len(r) for r in rows],
        "token": mean,
        "sequence": sum(sum(r) / len(r) for r in rows) / len(rows),
        "sequence_sum": sum(tokens) / len(rows),
        "constant": sum(tokens) / (len(rows) * constant),
        "white": [[(v - mean) / math.sqrt(var + 1e-8) for v in r] for r in rows],
    }


@pytest.mark.parametrize("seed", range(5))
def test_against_naive_loops(seed):
    x, mask = random_batch(seed, batch=5, length=7)
    mask[0] = True  # ensure >= 2 tokens for the unbiased variance
    want = naive_reductions(x, mask, constant=7)
    assert masked_sum(x, mask).item() == pytest.approx(want["sum"], abs=1e-12)
    assert masked_mean(x, mask).item() == pytest.approx(want["mean"], abs=1e-12)
    assert masked_var(x, mask).item() == pytest.approx(want["var"], abs=1e-12)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(want["var_unbiased"], abs=1e-12)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx(want["row_means"], abs=1e-12)
    for mode in ("token", "sequence", "sequence_sum", "constant"):
        assert aggregate(x, mask, mode, constant=7).item() == pytest.approx(want[mode], abs=1e-12)
    white = masked_whiten(x, mask)
    for b, row in enumerate(want["white"]):
        assert white[b, : len(row)].tolist() == pytest.approx(row, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_padding_values_never_change_a_result(seed):
    x, mask = random_batch(seed)
    dirty = with_garbage(x, mask, seed + 100)
    assert torch.equal(masked_sum(dirty, mask), masked_sum(x, mask))
    assert torch.equal(masked_sum(dirty, mask, dim=1), masked_sum(x, mask, dim=1))
    assert torch.equal(masked_mean(dirty, mask, dim=1), masked_mean(x, mask, dim=1))
    assert torch.equal(masked_var(dirty, mask), masked_var(x, mask))
    assert torch.equal(masked_whiten(dirty, mask), masked_whiten(x, mask))
    assert torch.equal(masked_whiten(dirty, mask, shift_mean=False), masked_whiten(x, mask, shift_mean=False))
    for mode in ("token", "sequence", "sequence_sum", "constant"):
        assert torch.equal(aggregate(dirty, mask, mode, constant=6), aggregate(x, mask, mode, constant=6))


def test_padding_garbage_gets_no_gradient():
    x, mask = random_batch(0)
    dirty = with_garbage(x, mask, 1).requires_grad_()
    aggregate(dirty, mask, "sequence").backward()
    assert dirty.grad[~mask].eq(0).all()


def test_masked_sum_and_mean_bad_arguments():
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        masked_sum(X, MASK.long())
    with pytest.raises(ValueError, match=r"mask must have the shape of x \(2, 3\), got \(2, 2\)"):
        masked_mean(X, MASK[:, :2])
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        masked_sum([1.0, 2.0], MASK)


def test_masked_var_bad_arguments():
    with pytest.raises(ValueError, match="mask selects 0 entries"):
        masked_var(X, torch.zeros_like(MASK))
    with pytest.raises(ValueError, match=r"mask selects 1 entries.*unbiased=True"):
        masked_var(X, torch.tensor([[True, False, False], [False, False, False]]), unbiased=True)
    with pytest.raises(ValueError, match="mask must be a torch.bool"):
        masked_var(X, MASK.float())


def test_masked_whiten_bad_arguments():
    with pytest.raises(ValueError, match="eps must be positive"):
        masked_whiten(X, MASK, eps=0.0)
    with pytest.raises(ValueError, match="mask must have the shape of x"):
        masked_whiten(X, MASK.T)


def test_aggregate_bad_arguments():
    with pytest.raises(ValueError, match=r"mode must be one of .*'token'.*got 'mean'"):
        aggregate(X, MASK, "mean")
    with pytest.raises(ValueError, match="constant must be given"):
        aggregate(X, MASK, "constant")
    with pytest.raises(ValueError, match="constant must be positive"):
        aggregate(X, MASK, "constant", constant=0)
    with pytest.raises(ValueError, match=r"per_token must have shape \(B, T\), got shape \(6,\)"):
        aggregate(X.flatten(), MASK.flatten())
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        aggregate(X, MASK.int())


def test_explained_variance_hand():
    """R = (1, 2, 3, 4), V = (1, 2, 3, 5): R - V = (0, 0, 0, -1) with population variance 1/4 - 1/16 = 3/16;
    Var R = 5/4; EV = 1 - (3/16) / (5/4) = 0.85. V = R gives 1; a constant V gives 0."""
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0]], dtype=F64)
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, 7.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, True, False]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.85, abs=1e-12)
    assert explained_variance(returns, returns, mask).item() == 1.0
    assert explained_variance(torch.full_like(returns, 3.0), returns, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_explained_variance_constant_returns_is_nan():
    returns = torch.ones(2, 3, dtype=F64)
    assert math.isnan(explained_variance(returns * 0.5, returns, torch.ones(2, 3, dtype=torch.bool)).item())


@pytest.mark.parametrize("seed", range(3))
def test_explained_variance_against_loop_and_padding(seed):
    values, mask = random_batch(seed, batch=5)
    returns, _ = random_batch(seed + 50, batch=5)
    mask[0] = True
    pairs = [(values[b, i].item(), returns[b, i].item()) for b, i in mask.nonzero().tolist()]

    def pop_var(xs):
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / len(xs)

    want = 1 - pop_var([r - v for v, r in pairs]) / pop_var([r for _, r in pairs])
    got = explained_variance(values, returns, mask)
    assert got.item() == pytest.approx(want, abs=1e-12)
    dirty = explained_variance(with_garbage(values, mask, 1), with_garbage(returns, mask, 2), mask)
    assert torch.equal(dirty, got)


def test_explained_variance_bad_arguments():
    with pytest.raises(ValueError, match=r"returns must have the shape of values \(2, 3\), got returns \(2, 2\)"):
        explained_variance(X, X[:, :2], MASK)
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        explained_variance(X, X, MASK.long())
    with pytest.raises(ValueError, match="mask selects 0 entries"):
        explained_variance(X, X, torch.zeros_like(MASK))
