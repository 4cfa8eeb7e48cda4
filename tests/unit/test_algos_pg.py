"""Policy gradient: returns, the REINFORCE loss and its baselines (moving mean, RLOO, GRPO)."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    baseline_advantages,
    discounted_returns,
    grpo_advantages,
    moving_mean_update,
    reinforce_loss,
    rloo_advantages,
)

F64 = torch.float64


def t(*values):
    return torch.tensor(values, dtype=F64)


def random_batch(seed, batch=4, length=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=g, dtype=F64)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    return x, torch.arange(length) < lengths[:, None]


def with_garbage(x, mask, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(mask, x, 1e6 * torch.randn(x.shape, generator=g, dtype=x.dtype))


# --- discounted returns --------------------------------------------------------------------------


def test_discounted_returns_hand():
    """r = (1, 2, 3 | pad 9), gamma 0.5: G_2 = 3, G_1 = 2 + 0.5 * 3 = 3.5, G_0 = 1 + 0.5 * 3.5 = 2.75."""
    rewards = t(1, 2, 3, 9)[None]
    mask = torch.tensor([[True, True, True, False]])
    assert discounted_returns(rewards, mask, gamma=0.5)[0].tolist() == [2.75, 3.5, 3.0, 0.0]
    assert discounted_returns(rewards, mask)[0].tolist() == [6.0, 5.0, 3.0, 0.0]


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("seed", range(3))
def test_discounted_returns_against_double_loop(seed, gamma):
    rewards, mask = random_batch(seed)
    got = discounted_returns(rewards, mask, gamma=gamma)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        for i in range(rewards.shape[1]):
            want = sum(gamma ** (j - i) * rewards[b, j].item() for j in range(i, n)) if i < n else 0.0
            assert got[b, i].item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_discounted_returns_ignore_padding(seed):
    rewards, mask = random_batch(seed)
    dirty = with_garbage(rewards, mask, seed)
    assert torch.equal(discounted_returns(dirty, mask, 0.9), discounted_returns(rewards, mask, 0.9))


def test_discounted_returns_bad_arguments():
    rewards, mask = random_batch(0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        discounted_returns(rewards, mask, gamma=1.5)
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        discounted_returns(rewards, mask.long())
    with pytest.raises(ValueError, match=r"mask must have the shape of rewards \(4, 6\)"):
        discounted_returns(rewards, mask[:, 1:])


# --- REINFORCE loss ------------------------------------------------------------------------------

LOGP = t(-1.0, -2.0, -0.5, 9.0).reshape(2, 2)
MASK = torch.tensor([[True, True], [True, False]])
ADV = t(2.0, -1.0)


def test_reinforce_loss_hand():
    """logp (-1, -2 | -0.5, pad), A = (2, -1): products (-2, -4 | 0.5).

    sequence_sum: -((-2 - 4) + 0.5) / 2 = 2.75; sequence: -((-3) + 0.5) / 2 = 1.25;
    token: -(-2 - 4 + 0.5) / 3 = 5.5 / 3; constant 4: -(-5.5) / (2 * 4) = 0.6875.
    """
    assert reinforce_loss(LOGP, MASK, ADV, mode="sequence_sum").item() == pytest.approx(2.75, abs=1e-12)
    assert reinforce_loss(LOGP, MASK, ADV, mode="sequence").item() == pytest.approx(1.25, abs=1e-12)
    assert reinforce_loss(LOGP, MASK, ADV, mode="token").item() == pytest.approx(5.5 / 3, abs=1e-12)
    assert reinforce_loss(LOGP, MASK, ADV, mode="constant", constant=4).item() == pytest.approx(0.6875, abs=1e-12)


def test_reinforce_loss_per_token_advantages():
    """(B, T) advantages (1, 3 | 2, pad): token mode -(-1 - 6 - 1) / 3 = 8/3."""
    adv = t(1.0, 3.0, 2.0, 77.0).reshape(2, 2)
    assert reinforce_loss(LOGP, MASK, adv, mode="token").item() == pytest.approx(8 / 3, abs=1e-12)


def test_reinforce_gradient_is_the_textbook_estimator():
    """grad J = (1/N) sum_i sum_t grad log pi(a_i,t | s_i,t) R_i; the loss gradient is its negative.

    A softmax policy over 4 actions with per-step logits theta (T, 4): grad_theta log pi(a) =
    onehot(a) - pi, summed by hand over the trajectories.
    """
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)  # (T, V) shared by all rows
    actions = torch.tensor([[0, 1, 2], [3, 3, 0], [1, 2, 1]])  # (B, T)
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    returns = t(1.5, -0.5, 2.0)
    logp = torch.log_softmax(theta, -1).expand(3, 3, 4).gather(-1, actions[..., None]).squeeze(-1)
    reinforce_loss(logp, mask, returns, mode="sequence_sum").backward()
    probs = torch.softmax(theta.detach(), -1)
    grad_j = torch.zeros(3, 4, dtype=F64)
    for i in range(3):
        for step in range(int(mask[i].sum())):
            grad_j[step] += returns[i] * (torch.nn.functional.one_hot(actions[i, step], 4) - probs[step])
    torch.testing.assert_close(theta.grad, -grad_j / 3, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_loss_against_loop_and_padding(seed):
    logp, mask = random_batch(seed)
    adv = torch.randn(4, dtype=F64, generator=torch.Generator().manual_seed(seed))
    terms = [[-logp[b, i].item() * adv[b].item() for i in range(6) if mask[b, i]] for b in range(4)]
    assert reinforce_loss(logp, mask, adv, mode="sequence_sum").item() == pytest.approx(
        sum(map(sum, terms)) / 4, abs=1e-12
    )
    assert reinforce_loss(logp, mask, adv).item() == pytest.approx(sum(sum(r) / len(r) for r in terms) / 4, abs=1e-12)
    dirty = with_garbage(logp, mask, seed)
    for mode in ("token", "sequence", "sequence_sum"):
        assert torch.equal(reinforce_loss(dirty, mask, adv, mode), reinforce_loss(logp, mask, adv, mode))


def test_reinforce_loss_does_not_train_the_baseline():
    logp = LOGP.clone().requires_grad_()
    adv = ADV.clone().requires_grad_()
    reinforce_loss(logp, MASK, adv).backward()
    assert adv.grad is None and logp.grad is not None


def test_reinforce_loss_bad_arguments():
    with pytest.raises(ValueError, match=r"advantages must have shape \(B,\) = \(2,\) or \(B, T\) = .*got \(3,\)"):
        reinforce_loss(LOGP, MASK, t(1, 2, 3))
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        reinforce_loss(LOGP, MASK.float(), ADV)
    with pytest.raises(ValueError, match="mode must be one of"):
        reinforce_loss(LOGP, MASK, ADV, mode="mean")
    with pytest.raises(ValueError, match=r"logp must have shape \(B, T\)"):
        reinforce_loss(LOGP.flatten(), MASK.flatten(), ADV)


# --- baselines -----------------------------------------------------------------------------------


def test_baseline_advantages_hand():
    """R = (3, 5), b = 2: (1, 3); a per-sample baseline (1, 6): (2, -1)."""
    assert baseline_advantages(t(3, 5), 2.0).tolist() == [1.0, 3.0]
    assert baseline_advantages(t(3, 5), t(1, 6)).tolist() == [2.0, -1.0]
    assert baseline_advantages(t(3, 5), torch.tensor(2.0, dtype=F64)).tolist() == [1.0, 3.0]


def test_baseline_keeps_the_gradient_unbiased():
    """sum_a pi(a) grad log pi(a) = 0, so an exact expectation of grad log pi * b is 0 for any b."""
    theta = torch.tensor([0.3, -1.0, 2.0], dtype=F64, requires_grad=True)
    rewards = t(1.0, 4.0, -2.0)
    expected = {}
    for b in (0.0, 5.0):
        logp_all = torch.log_softmax(theta, -1)
        adv = baseline_advantages(rewards, b)
        (grad,) = torch.autograd.grad((logp_all.exp().detach() * logp_all * adv).sum(), theta)
        expected[b] = grad
    torch.testing.assert_close(expected[0.0], expected[5.0], rtol=0, atol=1e-12)


def test_baseline_advantages_bad_arguments():
    with pytest.raises(ValueError, match=r"baseline must have the shape of rewards \(2,\), got baseline \(3,\)"):
        baseline_advantages(t(3, 5), t(1, 2, 3))
    with pytest.raises(ValueError, match="baseline must be a number or a tensor"):
        baseline_advantages(t(3, 5), "mean")


def test_moving_mean_update_hand():
    """First value initialises: 4; then 0.9 * 4 + 0.1 * 14 = 5."""
    mean = moving_mean_update(None, 4.0, decay=0.9)
    assert mean == 4.0
    assert moving_mean_update(mean, 14.0, decay=0.9) == pytest.approx(5.0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-100, 100), min_size=1, max_size=10), decay=st.floats(0, 1))
def test_moving_mean_closed_form(values, decay):
    """m_n = d^(n-1) v_1 + (1 - d) sum_{k=2..n} d^(n-k) v_k."""
    mean = None
    for v in values:
        mean = moving_mean_update(mean, v, decay)
    n = len(values)
    want = decay ** (n - 1) * values[0] + (1 - decay) * sum(decay ** (n - k) * values[k - 1] for k in range(2, n + 1))
    assert mean == pytest.approx(want, abs=1e-9)


def test_moving_mean_update_tensors_and_bad_arguments():
    assert moving_mean_update(torch.tensor(1.0, dtype=F64), torch.tensor(3.0, dtype=F64), 0.5).item() == 2.0
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1.5"):
        moving_mean_update(1.0, 2.0, decay=1.5)


# --- RLOO and GRPO -------------------------------------------------------------------------------


def test_rloo_hand_s11():
    """R = (1, 2, 3, 6), k = 4: A_1 = 1 - (2 + 3 + 6)/3 = -8/3, A_2 = 2 - 10/3 = -4/3, A_3 = 3 - 3 = 0,
    A_4 = 6 - 2 = 4. Second group (0, 0, 4, 4): -8/3, -8/3, 4 - 4/3 = 8/3, 8/3
    (docs/implementation-details.md, "RLOO advantages")."""
    got = rloo_advantages(t(1, 2, 3, 6, 0, 0, 4, 4), group_size=4)
    assert got.tolist() == pytest.approx([-8 / 3, -4 / 3, 0, 4, -8 / 3, -8 / 3, 8 / 3, 8 / 3], abs=1e-12)
    assert rloo_advantages(t(5, 5, 5, 5), 2).tolist() == [0.0] * 4


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 5), groups=st.integers(1, 4))
def test_rloo_against_leave_one_out_loop(seed, k, groups):
    """A_i = R_i - mean of the others = k/(k-1) (R_i - group mean); sums to 0 per group."""
    rewards = torch.randn(k * groups, dtype=F64, generator=torch.Generator().manual_seed(seed))
    got = rloo_advantages(rewards, k)
    r = rewards.tolist()
    for g in range(groups):
        group = r[g * k : (g + 1) * k]
        for i, ri in enumerate(group):
            others = group[:i] + group[i + 1 :]
            assert got[g * k + i].item() == pytest.approx(ri - sum(others) / (k - 1), abs=1e-12)
            assert got[g * k + i].item() == pytest.approx(k / (k - 1) * (ri - sum(group) / k), abs=1e-12)
        assert abs(sum(got[g * k : (g + 1) * k].tolist())) < 1e-12


def test_rloo_bad_arguments():
    with pytest.raises(ValueError, match=r"group_size 3 must divide the batch: rewards has 4 entries"):
        rloo_advantages(t(1, 2, 3, 4), 3)
    with pytest.raises(ValueError, match="group_size must be an int >= 2, got 1"):
        rloo_advantages(t(1, 2, 3, 4), 1)
    with pytest.raises(ValueError, match=r"rewards must have shape \(B\)"):
        rloo_advantages(t(1, 2, 3, 4)[None], 2)


def test_grpo_hand_s12():
    """R = (1, 2, 3, 6): mean 3, unbiased var (4 + 1 + 0 + 9) / 3 = 14/3, so
    A = (R - 3) / (sqrt(14/3) + 1e-4) = (-0.92578, -0.46289, 0, 1.38867), sum A^2 = 14 / (sqrt(14/3) + 1e-4)^2
    (docs/implementation-details.md, "GRPO advantages")."""
    got = grpo_advantages(t(1, 2, 3, 6), group_size=4)
    denom = math.sqrt(14 / 3) + 1e-4
    assert got.tolist() == pytest.approx([-2 / denom, -1 / denom, 0.0, 3 / denom], abs=1e-12)
    assert got.tolist() == pytest.approx([-0.92578, -0.46289, 0.0, 1.38867], abs=5e-6)
    assert (got**2).sum().item() == pytest.approx(2.99972, abs=5e-6)
    assert (got**2).sum().item() == pytest.approx(14 / denom**2, abs=1e-12)


def test_grpo_equal_rewards_give_zero_not_nan():
    got = grpo_advantages(t(2, 2, 2, 2), 4)
    assert torch.equal(got, torch.zeros(4, dtype=F64))


def test_grpo_scales_hand():
    """R = (1, 3 | 0, 4), G = 2: centred (-1, 1 | -2, 2). "none" keeps that; "group" divides by the group
    std (sqrt 2 and sqrt 8) + 1e-4; "batch" by the std of all four, sqrt(((1-2)^2+1+4+4)/3) = sqrt(10/3)."""
    r = t(1, 3, 0, 4)
    assert grpo_advantages(r, 2, scale="none").tolist() == [-1.0, 1.0, -2.0, 2.0]
    s2, s8, sb = math.sqrt(2) + 1e-4, math.sqrt(8) + 1e-4, math.sqrt(10 / 3) + 1e-4
    assert grpo_advantages(r, 2).tolist() == pytest.approx([-1 / s2, 1 / s2, -2 / s8, 2 / s8], abs=1e-12)
    assert grpo_advantages(r, 2, scale="batch").tolist() == pytest.approx([-1 / sb, 1 / sb, -2 / sb, 2 / sb], abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), g=st.integers(2, 6), groups=st.integers(1, 4))
def test_grpo_against_statistics_loop(seed, g, groups):
    rewards = torch.randn(g * groups, dtype=F64, generator=torch.Generator().manual_seed(seed))
    got = grpo_advantages(rewards, g)
    r = rewards.tolist()
    for j in range(groups):
        group = r[j * g : (j + 1) * g]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        want = [(x - mean) / (std + 1e-4) for x in group]
        assert got[j * g : (j + 1) * g].tolist() == pytest.approx(want, abs=1e-9)
        assert abs(sum(want)) < 1e-9


def test_grpo_bad_arguments():
    with pytest.raises(ValueError, match="group_size 4 must divide the batch: rewards has 6 entries"):
        grpo_advantages(t(1, 2, 3, 4, 5, 6), 4)
    with pytest.raises(ValueError, match="scale must be one of 'group', 'batch', 'none'; got 'std'"):
        grpo_advantages(t(1, 2), 2, scale="std")
    with pytest.raises(ValueError, match="eps must be positive"):
        grpo_advantages(t(1, 2), 2, eps=0.0)
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        grpo_advantages(t(1, 2), 2.0)
