"""PPO: clipped surrogate, clipped value loss, entropy term and the combined objective.

Hand values: docs/implementation-details.md, "The clipped surrogate" and "The clipped value loss".
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    aggregate,
    entropy_bonus,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    sequence_ppo_policy_loss,
)

F64 = torch.float64
ONE = torch.ones(1, 1, dtype=torch.bool)


def t(*values):
    return torch.tensor(values, dtype=F64)


def single(value):
    """A (1, 1) float64 tensor."""
    return torch.tensor([[value]], dtype=F64)


def random_rollout(seed, batch=4, length=6, spread=0.3):
    """logp, old_logp (|log ratio| ~ spread), advantages, values, old_values, returns, entropy, mask."""
    g = torch.Generator().manual_seed(seed)
    old_logp = -torch.rand(batch, length, generator=g, dtype=F64) * 4
    logp = old_logp + spread * torch.randn(batch, length, generator=g, dtype=F64)
    advantages, values, old_values, returns = torch.randn(4, batch, length, generator=g, dtype=F64)
    entropy = torch.rand(batch, length, generator=g, dtype=F64) * 3
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length) < lengths[:, None]
    return logp, old_logp, advantages, values, old_values, returns, entropy, mask


def with_garbage(x, mask, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(mask, x, 1e3 * torch.randn(x.shape, generator=g, dtype=x.dtype))


def surrogate_and_grad(advantage, ratio, clip_eps=0.2):
    """One token with old_logp = 0 and logp = log(ratio); returns (loss, stats, d loss / d logp)."""
    logp = single(math.log(ratio)).requires_grad_()
    loss, stats = ppo_policy_loss(logp, single(0.0), single(advantage), ONE, clip_eps=clip_eps)
    loss.backward()
    return loss.item(), stats, logp.grad.item()


# --- clipped surrogate ---------------------------------------------------------------------------


def test_surrogate_s13_clipped_where_the_advantage_pushes_out():
    """A = 1, rho = 1.3: max(-1.3, -1.2) = -1.2, the clipped branch (clipfrac 1), whose clip(rho)
    has no gradient. A = -1, rho = 0.7: max(0.7, 0.8) = 0.8, clipped again, gradient 0."""
    loss, stats, grad = surrogate_and_grad(1.0, 1.3)
    assert loss == pytest.approx(-1.2, abs=1e-12) and grad == 0.0 and stats.clipfrac.item() == 1.0
    loss, stats, grad = surrogate_and_grad(-1.0, 0.7)
    assert loss == pytest.approx(0.8, abs=1e-12) and grad == 0.0 and stats.clipfrac.item() == 1.0


def test_surrogate_s13_unclipped_branch():
    """A = -1, rho = 1.3: max(1.3, 1.2) = 1.3, the unclipped branch: lm-human-preferences/TRL clipfrac 0 (CleanRL's
    |rho - 1| > eps would say 1), gradient d(-A rho)/d logp = -A rho = 1.3."""
    loss, stats, grad = surrogate_and_grad(-1.0, 1.3)
    assert loss == pytest.approx(1.3, abs=1e-12) and stats.clipfrac.item() == 0.0
    assert grad == pytest.approx(1.3, abs=1e-12)


@pytest.mark.parametrize(("advantage", "ratio"), [(2.0, 1.1), (-0.5, 0.85), (1.0, 0.9), (-3.0, 1.19)])
def test_surrogate_inside_the_band(advantage, ratio):
    """Inside [0.8, 1.2] the loss is -A rho and d loss / d logp = -A rho (rho = exp(logp - old))."""
    loss, stats, grad = surrogate_and_grad(advantage, ratio)
    assert loss == pytest.approx(-advantage * ratio, abs=1e-12)
    assert grad == pytest.approx(-advantage * ratio, abs=1e-12)
    assert stats.clipfrac.item() == 0.0


def test_policy_stats_hand():
    """log ratios (0.1, -0.2 | pad): approx_kl = 0.5 (0.01 + 0.04) / 2 = 0.0125; k3 of KL(old || new) =
    mean((rho - 1) - log rho) = (e^0.1 - 1.1 + e^-0.2 - 0.8) / 2; ratio max e^0.1, min e^-0.2."""
    old = t(-1.0, -2.0, -3.0)[None]
    logp = old + t(0.1, -0.2, 50.0)[None]
    mask = torch.tensor([[True, True, False]])
    _, stats = ppo_policy_loss(logp, old, t(1.0), mask)
    assert stats.approx_kl.item() == pytest.approx(0.0125, abs=1e-12)
    k3 = (math.exp(0.1) - 1.1 + math.exp(-0.2) - 0.8) / 2
    assert stats.approx_kl_k3.item() == pytest.approx(k3, abs=1e-12)
    assert stats.ratio_max.item() == pytest.approx(math.exp(0.1), abs=1e-12)
    assert stats.ratio_min.item() == pytest.approx(math.exp(-0.2), abs=1e-12)
    assert stats.ratio_mean.item() == pytest.approx((math.exp(0.1) + math.exp(-0.2)) / 2, abs=1e-12)


@pytest.mark.parametrize("mode", ["token", "sequence", "sequence_sum"])
@pytest.mark.parametrize("seed", range(3))
def test_ratio_one_s1(seed, mode):
    """logp == old_logp gives clipfrac 0, approx KL 0 (both) exactly, ratios 1, loss -aggregate(A), and
    the gradient of the plain policy gradient -d/dtheta aggregate(A logp)
    (docs/implementation-details.md, "The first minibatch has ratio exactly 1")."""
    _, old_logp, advantages, *_, mask = random_rollout(seed)
    logp = old_logp.clone().requires_grad_()
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, mode=mode)
    assert stats.clipfrac.item() == 0.0 and stats.approx_kl.item() == 0.0 and stats.approx_kl_k3.item() == 0.0
    assert stats.ratio_mean.item() == stats.ratio_max.item() == stats.ratio_min.item() == 1.0
    (ppo_grad,) = torch.autograd.grad(loss, logp)
    pg_logp = old_logp.clone().requires_grad_()
    pg_loss = reinforce_loss(pg_logp, mask, advantages, mode=mode)
    (pg_grad,) = torch.autograd.grad(pg_loss, pg_logp)
    torch.testing.assert_close(ppo_grad, pg_grad, rtol=0, atol=1e-12)
    assert loss.item() == pytest.approx(-aggregate(advantages, mask, mode=mode).item(), abs=1e-12)


def naive_policy_loss(logp, old_logp, advantages, mask, eps):
    """Token mean of -min(rho A, clip(rho) A) and the share of tokens with clip(rho) A < rho A."""
    losses, clipped = [], []
    for b in range(logp.shape[0]):
        for i in range(logp.shape[1]):
            if mask[b, i]:
                rho = math.exp(logp[b, i].item() - old_logp[b, i].item())
                a = advantages[b, i].item()
                losses.append(-min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a))
                clipped.append(min(max(rho, 1 - eps), 1 + eps) * a < rho * a)
    return sum(losses) / len(losses), sum(clipped) / len(clipped)


@pytest.mark.parametrize("seed", range(5))
def test_policy_loss_against_loop(seed):
    logp, old_logp, advantages, *_, mask = random_rollout(seed)
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.15)
    want_loss, want_clipfrac = naive_policy_loss(logp, old_logp, advantages, mask, 0.15)
    assert loss.item() == pytest.approx(want_loss, abs=1e-12)
    assert stats.clipfrac.item() == pytest.approx(want_clipfrac, abs=1e-12)


def test_policy_loss_sequence_advantages_broadcast():
    """(B,) advantages equal the same values repeated over each row's tokens."""
    logp, old_logp, _, *_, mask = random_rollout(0)
    adv = t(1.0, -2.0, 0.5, 3.0)
    got, _ = ppo_policy_loss(logp, old_logp, adv, mask)
    want, _ = ppo_policy_loss(logp, old_logp, adv[:, None].expand(4, 6), mask)
    assert got.item() == pytest.approx(want.item(), abs=1e-12)


