"""Split a global rollout batch over processes and gather it back, so N processes do 1 process's math.

Each process samples and scores only the episodes it trains on in the first epoch; then every
process gathers the whole batch in global order and computes rewards, advantages and whitening
on all of it, exactly as a single process would. Minibatches are global too: process r trains on
rows r, r + N, r + 2N, ... of each global minibatch. Every loss divides by the token (or
sequence) count of the whole global minibatch, which each process knows from the gathered batch,
so the N processes' gradients add up to the one-process gradient (DDP averages, so each process
scales its loss by N).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from rlhfkit.rollout.batch import Rollout


@dataclass
class IterationPlan:
    """Which rows of the global batch this process samples, and trains on in each epoch."""

    own: torch.Tensor  # (B / N,) global indices this process samples, in first-epoch minibatch order
    minibatches: list[list[torch.Tensor]]  # [epoch][k] -> global row indices this process trains on
    global_minibatches: list[list[torch.Tensor]]  # [epoch][k] -> every process's rows of that minibatch

    def first_epoch_groups(self) -> list[torch.Tensor]:
        """Positions within `own` of the first epoch's minibatches (for exact old log-probs)."""
        sizes = [len(rows) for rows in self.minibatches[0]]
        return list(torch.arange(len(self.own)).split(sizes))


def plan_iteration(generator: torch.Generator, batch: int, epochs: int, num_minibatches: int, rank: int,
                   world: int) -> IterationPlan:
    """A fresh permutation of the global batch per epoch, each minibatch dealt round-robin to processes."""
    minibatch = batch // num_minibatches
    if minibatch % world:
        raise ValueError(f"minibatch of {minibatch} episodes cannot be split over {world} processes")
    perms = [torch.randperm(batch, generator=generator) for _ in range(epochs)]
    whole = [list(perm.split(minibatch)) for perm in perms]
    minibatches = [[chunk[rank::world] for chunk in epoch] for epoch in whole]
    return IterationPlan(torch.cat(minibatches[0]), minibatches, whole)


def gather_rollout(accelerator: Accelerator, local: Rollout, own: torch.Tensor, batch: int, pad_id: int) -> Rollout:
    """All processes' episodes in global row order (responses right-padded to the longest)."""
    order = torch.empty(batch, dtype=torch.long)
    if accelerator.num_processes == 1:
        order[own] = torch.arange(batch)
        return local.index(order)
    device = local.response_ids.device
    fields = {}
    for f in dataclasses.fields(local):
        value = getattr(local, f.name)
        if isinstance(value, torch.Tensor):
            is_bool = value.dtype == torch.bool
            value = value.to(torch.uint8) if is_bool else value  # gloo gathers no bool tensors
            if value.dim() == 2 and not f.name.startswith("prompt"):  # (B, T) response tensors
                fill = pad_id if f.name == "response_ids" else 0
                value = accelerator.pad_across_processes(value, dim=1, pad_index=fill)
            value = accelerator.gather(value.contiguous())
            fields[f.name] = value.bool() if is_bool else value
        elif isinstance(value, list):
            fields[f.name] = gather_object(value)
        else:
            fields[f.name] = value
    rows = accelerator.gather(own.to(device)).cpu()
    order[rows] = torch.arange(batch)
    return Rollout(**fields).index(order.to(device))
