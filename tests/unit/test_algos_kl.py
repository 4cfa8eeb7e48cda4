"""KL estimators, the KL-shaped reward and the beta controllers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    shaped_rewards,
)

F64 = torch.float64
log_ratios = st.floats(-20, 20, allow_nan=False)


def t(*values):
    return torch.tensor(values, dtype=F64)


def random_logps(seed, batch=3, length=5):
    g = torch.Generator().manual_seed(seed)
    logp, ref_logp = -torch.rand(2, batch, length, generator=g, dtype=F64) * 5
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    return logp, ref_logp, torch.arange(length) < lengths[:, None]


def with_garbage(x, mask, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(mask, x, 1e3 * torch.randn(x.shape, generator=g, dtype=x.dtype))


# --- estimators ----------------------------------------------------------------------------------


def test_estimators_hand():
    """pi(y) = 1/2, pi_ref(y) = 1/4: log_ratio = log 2, r = pi_ref / pi = 1/2.
    k1 = log 2; k2 = (log 2)^2 / 2; k3 = (r - 1) - log r = -1/2 + log 2."""
    logp, ref = t(math.log(0.5)), t(math.log(0.25))
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2), abs=1e-12)
    assert kl_k2(logp, ref).item() == pytest.approx(math.log(2) ** 2 / 2, abs=1e-12)
    assert kl_k3(logp, ref).item() == pytest.approx(math.log(2) - 0.5, abs=1e-12)


def test_identical_policies_give_zero_s2():
    logp, _, _ = random_logps(0)
    for name, estimator in KL_ESTIMATORS.items():
        assert torch.equal(estimator(logp, logp.clone()), torch.zeros_like(logp)), name


@settings(max_examples=50, deadline=None)
@given(x=log_ratios, ref=st.floats(-30, 0))
def test_estimator_signs_s3(x, ref):
    """k2 >= 0 and k3 >= 0 always; k3 = 0 only at log_ratio = 0; k1 < 0 when the reference is likelier
    (docs/implementation-details.md, "KL estimator signs and Monte-Carlo bias")."""
    logp, ref_logp = t(ref + x), t(ref)
    assert kl_k2(logp, ref_logp).item() >= 0
    assert kl_k3(logp, ref_logp).item() >= 0
    if abs((logp - ref_logp).item()) > 1e-150:  # below that x^2 / 2 underflows to 0
        assert kl_k3(logp, ref_logp).item() > 0
    if (logp - ref_logp).item() < 0:
        assert kl_k1(logp, ref_logp).item() < 0


@pytest.mark.parametrize("seed", range(3))
def test_estimators_against_math_loop(seed):
    logp, ref_logp, _ = random_logps(seed)
    for got_k1, got_k2, got_k3, a, b in zip(
        kl_k1(logp, ref_logp).flatten(),
        kl_k2(logp, ref_logp).flatten(),
        kl_k3(logp, ref_logp).flatten(),
        logp.flatten().tolist(),
        ref_logp.flatten().tolist(),
    ):
        r = math.exp(b - a)  # pi_ref / pi
        assert got_k1.item() == pytest.approx(-math.log(r), abs=1e-12)
        assert got_k2.item() == pytest.approx(0.5 * math.log(r) ** 2, abs=1e-12)
        assert got_k3.item() == pytest.approx((r - 1) - math.log(r), abs=1e-12)


@pytest.mark.parametrize("x", [1e-12, -3e-7, 9.9e-4, -1.01e-3, 0.3])
def test_k3_is_accurate_for_small_log_ratios(x):
    """k3 = x^2/2 - x^3/6 + x^4/24 - ... ; at x = 1e-12 that is 5e-25, which exp(-x) - 1 + x rounds to 0.
    Reference: the series to x^12, whose remainder is < |x|^13 / 13! (< 1e-15 relative for |x| <= 0.3)."""
    want = sum((-x) ** n / math.factorial(n) for n in range(2, 13))
    assert kl_k3(t(x), t(0.0)).item() == pytest.approx(want, rel=1e-9)


PAIRS = {  # (policy q, reference p) over 4 tokens
    "near": ([0.25, 0.25, 0.25, 0.25], [0.3, 0.2, 0.25, 0.25]),
    "far": ([0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]),
}


@pytest.mark.parametrize("pair", PAIRS.keys())
def test_monte_carlo_bias_s3(pair):
    """Tokens y ~ q (the policy); k1 and k3 are unbiased estimators of KL(q || p) = sum_y q log(q / p), and
    k2 estimates E_q[(log q/p)^2] / 2 instead, which is not the KL
    (docs/implementation-details.md, "KL estimator signs and Monte-Carlo bias").

    Exact values in float64 from the two distributions, then n = 200,000 seeded samples. Tolerance: 5
    standard errors of each sample mean (sample std / sqrt(n)). The estimators are bounded on 4 tokens, so
    the mean is close to normal: a correct estimator misses by 5 SE with probability ~6e-7. For the far
    pair the k2 bias is about 0.46 nats, hundreds of standard errors, so k2 must miss the KL by > 5 SE.
    """
    q, p = (torch.tensor(d, dtype=F64) for d in PAIRS[pair])
    exact_kl = (q * (q / p).log()).sum().item()
    exact_k2 = (q * (q / p).log() ** 2).sum().item() / 2
    n = 200_000
    y = torch.multinomial(q, n, replacement=True, generator=torch.Generator().manual_seed(0))
    logq, logp = q.log()[y], p.log()[y]
    means, std_errors = {}, {}
    for name, estimator in KL_ESTIMATORS.items():
        samples = estimator(logq, logp)
        means[name], std_errors[name] = samples.mean().item(), samples.std().item() / math.sqrt(n)
    assert abs(means["k1"] - exact_kl) < 5 * std_errors["k1"]
    assert abs(means["k3"] - exact_kl) < 5 * std_errors["k3"]
    assert abs(means["k2"] - exact_k2) < 5 * std_errors["k2"]  # k2 converges, but to its own target
    if pair == "far":
        assert abs(means["k2"] - exact_kl) > 5 * std_errors["k2"]


def test_mask_zeroes_padding_and_its_gradients():
    logp, ref_logp, mask = random_logps(1)
    dirty = with_garbage(logp, mask, 2).requires_grad_()
    for estimator in KL_ESTIMATORS.values():
        got = estimator(dirty, ref_logp, mask)
        assert torch.equal(got, estimator(logp, ref_logp, mask))
        assert got[~mask].eq(0).all()
        (grad,) = torch.autograd.grad(got.sum(), dirty)
        assert torch.isfinite(grad).all() and grad[~mask].eq(0).all()


def test_estimators_bad_arguments():
    logp, ref_logp, mask = random_logps(0)
    for estimator in KL_ESTIMATORS.values():
        with pytest.raises(ValueError, match=r"ref_logp must have the shape of logp \(3, 5\), got ref_logp \(3, 4\)"):
            estimator(logp, ref_logp[:, :4])
        with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
            estimator(logp, ref_logp, mask.long())


# --- shaped reward -------------------------------------------------------------------------------


def test_shaped_rewards_hand():
    """beta 0.5, kl (0.1, 0.2 | pad) and (0.4, 0.5, 0.6), scores (1, 2) on each row's last True token:
    row 1: (-0.05, -0.1 + 1, 0); row 2: (-0.2, -0.25, -0.3 + 2)."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    got = shaped_rewards(t(1.0, 2.0), kl, mask, beta=0.5)
    torch.testing.assert_close(got, torch.tensor([[-0.05, 0.9, 0.0], [-0.2, -0.25, 1.7]], dtype=F64))