# --- value loss ----------------------------------------------------------------------------------


def test_value_loss_s14():
    """V_old = 0, V = 0.5, R = 1, eps_v = 0.2: unclipped (0.5 - 1)^2 = 0.25, clipped V = 0.2 gives
    (0.2 - 1)^2 = 0.64; L_V = 0.5 max = 0.32, vf_clipfrac 1. Without clipping 0.5 * 0.25 = 0.125."""
    loss, stats = ppo_value_loss(single(0.5), single(0.0), single(1.0), ONE, clip_eps_value=0.2)
    assert loss.item() == pytest.approx(0.32, abs=1e-12) and stats.clipfrac.item() == 1.0
    loss, stats = ppo_value_loss(single(0.5), single(0.0), single(1.0), ONE, clip_eps_value=None)
    assert loss.item() == pytest.approx(0.125, abs=1e-12) and stats.clipfrac.item() == 0.0


def test_value_loss_gradient_is_zero_when_clipped_branch_wins():
    """In test_value_loss_s14 the clipped value V_old + 0.2 does not depend on V: d L_V / d V = 0. Unclipped: V - R."""
    values = single(0.5).requires_grad_()
    ppo_value_loss(values, single(0.0), single(1.0), ONE)[0].backward()
    assert values.grad.item() == 0.0
    values = single(0.1).requires_grad_()
    ppo_value_loss(values, single(0.0), single(1.0), ONE)[0].backward()
    assert values.grad.item() == pytest.approx(0.1 - 1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_value_loss_against_loop(seed):
    _, _, _, values, old_values, returns, _, mask = random_rollout(seed)
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_eps_value=0.3)
    terms, clipped = [], []
    for b, i in mask.nonzero().tolist():
        v, v_old, r = values[b, i].item(), old_values[b, i].item(), returns[b, i].item()
        v_clip = v_old + min(max(v - v_old, -0.3), 0.3)
        terms.append(0.5 * max((v - r) ** 2, (v_clip - r) ** 2))
        clipped.append((v_clip - r) ** 2 > (v - r) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)
    assert stats.clipfrac.item() == pytest.approx(sum(clipped) / len(clipped), abs=1e-12)


