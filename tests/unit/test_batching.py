"""Length-grouped batches: every item once per pass, little padding, a seeded random order."""

from __future__ import annotations

import random

from rlhfkit.data.batching import LengthGroupedBatches


def padding(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_each_pass_is_a_permutation_in_batches() -> None:
    lengths = [random.Random(0).randint(5, 60) for _ in range(1000)]
    sampler = LengthGroupedBatches(lengths, batch_size=32, seed=1, group=8)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(1 <= len(b) <= 32 for b in batches) and len(batches) == len(sampler) == 32
    assert first != second  # a new order each pass


def test_grouping_cuts_padding_against_plain_shuffling() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(1000)]
    grouped = list(LengthGroupedBatches(lengths, batch_size=32, seed=1))
    order = list(range(1000))
    rng.shuffle(order)
    plain = [order[i:i + 32] for i in range(0, 1000, 32)]
    assert padding(grouped, lengths) < 0.25 * padding(plain, lengths)


def test_same_seed_same_batches() -> None:
    lengths = list(range(100))
    assert list(LengthGroupedBatches(lengths, 8, seed=3)) == list(LengthGroupedBatches(lengths, 8, seed=3))
