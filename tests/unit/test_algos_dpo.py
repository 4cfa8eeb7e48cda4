"""DPO and IPO losses, sequence log-probs and implicit rewards.

Values at initialisation: docs/implementation-details.md, "DPO and IPO at initialisation".
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import dpo_loss, ipo_loss, sequence_logprobs

F64 = torch.float64


def t(*values):
    return torch.tensor(values, dtype=F64)


def random_pairs(seed, batch=6):
    g = torch.Generator().manual_seed(seed)
    return tuple(-10 * torch.rand(batch, generator=g, dtype=F64) for _ in range(4))


def test_sequence_logprobs_hand():
    """(-1, -2, pad 7) -> -3; (-0.5, pad, pad) -> -0.5."""
    logp = t(-1, -2, 7, -0.5, 9, 9).reshape(2, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert sequence_logprobs(logp, mask).tolist() == [-3.0, -0.5]


@pytest.mark.parametrize("seed", range(3))
def test_sequence_logprobs_against_loop_and_padding(seed):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(4, 7, generator=g, dtype=F64)
    mask = torch.arange(7) < torch.randint(1, 8, (4,), generator=g)[:, None]
    want = [sum(logp[b, i].item() for i in range(7) if mask[b, i]) for b in range(4)]
    assert sequence_logprobs(logp, mask).tolist() == pytest.approx(want, abs=1e-12)
    dirty = torch.where(mask, logp, torch.randn(4, 7, generator=g, dtype=F64) * 1e3)
    assert torch.equal(sequence_logprobs(dirty, mask), sequence_logprobs(logp, mask))


def test_sequence_logprobs_bad_arguments():
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        sequence_logprobs(t(1, 2)[None], torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"logp must have shape \(B, T\), got shape \(2,\)"):
        sequence_logprobs(t(1, 2), torch.ones(2, dtype=torch.bool))


def test_dpo_hand():
    """logp_c = -1, ref_c = -2, logp_r = -3, ref_r = -2.5: h = (-1 + 2) - (-3 + 2.5) = 1.5.
    beta 0.1: loss = -log sigmoid(0.15) = log(1 + e^-0.15); with eps = 0.2 add the mirrored term:
    0.8 log(1 + e^-0.15) + 0.2 log(1 + e^0.15). Implicit rewards 0.1 * 1 = 0.1 and 0.1 * -0.5 = -0.05."""
    args = (t(-1.0), t(-3.0), t(-2.0), t(-2.5))
    loss, stats = dpo_loss(*args, beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.15)), abs=1e-12)
    smoothed, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.2)
    want = 0.8 * math.log1p(math.exp(-0.15)) + 0.2 * math.log1p(math.exp(0.15))
    assert smoothed.item() == pytest.approx(want, abs=1e-12)
    assert stats.chosen_rewards.item() == pytest.approx(0.1, abs=1e-12)
    assert stats.rejected_rewards.item() == pytest.approx(-0.05, abs=1e-12)
    assert stats.reward_accuracy.item() == 1.0
    assert stats.reward_margin.item() == pytest.approx(0.15, abs=1e-12)


def test_ipo_hand():
    """Same pair, h = 1.5; beta 0.5: (1.5 - 1/(2 * 0.5))^2 = 0.25; beta 0.1: (1.5 - 5)^2 = 12.25."""
    args = (t(-1.0), t(-3.0), t(-2.0), t(-2.5))
    assert ipo_loss(*args, beta=0.5)[0].item() == pytest.approx(0.25, abs=1e-12)
    assert ipo_loss(*args, beta=0.1)[0].item() == pytest.approx(12.25, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    beta=st.sampled_from([0.05, 0.1, 0.5]),
    smoothing=st.floats(0, 0.49),
)
def test_at_init_s10(seed, beta, smoothing):
    """pi == pi_ref gives h = 0: DPO loss log 2 for any beta and smoothing, IPO (1/(2 beta))^2
    (0.05 -> 100, 0.1 -> 25, 0.5 -> 1), implicit rewards 0, reward accuracy 0 (strict)
    (docs/implementation-details.md, "DPO and IPO at initialisation")."""
    logp_c, logp_r, _, _ = random_pairs(seed)
    loss, stats = dpo_loss(logp_c, logp_r, logp_c.clone(), logp_r.clone(), beta=beta, label_smoothing=smoothing)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert stats.reward_accuracy.item() == 0.0
    assert stats.chosen_rewards.eq(0).all() and stats.rejected_rewards.eq(0).all()
    ipo, _ = ipo_loss(logp_c, logp_r, logp_c.clone(), logp_r.clone(), beta=beta)
    assert ipo.item() == pytest.approx({0.05: 100.0, 0.1: 25.0, 0.5: 1.0}[beta], abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_dpo_and_ipo_against_loops(seed):
    lc, lr, rc, rr = random_pairs(seed)
    beta, eps = 0.2, 0.1
    hs = [(a - c) - (b - d) for a, b, c, d in zip(lc.tolist(), lr.tolist(), rc.tolist(), rr.tolist())]

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    dpo = [-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in hs]
    ipo = [(h - 1 / (2 * beta)) ** 2 for h in hs]
    loss, stats = dpo_loss(lc, lr, rc, rr, beta=beta, label_smoothing=eps)
    assert loss.item() == pytest.approx(sum(dpo) / len(hs), abs=1e-12)
    assert ipo_loss(lc, lr, rc, rr, beta=beta)[0].item() == pytest.approx(sum(ipo) / len(hs), abs=1e-12)
    wins = [beta * (a - c) > beta * (b - d) for a, b, c, d in zip(lc.tolist(), lr.tolist(), rc.tolist(), rr.tolist())]
    assert stats.reward_accuracy.item() == pytest.approx(sum(wins) / len(hs), abs=1e-12)


def test_dpo_gradient_raises_chosen_and_leaves_reference_alone():
    """d/d logp_c of -log sigmoid(beta h) at h = 0 is -beta sigmoid(0) = -beta / 2; the reference gets none."""
    logp_c, logp_r = t(-1.0).requires_grad_(), t(-2.0).requires_grad_()
    ref_c, ref_r = t(-1.0).requires_grad_(), t(-2.0).requires_grad_()
    loss, stats = dpo_loss(logp_c, logp_r, ref_c, ref_r, beta=0.1)
    loss.backward()
    assert logp_c.grad.item() == pytest.approx(-0.05, abs=1e-12)
    assert logp_r.grad.item() == pytest.approx(0.05, abs=1e-12)
    assert ref_c.grad is None and ref_r.grad is None
    assert not stats.chosen_rewards.requires_grad


def test_dpo_bad_arguments():
    a = t(-1.0, -2.0)
    with pytest.raises(ValueError, match=r"ref_logp_rejected must have the shape of logp_chosen \(2,\), got"):
        dpo_loss(a, a, a, t(-1.0))
    with pytest.raises(ValueError, match="beta must be positive and finite, got 0"):
        dpo_loss(a, a, a, a, beta=0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        dpo_loss(a, a, a, a, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing must be >= 0"):
        dpo_loss(a, a, a, a, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"logp_chosen must have shape \(B\), got shape \(2, 1\)"):
        dpo_loss(a[:, None], a[:, None], a[:, None], a[:, None])


def test_ipo_bad_arguments():
    a = t(-1.0, -2.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        ipo_loss(a, a, a, a, beta=-0.1)
    with pytest.raises(ValueError, match=r"logp_rejected must have the shape of logp_chosen"):
        ipo_loss(a, a[:1], a, a)


@pytest.mark.parametrize("seed", range(3))
def test_label_smoothing_0_is_plain_dpo(seed):
    """eps = 0 gives exactly the default loss, and the loss of Rafailov et al. eq. 7 in float64:
    mean_i log(1 + exp(-beta h_i))."""
    lc, lr, rc, rr = random_pairs(seed)
    plain, stats = dpo_loss(lc, lr, rc, rr, beta=0.3)
    zero, zero_stats = dpo_loss(lc, lr, rc, rr, beta=0.3, label_smoothing=0.0)
    assert torch.equal(plain, zero)
    assert torch.equal(stats.chosen_rewards, zero_stats.chosen_rewards)
    hs = [(a - c) - (b - d) for a, b, c, d in zip(lc.tolist(), lr.tolist(), rc.tolist(), rr.tolist())]
    assert plain.item() == pytest.approx(sum(math.log1p(math.exp(-0.3 * h)) for h in hs) / len(hs), abs=1e-12)


def test_conservative_dpo_hand_two_pairs():
    """h = (2, -1), beta 0.5, eps 0.25: per pair 0.75 log(1 + e^(-beta h)) + 0.25 log(1 + e^(beta h)):
    pair 1: 0.75 log(1 + e^-1) + 0.25 log(1 + e) = 0.75 * 0.3132617 + 0.25 * 1.3132617 = 0.5632617;
    pair 2: 0.75 log(1 + e^0.5) + 0.25 log(1 + e^-0.5) = 0.75 * 0.9740770 + 0.25 * 0.4740770 = 0.8490770;
    mean 0.7061693. The implicit rewards are those of plain DPO (smoothing changes the loss only)."""
    lc, lr, rc, rr = t(-1.0, -4.0), t(-3.0, -2.0), t(-2.0, -3.0), t(-2.0, -2.0)  # h = (1 + 1, -1 - 0)
    loss, stats = dpo_loss(lc, lr, rc, rr, beta=0.5, label_smoothing=0.25)
    pair1 = 0.75 * math.log1p(math.exp(-1.0)) + 0.25 * math.log1p(math.exp(1.0))
    pair2 = 0.75 * math.log1p(math.exp(0.5)) + 0.25 * math.log1p(math.exp(-0.5))
    assert loss.item() == pytest.approx((pair1 + pair2) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.7061693, abs=1e-7)
    assert stats.chosen_rewards.tolist() == pytest.approx([0.5, -0.5], abs=1e-12)
    assert stats.rejected_rewards.tolist() == pytest.approx([-0.5, 0.0], abs=1e-12)
    assert stats.reward_accuracy.item() == 0.5


@pytest.mark.parametrize("loss_fn", [dpo_loss, ipo_loss], ids=["dpo", "ipo"])
def test_weights_and_the_global_denominator(loss_fn):
    """sum_i w_i l_i / sum_i w_i against a loop; unit weights give the mean; the parts of a batch, each divided
    by the whole batch's weight sum, add up to the batch's loss (the trainers' micro-batches)."""
    lc, lr, rc, rr = random_pairs(7, batch=6)
    w = t(1.0, 1 / 3, 1 / 3, 1 / 3, 0.5, 0.5)
    per_pair = [loss_fn(lc[i:i + 1], lr[i:i + 1], rc[i:i + 1], rr[i:i + 1], beta=0.2)[0].item() for i in range(6)]
    weighted, _ = loss_fn(lc, lr, rc, rr, beta=0.2, weights=w)
    want = sum(wi * li for wi, li in zip(w.tolist(), per_pair)) / w.sum().item()
    assert weighted.item() == pytest.approx(want, abs=1e-12)
    assert loss_fn(lc, lr, rc, rr, beta=0.2, weights=torch.ones(6, dtype=F64))[0].item() == pytest.approx(
        loss_fn(lc, lr, rc, rr, beta=0.2)[0].item(), abs=1e-12)
    parts = sum(loss_fn(lc[s], lr[s], rc[s], rr[s], beta=0.2, weights=w[s], denominator=w.sum())[0]
                for s in (slice(0, 1), slice(1, 4), slice(4, 6)))
    assert parts.item() == pytest.approx(weighted.item(), abs=1e-12)
    # a stand-in part of weight 0 adds nothing
    zero, _ = loss_fn(lc[:2], lr[:2], rc[:2], rr[:2], beta=0.2, weights=torch.zeros(2, dtype=F64), denominator=3.0)
    assert zero.item() == 0.0


def test_bad_weights():
    a = t(-1.0, -2.0)
    with pytest.raises(ValueError, match=r"weights must have the shape of logp_chosen \(2,\)"):
        dpo_loss(a, a, a, a, weights=t(1.0))
    with pytest.raises(ValueError, match="weights must be >= 0 with a positive sum"):
        ipo_loss(a, a, a, a, weights=t(1.0, -1.0))
    with pytest.raises(ValueError, match="weights must be >= 0 with a positive sum"):
        dpo_loss(a, a, a, a, weights=t(0.0, 0.0))