def test_value_loss_at_rollout_values_never_clips():
    """values == old_values gives vf_clipfrac 0 and the plain loss
    (docs/implementation-details.md, "The first minibatch has ratio exactly 1")."""
    _, _, _, values, _, returns, _, mask = random_rollout(1)
    clipped, stats = ppo_value_loss(values, values, returns, mask)
    plain, _ = ppo_value_loss(values, values, returns, mask, clip_eps_value=None)
    assert stats.clipfrac.item() == 0.0 and clipped.item() == plain.item()


# --- entropy and the combined loss ---------------------------------------------------------------


def test_entropy_bonus_hand():
    """H (1, 2 | 3, pad): token mean (1 + 2 + 3) / 3 = 2; sequence mean (1.5 + 3) / 2 = 2.25."""
    entropy = t(1.0, 2.0, 3.0, 99.0).reshape(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    assert entropy_bonus(entropy, mask).item() == 2.0
    assert entropy_bonus(entropy, mask, mode="sequence").item() == 2.25


def test_ppo_loss_hand():
    """One token: A = 1, rho = 1.1 (inside the band): L_CLIP = 1.1. V = 0.5, V_old = 0, R = 1:
    L_VF = 0.32 (as in test_value_loss_s14). H = 2. With c1 = 0.1, c2 = 0.01:
    L = 1.1 - 0.032 + 0.02 = 1.088, loss = -1.088."""
    terms = ppo_loss(
        logp=single(math.log(1.1)),
        old_logp=single(0.0),
        advantages=single(1.0),
        values=single(0.5),
        old_values=single(0.0),
        returns=single(1.0),
        entropy=single(2.0),
        mask=ONE,
        vf_coef=0.1,
        ent_coef=0.01,
    )
    assert terms.total.item() == pytest.approx(-1.088, abs=1e-12)
    assert terms.policy.item() == pytest.approx(-1.1, abs=1e-12)
    assert terms.value.item() == pytest.approx(0.32, abs=1e-12)
    assert terms.entropy.item() == 2.0
    assert terms.value_stats.clipfrac.item() == 1.0 and terms.policy_stats.clipfrac.item() == 0.0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    c1=st.floats(0, 1),
    c2=st.floats(0, 0.1),
    mode=st.sampled_from(["token", "sequence", "sequence_sum"]),
)
def test_ppo_loss_is_minus_the_objective(seed, c1, c2, mode):
    """loss = -(L_CLIP - c1 L_VF + c2 H) from the three terms computed separately."""
    logp, old_logp, adv, values, old_values, returns, entropy, mask = random_rollout(seed)
    loss = ppo_loss(
        logp, old_logp, adv, values, old_values, returns, entropy, mask, vf_coef=c1, ent_coef=c2, mode=mode
    ).total
    l_clip = -ppo_policy_loss(logp, old_logp, adv, mask, mode=mode)[0]
    l_vf = ppo_value_loss(values, old_values, returns, mask, mode=mode)[0]
    h = entropy_bonus(entropy, mask, mode=mode)
    assert loss.item() == pytest.approx(-(l_clip - c1 * l_vf + c2 * h).item(), abs=1e-12)