def test_shaped_rewards_at_init_only_score_s2():
    """policy == reference gives kl = 0, so the reward is the score at t_end and 0 elsewhere
    (docs/implementation-details.md, "Identical policies give KL 0")."""
    logp, _, mask = random_logps(3)
    got = shaped_rewards(t(0.7, -1.0, 2.0), kl_k1(logp, logp), mask, beta=0.1)
    last = mask.sum(1) - 1
    for b in range(3):
        want = torch.zeros(5, dtype=F64)
        want[last[b]] = [0.7, -1.0, 2.0][b]
        assert torch.equal(got[b], want)


@pytest.mark.parametrize("seed", range(3))
def test_shaped_rewards_against_loop_and_padding(seed):
    logp, ref_logp, mask = random_logps(seed)
    score = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(seed))
    kl = kl_k1(logp, ref_logp)
    got = shaped_rewards(score, kl, mask, beta=0.05)
    for b in range(3):
        n = int(mask[b].sum())
        for i in range(5):
            want = (-0.05 * kl[b, i].item() + (score[b].item() if i == n - 1 else 0.0)) if i < n else 0.0
            assert got[b, i].item() == pytest.approx(want, abs=1e-12)
    assert torch.equal(shaped_rewards(score, with_garbage(kl, mask, seed), mask, 0.05), got)


