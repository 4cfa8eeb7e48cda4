"""The listwise (Plackett-Luce) reward-model loss against brute-force enumeration and hand values."""

import itertools
import math
import random

import pytest
import torch

from rlhfkit.algos import bradley_terry_loss, value_checks
from rlhfkit.algos.reward import plackett_luce_loss

F64 = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=F64)


def lse(*xs: float) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def pl_probability(rewards: list[float], order: tuple[int, ...]) -> float:
    """P(order) = prod_j exp(r_order[j]) / sum_{l >= j} exp(r_order[l]), in plain Python floats."""
    p = 1.0
    for j, item in enumerate(order):
        p *= math.exp(rewards[item]) / sum(math.exp(rewards[other]) for other in order[j:])
    return p


def ranks_of(order: tuple[int, ...]) -> list[int]:
    """order = item indices best first -> the rank of each item."""
    ranks = [0] * len(order)
    for rank, item in enumerate(order):
        ranks[item] = rank
    return ranks


@pytest.mark.parametrize("k", [3, 4, 5])
def test_plackett_luce_against_enumeration_of_all_orders(k):
    """The K! orders' probabilities sum to 1, and the loss of each order is -log of its probability."""
    rng = random.Random(k)
    rewards = [rng.uniform(-3, 3) for _ in range(k)]
    orders = list(itertools.permutations(range(k)))
    assert sum(pl_probability(rewards, o) for o in orders) == pytest.approx(1.0, abs=1e-12)
    r = torch.tensor([rewards] * len(orders), dtype=F64)  # one group per order
    ranks = torch.tensor([ranks_of(o) for o in orders])
    per_order = [plackett_luce_loss(r[i:i + 1], ranks[i:i + 1]).item() for i in range(len(orders))]
    assert per_order == pytest.approx([-math.log(pl_probability(rewards, o)) for o in orders], abs=1e-12)
    # the batched loss is the mean over groups
    assert plackett_luce_loss(r, ranks).item() == pytest.approx(sum(per_order) / len(orders), abs=1e-12)


def test_plackett_luce_gradient_matches_the_enumerated_likelihood():
    """Autograd of the loss equals autograd of -log prod_j softmax written out term by term."""
    rewards = t([0.3, -1.2, 2.0, 0.5])
    ranks = torch.tensor([[2, 0, 3, 1]])
    order = (1, 3, 0, 2)
    a = rewards.clone().requires_grad_(True)
    plackett_luce_loss(a, ranks).backward()
    b = rewards.clone().requires_grad_(True)
    naive = -sum(b[0, item] - torch.log(torch.exp(b[0, list(order[j:])]).sum()) for j, item in enumerate(order))
    naive.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_plackett_luce_hand():
    """Ranks [0, 1, 2] and rewards [2, 1, 0]: -(2 - log(e^2 + e + 1)) - (1 - log(e + 1)) = 0.7208677."""
    expected = -(2 - math.log(math.e**2 + math.e + 1)) - (1 - math.log(math.e + 1))
    got = plackett_luce_loss(t([2.0, 1.0, 0.0]), torch.tensor([[0, 1, 2]])).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.7208677, abs=1e-7)


def test_k2_is_bradley_terry():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(64, 2, generator=gen, dtype=F64) * 4
    flipped = torch.rand(64, generator=gen) < 0.5  # the better completion sometimes comes second
    ranks = torch.stack([flipped.long(), (~flipped).long()], dim=1)
    better = torch.where(flipped, r[:, 1], r[:, 0])
    worse = torch.where(flipped, r[:, 0], r[:, 1])
    assert abs(plackett_luce_loss(r, ranks).item() - bradley_terry_loss(better, worse).item()) < 1e-12
    w = torch.rand(64, generator=gen, dtype=F64)
    got = plackett_luce_loss(r, ranks, weights=w, denominator=40.0).item()
    assert abs(got - bradley_terry_loss(better, worse, weights=w, denominator=40.0).item()) < 1e-12
    # and the gradients agree
    a, b = r.clone().requires_grad_(True), r.clone().requires_grad_(True)
    plackett_luce_loss(a, ranks).backward()
    bradley_terry_loss(torch.where(flipped, b[:, 1], b[:, 0]), torch.where(flipped, b[:, 0], b[:, 1])).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_equal_rewards_give_log_k_factorial():
    """Equal rewards make every order equally likely: -log(1 / K!) per group."""
    assert plackett_luce_loss(torch.zeros(1, 4, dtype=F64), torch.tensor([[3, 1, 0, 2]])).item() == pytest.approx(
        math.log(24), abs=1e-12)


