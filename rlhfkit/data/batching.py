"""Length-grouped batches: fewer padding tokens, still a random order.

Each pass shuffles the items, cuts the order into groups of `group` batches, sorts every group
by length and cuts it into batches, then shuffles the batches. Batches hold items of similar
length (little padding) while the epoch stays a random pass over the data (the approach of
HF's LengthGroupedSampler).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from rlhfkit import seeds


class LengthGroupedBatches:
    """A batch sampler over items of the given lengths; pass n is seeded by (seed, n)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.passes = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        gen = seeds.generator(self.seed, seeds.PAIR_PASS, self.passes)
        self.passes += 1
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[b]


class ShuffledBatches:
    """Batches of a fresh random order of the items each pass; pass n is seeded by (seed, n)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.passes = 0

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        gen = seeds.generator(self.seed, seeds.PAIR_PASS, self.passes)
        self.passes += 1
        order = torch.randperm(self.n, generator=gen).tolist()
        for start in range(0, self.n, self.batch_size):
            yield order[start:start + self.batch_size]


def process_share(rows: Sequence[int], rank: int, world: int) -> tuple[list[int], bool]:
    """Rows rank, rank + N, ... of a global batch, and whether they are real.

    A process whose share is empty (a last batch smaller than the number of processes) gets the
    batch's first row back with `real = False`: it must still run a forward and backward for the
    gradient all-reduce, and the caller gives that row weight 0.
    """
    own = list(rows[rank::world])
    return (own, True) if own else (list(rows[:1]), False)