def test_shaped_rewards_bad_arguments():
    kl = torch.zeros(2, 3, dtype=F64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mask rows \[1\] have no True token"):
        shaped_rewards(t(1, 2), kl, torch.tensor([[True, False, False], [False, False, False]]), 0.1)
    with pytest.raises(ValueError, match=r"score must have shape \(B,\) = \(2,\), got \(3,\)"):
        shaped_rewards(t(1, 2, 3), kl, mask, 0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        shaped_rewards(t(1, 2), kl, mask, -0.1)
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        shaped_rewards(t(1, 2), kl, mask.int(), 0.1)
    with pytest.raises(ValueError, match=r"mask must have the shape of kl \(2, 3\)"):
        shaped_rewards(t(1, 2), kl, mask[:, :2], 0.1)


# --- controllers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kl", "want"), [(6.0, 0.15), (7.2, 0.151536), (12.0, 0.151536), (0.0, 0.148464)])
def test_adaptive_kl_s8(kl, want):
    """Beta 0.15, target 6, horizon 10000, n = 512: e = clip(kl/6 - 1, -0.2, 0.2) is 0, 0.2, 0.2, -0.2;
    beta = 0.15 (1 + e * 512 / 10000) = 0.15 * 1.01024 = 0.151536 or 0.15 * 0.98976 = 0.148464
    (docs/implementation-details.md, "Adaptive KL controller step")."""
    controller = AdaptiveKLController(init_kl_coef=0.15, target=6.0, horizon=10000)
    assert controller.update(kl, 512) == pytest.approx(want, abs=1e-12)
    assert controller.value == pytest.approx(want, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(kls=st.lists(st.floats(0, 50), min_size=1, max_size=8), n=st.integers(0, 2000))
def test_adaptive_kl_against_product(kls, n):
    """beta_K = beta_0 prod_k (1 + clip(kl_k / target - 1, -0.2, 0.2) n / horizon)."""
    controller = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    want = 0.1
    for kl in kls:
        controller.update(kl, n)
        want *= 1 + min(max(kl / 4.0 - 1, -0.2), 0.2) * n / 1000
    assert controller.value == pytest.approx(want, rel=1e-12)


def test_controllers_state_dict_round_trip():
    adaptive = AdaptiveKLController(0.15, 6.0, 10000)
    adaptive.update(12.0, 512)
    resumed = AdaptiveKLController(0.15, 6.0, 10000)
    resumed.load_state_dict(adaptive.state_dict())
    assert resumed.value == adaptive.value == pytest.approx(0.151536, abs=1e-12)
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 512) == 0.05 and fixed.value == 0.05
    other = FixedKLController(0.2)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


def test_update_accepts_a_0_dim_tensor():
    controller = AdaptiveKLController(0.15, 6.0, 10000)
    assert controller.update(torch.tensor(12.0), 512) == pytest.approx(0.151536, abs=1e-12)


def test_controllers_bad_arguments():
    with pytest.raises(ValueError, match="init_kl_coef must be positive"):
        AdaptiveKLController(0.0, 6.0, 10000)
    with pytest.raises(ValueError, match="target must be positive"):
        AdaptiveKLController(0.1, 0.0, 10000)
    with pytest.raises(ValueError, match="horizon must be positive"):
        AdaptiveKLController(0.1, 6.0, -1)
    with pytest.raises(ValueError, match="value must be >= 0"):
        FixedKLController(-0.1)
    controller = AdaptiveKLController(0.1, 6.0, 10000)
    with pytest.raises(ValueError, match="current_kl must be finite, got nan"):
        controller.update(float("nan"), 512)
    with pytest.raises(ValueError, match="n_steps must be an int >= 0"):
        controller.update(1.0, -1)
    with pytest.raises(ValueError, match="state must be a mapping with key 'value'"):
        controller.load_state_dict({"beta": 0.1})
    with pytest.raises(ValueError, match=r"state\['value'\] must be positive"):
        controller.load_state_dict({"value": -1.0})
    with pytest.raises(ValueError, match="current_kl must be finite"):
        FixedKLController(0.1).update(float("inf"), 1)