def test_ppo_loss_stats_are_detached_tensors():
    logp, old_logp, adv, values, old_values, returns, entropy, mask = random_rollout(0)
    logp.requires_grad_()
    values.requires_grad_()
    terms = ppo_loss(logp, old_logp, adv, values, old_values, returns, entropy, mask)
    assert terms.total.requires_grad and terms.total.dim() == 0
    detached = {"policy": terms.policy, "value": terms.value, "entropy": terms.entropy,
                **{f"policy_stats.{k}": v for k, v in terms.policy_stats._asdict().items()},
                **{f"value_stats.{k}": v for k, v in terms.value_stats._asdict().items()}}
    for key, value in detached.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key


def test_ppo_loss_without_entropy():
    logp, old_logp, adv, values, old_values, returns, _, mask = random_rollout(0)
    terms = ppo_loss(logp, old_logp, adv, values, old_values, returns, None, mask)
    assert terms.entropy is None
    assert terms.total.item() == pytest.approx((terms.policy + 0.1 * terms.value).item(), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_padding_never_changes_ppo_results(seed):
    """Garbage under the mask changes neither the losses, the stats, nor the gradients (0 at padding)."""
    clean = random_rollout(seed, spread=0.5)
    mask = clean[-1]
    dirty = [with_garbage(x, mask, seed + i) for i, x in enumerate(clean[:-1])] + [mask]
    results = []
    for logp, old_logp, adv, values, old_values, returns, entropy, m in (clean, dirty):
        logp, values = logp.clone().requires_grad_(), values.clone().requires_grad_()
        terms = ppo_loss(logp, old_logp, adv, values, old_values, returns, entropy, m, ent_coef=0.01)
        terms.total.backward()
        stats = [terms.policy, terms.value, terms.entropy, *terms.policy_stats, *terms.value_stats]
        results.append((terms.total, stats, logp.grad, values.grad))
    (loss_a, stats_a, glogp_a, gval_a), (loss_b, stats_b, glogp_b, gval_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(stats_a, stats_b))
    assert torch.equal(glogp_a, glogp_b) and torch.equal(gval_a, gval_b)
    assert glogp_b[~mask].eq(0).all() and gval_b[~mask].eq(0).all()


def test_ppo_policy_loss_bad_arguments():
    logp, old_logp, adv, *_, mask = random_rollout(0)
    with pytest.raises(ValueError, match=r"old_logp must have the shape of logp \(4, 6\), got old_logp \(4, 5\)"):
        ppo_policy_loss(logp, old_logp[:, :5], adv, mask)
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        ppo_policy_loss(logp, old_logp, adv, mask.long())
    with pytest.raises(ValueError, match=r"advantages must have shape \(B,\) = \(4,\) or \(B, T\) = \(4, 6\)"):
        ppo_policy_loss(logp, old_logp, adv[:, :5], mask)
    with pytest.raises(ValueError, match="clip_eps must be positive and finite, got 0"):
        ppo_policy_loss(logp, old_logp, adv, mask, clip_eps=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        ppo_policy_loss(logp, old_logp, adv, mask, mode="batch")


def test_ppo_value_loss_bad_arguments():
    _, _, _, values, old_values, returns, _, mask = random_rollout(0)
    with pytest.raises(ValueError, match=r"returns must have the shape of values \(4, 6\), got returns \(6,\)"):
        ppo_value_loss(values, old_values, returns[0], mask)
    with pytest.raises(ValueError, match="clip_eps_value must be positive"):
        ppo_value_loss(values, old_values, returns, mask, clip_eps_value=-0.2)
    with pytest.raises(ValueError, match=r"mask must be a torch.bool"):
        ppo_value_loss(values, old_values, returns, mask.float())


def test_entropy_bonus_bad_arguments():
    *_, entropy, mask = random_rollout(0)
    with pytest.raises(ValueError, match=r"mask must have the shape of entropy \(4, 6\), got \(6, 4\)"):
        entropy_bonus(entropy, mask.T)
    with pytest.raises(ValueError, match=r"entropy must have shape \(B, T\)"):
        entropy_bonus(entropy[0], mask[0])


def test_ppo_loss_bad_arguments():
    logp, old_logp, adv, values, old_values, returns, entropy, mask = random_rollout(0)
    with pytest.raises(ValueError, match="entropy is None but ent_coef = 0.01"):
        ppo_loss(logp, old_logp, adv, values, old_values, returns, None, mask, ent_coef=0.01)
    with pytest.raises(ValueError, match="vf_coef must be >= 0"):
        ppo_loss(logp, old_logp, adv, values, old_values, returns, entropy, mask, vf_coef=-1.0)
    with pytest.raises(ValueError, match="ent_coef must be >= 0"):
        ppo_loss(logp, old_logp, adv, values, old_values, returns, entropy, mask, ent_coef=-0.1)
    with pytest.raises(ValueError, match=r"old_values must have the shape of values"):
        ppo_loss(logp, old_logp, adv, values, old_values[:2], returns, entropy, mask)


f64 = torch.float64


def test_sequence_ratio_by_hand():
    """Token ratios 1.1 and 1.2: the reply's ratio is 1.32. A = +1: -min(1.32, 1.2) = -1.2, clipped (no gradient);
    A = -1: -min(-1.32, -1.2) = 1.32, unclipped. The padded third token changes nothing."""
    logp = torch.tensor([[math.log(1.1), math.log(1.2), 5.0]] * 2, dtype=f64)
    old = torch.zeros_like(logp)
    mask = torch.tensor([[True, True, False]] * 2)
    loss, stats = sequence_ppo_policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=f64), mask, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.32) / 2, abs=1e-12)
    assert stats.clipfrac.item() == pytest.approx(0.5)
    assert stats.ratio_max.item() == pytest.approx(1.32, abs=1e-12)


