"""TD errors and GAE against hand-computed values, a double loop, and the GAE identities
(docs/implementation-details.md, "GAE identities for lambda 1 and lambda 0")."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import discounted_returns, gae, td_errors

F64 = torch.float64


def random_rollout(seed, batch=4, length=7):
    """Rewards, values and a right-padded mask (>= 1 token per row) of random lengths."""
    g = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(2, batch, length, generator=g, dtype=F64)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    return rewards, values, torch.arange(length) < lengths[:, None]


def with_garbage(x, mask, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(mask, x, 1e6 * torch.randn(x.shape, generator=g, dtype=x.dtype))


R = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
V = torch.tensor([[0.5, 0.4, 0.6]], dtype=F64)
FULL = torch.ones(1, 3, dtype=torch.bool)


def test_td_errors_hand():
    """gamma 0.9: delta_0 = 0 + 0.9 * 0.4 - 0.5 = -0.14, delta_1 = 0 + 0.9 * 0.6 - 0.4 = 0.14,
    delta_2 = 1 + 0.9 * 0 - 0.6 = 0.4 (V = 0 after the last token)."""
    assert td_errors(R, V, FULL, gamma=0.9)[0].tolist() == pytest.approx([-0.14, 0.14, 0.4], abs=1e-12)


def test_gae_hand():
    """gamma 0.9, lam 0.5 (gamma lam = 0.45): A_2 = 0.4, A_1 = 0.14 + 0.45 * 0.4 = 0.32,
    A_0 = -0.14 + 0.45 * 0.32 = 0.004; returns A + V = (0.504, 0.72, 1.0)."""
    advantages, returns = gae(R, V, FULL, gamma=0.9, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.004, 0.32, 0.4], abs=1e-12)
    assert returns[0].tolist() == pytest.approx([0.504, 0.72, 1.0], abs=1e-12)


def test_gae_bootstraps_zero_after_each_rows_last_token():
    """Row 2 is (0, 1 | pad) with V (0.5, 0.4 | pad 9): delta_1 = 1 - 0.4 = 0.6 (V after it is 0, not 9),
    delta_0 = 0 + 0.4 - 0.5 = -0.1; with gamma = lam = 1, A = (0.5, 0.6 | 0), returns (1, 1 | 0)."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.4, 0.6], [0.5, 0.4, 9.0]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages[1].tolist() == pytest.approx([0.5, 0.6, 0.0], abs=1e-12)
    assert returns[1].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-12)
    assert advantages[0].tolist() == pytest.approx([0.5, 0.6, 0.4], abs=1e-12)


def naive_gae(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} as a double loop over rows and steps, in Python floats."""
    batch, length = rewards.shape
    adv = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        n = int(mask[b].sum())
        r, v = rewards[b].tolist()[:n], values[b].tolist()[:n] + [0.0]
        deltas = [r[i] + gamma * v[i + 1] - v[i] for i in range(n)]
        for i in range(n):
            adv[b][i] = sum((gamma * lam) ** (j - i) * deltas[j] for j in range(i, n))
    adv = torch.tensor(adv, dtype=F64)
    return adv, torch.where(mask, adv + values, 0.0)


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.0, 0.5)])
@pytest.mark.parametrize("seed", range(3))
def test_gae_against_double_loop(seed, gamma, lam):
    rewards, values, mask = random_rollout(seed)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want_adv, want_ret = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, want_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(returns, want_ret, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), gamma=st.floats(0, 1))
def test_gae_identities_s4(seed, gamma):
    """lam = 1: A_t = G_t - V_t (returns = reward-to-go, whatever V is); lam = 0: A_t = delta_t
    (docs/implementation-details.md, "GAE identities for lambda 1 and lambda 0")."""
    rewards, values, mask = random_rollout(seed)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    to_go = discounted_returns(rewards, mask, gamma=gamma)
    torch.testing.assert_close(advantages, torch.where(mask, to_go - values, 0.0), rtol=0, atol=1e-9)
    torch.testing.assert_close(returns, to_go, rtol=0, atol=1e-9)
    advantages0, returns0 = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    torch.testing.assert_close(advantages0, td_errors(rewards, values, mask, gamma=gamma), rtol=0, atol=1e-12)


def test_gae_terminal_only_reward_s4():
    """Reward s on the last token only (beta = 0), gamma = lam = 1: A_t = s - V_t
    (docs/implementation-details.md, "GAE identities for lambda 1 and lambda 0")."""
    rewards, values, mask = random_rollout(0)
    last = mask.long().cumsum(1) == mask.sum(1, keepdim=True)  # True from each row's last token on
    terminal = torch.where(last & mask, 2.5, 0.0).to(F64)
    advantages, _ = gae(terminal, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.where(mask, 2.5 - values, 0.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_padding_never_changes_gae_or_td(seed):
    rewards, values, mask = random_rollout(seed)
    dirty_r, dirty_v = with_garbage(rewards, mask, seed), with_garbage(values, mask, seed + 1)
    for got, want in zip(gae(dirty_r, dirty_v, mask), gae(rewards, values, mask)):
        assert torch.equal(got, want)
        assert got[~mask].eq(0).all()
    assert torch.equal(td_errors(dirty_r, dirty_v, mask), td_errors(rewards, values, mask))


def test_td_errors_bad_arguments():
    with pytest.raises(ValueError, match=r"values must have the shape of rewards \(1, 3\), got values \(1, 2\)"):
        td_errors(R, V[:, :2], FULL)
    with pytest.raises(ValueError, match=r"mask must be a torch.bool.*mask.bool\(\)"):
        td_errors(R, V, FULL.long())
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got -0.1"):
        td_errors(R, V, FULL, gamma=-0.1)
    with pytest.raises(ValueError, match=r"rewards must have shape \(B, T\)"):
        td_errors(R[0], V[0], FULL[0])


def test_gae_bad_arguments():
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got 1.5"):
        gae(R, V, FULL, lam=1.5)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 2"):
        gae(R, V, FULL, gamma=2)
    with pytest.raises(ValueError, match=r"mask must have the shape of rewards \(1, 3\), got \(1, 2\)"):
        gae(R, V, FULL[:, :2])
    with pytest.raises(ValueError, match=r"mask must be a torch.bool"):
        gae(R, V, FULL.float())