def test_adding_a_constant_to_a_group_changes_nothing():
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(6, 5, generator=gen, dtype=F64)
    ranks = torch.stack([torch.randperm(5, generator=gen) for _ in range(6)])
    ranks[2, 3] = ranks[2, 1]  # a tie
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[4, 3:] = False
    shifted = r + torch.tensor([[-50.0], [3.0], [0.5], [1e3], [-7.0], [20.0]], dtype=F64)
    assert plackett_luce_loss(shifted, ranks, mask).item() == pytest.approx(plackett_luce_loss(r, ranks, mask).item(),
                                                                           abs=1e-10)


def test_ties_hand():
    """The tie rule: each member of a tied block is drawn from itself and what ranks strictly below.

    ranks [0, 1, 1, 2], rewards [1, 2, -1, 0.5]:
      item 0: 1 - log(e^1 + e^2 + e^-1 + e^0.5)   (everything is below it)
      item 1: 2 - log(e^2 + e^0.5)                 (item 2 ties with it, so only item 3 competes)
      item 2: -1 - log(e^-1 + e^0.5)
      item 3: 0                                    (the worst block)
    """
    r, ranks = [1.0, 2.0, -1.0, 0.5], [0, 1, 1, 2]
    expected = -((1 - lse(1, 2, -1, 0.5)) + (2 - lse(2, 0.5)) + (-1 - lse(-1, 0.5)))
    got = plackett_luce_loss(t(r), torch.tensor([ranks])).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_tied_block_above_one_completion_is_the_sum_of_its_pairs():
    """ranks [0, 0, 1]: no comparison between the tied pair, so the loss is the two pairs' Bradley-Terry terms."""
    r = t([0.7, -0.4, 0.1])
    got = plackett_luce_loss(r, torch.tensor([[0, 0, 1]])).item()
    pairs = bradley_terry_loss(r[0, :2], r[0, 2:].expand(2)).item() * 2  # mean of 2 pairs, times 2
    assert got == pytest.approx(pairs, abs=1e-12)


def test_tied_bottom_block_is_the_top_choice_only():
    """ranks [0, 1, 1]: only the best one is chosen, from all three: -(r_0 - log sum exp r)."""
    r = t([0.2, 1.5, -0.3])
    assert plackett_luce_loss(r, torch.tensor([[0, 1, 1]])).item() == pytest.approx(-(0.2 - lse(0.2, 1.5, -0.3)),
                                                                                     abs=1e-12)


def test_all_tied_group_adds_nothing_and_is_not_counted():
    r = t([0.3, -2.0, 1.0], [1.0, 0.0, 5.0])
    ranks = torch.tensor([[0, 1, 2], [1, 1, 1]])
    alone = plackett_luce_loss(r[:1], ranks[:1]).item()
    assert plackett_luce_loss(r, ranks).item() == pytest.approx(alone, abs=1e-12)  # the mean is over one group
    assert plackett_luce_loss(r[1:], ranks[1:]).item() == 0.0  # nothing to compare: 0, not NaN


def test_ragged_groups_equal_separate_computations():
    """Groups of 2, 3 and 5 completions padded to 5 (garbage under the mask) give the mean of each alone."""
    gen = torch.Generator().manual_seed(2)
    sizes = [2, 5, 3]
    groups = [torch.randn(1, k, generator=gen, dtype=F64) for k in sizes]
    group_ranks = [torch.randperm(k, generator=gen)[None] for k in sizes]
    group_ranks[1][0, 4] = group_ranks[1][0, 0]  # a tie in the K = 5 group
    r = torch.full((3, 5), math.inf, dtype=F64)
    ranks = torch.full((3, 5), -1, dtype=torch.long)  # padding ranks "better" than all, to catch a leak
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for g, k in enumerate(sizes):
        r[g, :k], ranks[g, :k], mask[g, :k] = groups[g][0], group_ranks[g][0], True
    r[0, 3] = math.nan
    separate = sum(plackett_luce_loss(x, rk).item() for x, rk in zip(groups, group_ranks)) / 3
    leaf = r.clone().requires_grad_(True)
    loss = plackett_luce_loss(leaf, ranks, mask)
    assert loss.item() == pytest.approx(separate, abs=1e-12)
    loss.backward()
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[~mask] == 0).all()