def test_sequence_ratio_gradient_inside_the_band():
    """Inside the band the loss is -(1/N) sum_i A_i rho_i, so d loss / d logp_i,t = -A_i rho_i / N for every
    token of reply i (and 0 under the mask); an empty row adds 0 but counts in N."""
    logp = torch.tensor([[0.01, -0.02, 0.03], [0.02, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=f64, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    adv = torch.tensor([0.7, -1.3, 2.0], dtype=f64)
    loss, _ = sequence_ppo_policy_loss(logp, torch.zeros_like(logp), adv, mask, 0.2)
    loss.backward()
    rho = [math.exp(0.01 - 0.02 + 0.03), math.exp(0.02)]
    want = [[-0.7 * rho[0] / 3] * 3, [1.3 * rho[1] / 3, 0.0, 0.0], [0.0] * 3]
    assert logp.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in want]
    assert loss.item() == pytest.approx(-(0.7 * rho[0] - 1.3 * rho[1]) / 3, abs=1e-12)


@given(st.lists(st.lists(st.floats(-0.3, 0.3), min_size=1, max_size=5), min_size=1, max_size=5),
       st.lists(st.floats(-2, 2), min_size=5, max_size=5))
@settings(max_examples=40, deadline=None)
def test_sequence_ratio_matches_a_plain_loop(replies, advs):
    """Property, replies of ragged lengths (right-padded, garbage under the pad): the loss equals
    (1/B) sum_i max(-A_i rho_i, -A_i clip(rho_i, 0.8, 1.2)), rho_i = exp(sum of the reply's log-ratios),
    computed here with math.exp in plain Python."""
    width = max(len(r) for r in replies)
    logp = torch.tensor([r + [7.0] * (width - len(r)) for r in replies], dtype=f64)
    mask = torch.tensor([[t < len(r) for t in range(width)] for r in replies])
    adv = torch.tensor(advs[:len(replies)], dtype=f64)
    got, _ = sequence_ppo_policy_loss(logp, torch.zeros_like(logp), adv, mask, 0.2)
    want = 0.0
    for r, a in zip(replies, advs):
        rho = math.exp(sum(r))
        want += max(-a * rho, -a * min(max(rho, 0.8), 1.2))
    assert got.item() == pytest.approx(want / len(replies), abs=1e-12)
