"""Parts of a batch add up to the whole: the property that makes 1 and N processes (and 1 and K
micro-batches) optimise the same loss. Checked in float64 against the whole batch's value."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.algos.masked import AGGREGATE_MODES, aggregate, aggregate_denominator
from rlhfkit.algos.pg import reinforce_loss
from rlhfkit.algos.ppo import ppo_loss
from rlhfkit.algos.reward import bradley_terry_loss, reward_centering_penalty


def ragged(batch: int = 8, length: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([1, 6, 2, 5, 3, 6, 6, 4])[:batch]  # stopped at EOS: 14 and 19 tokens per half
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return values, mask


@pytest.mark.parametrize("mode", AGGREGATE_MODES)
@pytest.mark.parametrize("split", [[4, 4], [1] * 8, [3, 5], [2, 2, 4]])
def test_parts_with_the_global_denominator_add_up_to_the_whole(mode: str, split: list[int]) -> None:
    values, mask = ragged()
    whole = aggregate(values, mask, mode, constant=6.0)
    denominator = aggregate_denominator(mask, mode)
    parts = [aggregate(v, m, mode, constant=6.0, denominator=denominator)
             for v, m in zip(values.split(split), mask.split(split))]
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-12)


def test_by_hand_token_mean_of_a_ragged_batch() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # 4 tokens in all: (1 + 2 + 3 + 10) / 4 = 4; the second row's half is 10 / 4 = 2.5
    assert float(aggregate(values, mask)) == 4.0
    assert float(aggregate(values[1:], mask[1:], denominator=aggregate_denominator(mask))) == 2.5
    # what a per-process mean averaged over two processes gives instead: (2 + 10) / 2 = 6
    per_process = (aggregate(values[:1], mask[:1]) + aggregate(values[1:], mask[1:])) / 2
    assert float(per_process) == 6.0


def test_per_process_means_differ_from_the_global_mean_on_ragged_batches() -> None:
    """The size of the fault the global denominator removes: far above float rounding."""
    values, mask = ragged()
    whole = float(aggregate(values, mask, "token"))
    per_process = float(sum(aggregate(v, m, "token") for v, m in zip(values.split(4), mask.split(4)))) / 2
    assert abs(per_process - whole) > 1e-3 * max(abs(whole), 1e-3)


@pytest.mark.parametrize("split", [[3, 3], [1] * 6, [2, 4]])
def test_ppo_and_reinforce_losses_add_up_over_parts(split: list[int]) -> None:
    gen = torch.Generator().manual_seed(1)
    b, t = 6, 5
    mask = torch.arange(t)[None, :] < torch.tensor([5, 1, 3, 4, 2, 5])[:, None]
    logp, old_logp, adv, values, old_values, returns, entropy = (
        torch.randn(b, t, generator=gen, dtype=torch.float64) for _ in range(7))
    whole = ppo_loss(logp, old_logp, adv, values, old_values, returns, entropy, mask, ent_coef=0.01)
    denominator = aggregate_denominator(mask)
    parts = [ppo_loss(*(x.split(split)[i] for x in (logp, old_logp, adv, values, old_values, returns, entropy)),
                      mask.split(split)[i], ent_coef=0.01, denominator=denominator) for i in range(len(split))]
    for field in ("total", "policy", "value", "entropy"):
        assert float(sum(getattr(p, field) for p in parts)) == pytest.approx(float(getattr(whole, field)), rel=1e-12)
    seq = aggregate_denominator(mask, "sequence_sum")
    rl_parts = [reinforce_loss(lp, m, a[:, 0], mode="sequence_sum", denominator=seq)
                for lp, m, a in zip(logp.split(split), mask.split(split), adv.split(split))]
    assert float(sum(rl_parts)) == pytest.approx(float(reinforce_loss(logp, mask, adv[:, 0], mode="sequence_sum")),
                                                 rel=1e-12)


def test_weighted_bradley_terry_parts_add_up_and_a_zero_weight_stand_in_adds_nothing() -> None:
    gen = torch.Generator().manual_seed(2)
    r_c, r_r = torch.randn(7, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)
    weights = torch.tensor([1 / 6] * 6 + [1.0], dtype=torch.float64)  # a ranked list of 4 and a plain pair
    whole = bradley_terry_loss(r_c, r_r, weights=weights)
    by_hand = sum(w * torch.log1p(torch.exp(-(c - r))) for c, r, w in zip(r_c, r_r, weights)) / weights.sum()
    assert float(whole) == pytest.approx(float(by_hand), rel=1e-12)
    total = weights.sum()
    parts = bradley_terry_loss(r_c[:4], r_r[:4], weights=weights[:4], denominator=total) + bradley_terry_loss(
        r_c[4:], r_r[4:], weights=weights[4:], denominator=total)
    assert float(parts) == pytest.approx(float(whole), rel=1e-12)
    stand_in = bradley_terry_loss(r_c[:1], r_r[:1], weights=torch.zeros(1, dtype=torch.float64), denominator=total)
    assert float(stand_in) == 0.0
    centred = reward_centering_penalty(r_c[:3], r_r[:3], denominator=7) + reward_centering_penalty(
        r_c[3:], r_r[3:], denominator=7)
    assert float(centred) == pytest.approx(float(((r_c + r_r) ** 2).mean()), rel=1e-12)