def test_denominator_parts_add_up():
    """Parts of a batch, each divided by the whole batch's group count, add up to the whole batch's loss
    and gradient (micro-batches, or the shares of several processes)."""
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(7, 4, generator=gen, dtype=F64)
    ranks = torch.randint(0, 3, (7, 4), generator=gen)
    ranks[:, 0] = 3  # at least two distinct ranks per group
    mask = torch.rand(7, 4, generator=gen) > 0.2
    mask[:, :2] = True
    w = torch.tensor([1, 1, 1, 0, 1, 1, 1], dtype=F64)  # group 3: a weight-0 stand-in
    whole_leaf = r.clone().requires_grad_(True)
    whole = plackett_luce_loss(whole_leaf, ranks, mask, weights=w)
    whole.backward()
    leaf = r.clone().requires_grad_(True)
    total = 0.0
    for part in ([0, 1, 2], [3], [4, 5, 6]):
        loss = plackett_luce_loss(leaf[part], ranks[part], mask[part], weights=w[part], denominator=w.sum())
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(whole.item(), abs=1e-12)
    torch.testing.assert_close(leaf.grad, whole_leaf.grad, rtol=0, atol=1e-12)


def test_weights_give_a_weighted_mean():
    r = t([1.0, 0.0, -1.0], [0.0, 2.0, 0.5])
    ranks = torch.tensor([[0, 1, 2], [0, 1, 2]])
    a, b = plackett_luce_loss(r[:1], ranks[:1]).item(), plackett_luce_loss(r[1:], ranks[1:]).item()
    got = plackett_luce_loss(r, ranks, weights=torch.tensor([3.0, 1.0], dtype=F64)).item()
    assert got == pytest.approx((3 * a + b) / 4, abs=1e-12)


def test_large_rewards_stay_finite():
    """Rewards of 1e4: a naive exp overflows; logsumexp keeps the loss and its gradient finite and right."""
    leaf = t([1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]).requires_grad_(True)
    ranks = torch.tensor([[0, 1, 2], [0, 1, 2]])
    loss = plackett_luce_loss(leaf, ranks)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()
    # group 0 is ranked as its rewards say (loss ~ 0); group 1's first place has reward 2e4 below the best
    assert loss.item() == pytest.approx((0.0 + 2e4) / 2, rel=1e-12)
    assert leaf.grad[0].abs().max() < 1e-12
    # d l / d r_i = -[i chosen] + sum of its softmax shares: -1 for the first place, +1 for the one that should
    # have won, halved by the mean over 2 groups
    assert leaf.grad[1].tolist() == pytest.approx([-0.5, 0.5, 0.0], abs=1e-12)
    big = plackett_luce_loss(torch.tensor([[1e4, 0.0, -1e4]]), torch.tensor([[2, 1, 0]]))  # float32 too
    assert torch.isfinite(big)


def test_wrong_input_raises():
    r, ranks = torch.zeros(2, 3), torch.tensor([[0, 1, 2], [2, 1, 0]])
    with pytest.raises(ValueError, match="rewards must have shape"):
        plackett_luce_loss(torch.zeros(3), ranks[0])
    with pytest.raises(ValueError, match="ranks must have the shape of rewards"):
        plackett_luce_loss(r, ranks[:, :2])
    with pytest.raises(ValueError, match="ranks must be an integer tensor"):
        plackett_luce_loss(r, ranks.float())
    with pytest.raises(ValueError, match="mask must be a torch.bool"):
        plackett_luce_loss(r, ranks, torch.ones(2, 3))
    with pytest.raises(ValueError, match="weights must have the shape"):
        plackett_luce_loss(r, ranks, weights=torch.ones(3))
    with value_checks(), pytest.raises(ValueError, match="weights must be >= 0"):
        plackett_luce_loss(r, ranks, weights=torch.tensor([1.0, -1.0]))
