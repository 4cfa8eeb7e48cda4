"""One optimizer step, used by every trainer: micro-batches accumulated, gradients clipped, one update.

A minibatch is split into micro-batches of at most `micro_batch_size` rows (bounded memory), and
into one share per process. Each micro-batch's loss divides by the count of the WHOLE global
minibatch (`rlhfkit.algos.aggregate_denominator`, the pair-weight sum for reward models), so the
losses of all micro-batches on all processes add up to the one-process, one-pass loss, and so do
the gradients. DDP averages gradients over the N processes, hence the factor N on the backward.
Only the last micro-batch's backward synchronises gradients (`no_sync` before it).

`StepStats` accumulates what the loops log in the same additive way, on the device: a value is
either a contribution that adds up over micro-batches and processes (losses divided by the global
count, token-mean diagnostics weighted by their share of the minibatch's tokens) or an extreme
(max/min). Nothing is read back from the device until the iteration's `summary`.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from rlhfkit.trainers.master_weights import MasterWeights

T = TypeVar("T")


def micro_batches(rows: torch.Tensor, micro_batch_size: int) -> list[torch.Tensor]:
    """Split a minibatch's row indices into chunks of at most `micro_batch_size` (0 = one chunk)."""
    if micro_batch_size <= 0 or micro_batch_size >= len(rows):
        return [rows]
    return list(rows.split(micro_batch_size))


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    parts: Sequence[T],
    loss_of: Callable[[T], torch.Tensor],
    max_grad_norm: float,
    master: MasterWeights | None = None,
) -> torch.Tensor | None:
    """Backward through `loss_of(part)` for every part, then clip, step and zero the gradients.

    Each `loss_of(part)` must already be divided by the global minibatch's count, so that the sum
    over parts and processes is the minibatch loss. Returns the gradient norm before clipping
    (a 0-dim tensor) when clipping is on, else None. With `master` (bf16 weights), the gradients are
    summed, clipped and stepped on its fp32 copies, which are then cast into the model.
    """
    world = accelerator.num_processes
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        sync = contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(model)
        with sync:
            loss = loss_of(part)
            accelerator.backward(loss * world if world > 1 else loss)
        if master is not None:
            master.accumulate_grads()
    grad_norm = None
    if max_grad_norm > 0:
        params = model.parameters() if master is None else master.parameters()
        grad_norm = clip_gradients(accelerator, params, max_grad_norm)
    optimizer.step()
    if master is not None:
        master.master_to_model()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def clip_gradients(accelerator: Accelerator, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """g <- g * min(1, max_norm / (||g|| + 1e-6)); returns ||g|| before clipping (a 0-dim tensor).

    `accelerator.clip_grad_norm_`, except on one CPU process: torch multiplies every gradient by the
    coefficient even when it is exactly 1, to spare a GPU the device sync of testing it; on a CPU the
    test costs nothing, and the skipped pass over the gradients is about 1 ms of a 45 ms GRPO step
    on the benchmark's policy (its gradient norm stays under the clip).
    """
    if (accelerator.distributed_type != DistributedType.NO or accelerator.device.type != "cpu"
            or accelerator.scaler is not None):
        return accelerator.clip_grad_norm_(params, max_norm)
    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if bool(max_norm / (total + 1e-6) < 1.0):  # torch's coefficient, before its clamp to 1
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


class StepStats:
    """Per-iteration statistics that add up exactly over micro-batches, optimizer steps and processes.

    `add(key, value)` adds a contribution to the current step; `extreme(key, value, largest)` keeps a
    max or min over the whole iteration; `end_step()` closes a step. `summary()` averages the summed
    values over the steps, reduces over processes (sum for contributions, max/min for extremes)
    and returns Python floats: the only device read of the iteration.
    """

    def __init__(self) -> None:
        self._step: dict[str, torch.Tensor] = {}
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self._counts: dict[str, int] = defaultdict(int)
        self._max: dict[str, torch.Tensor] = {}
        self._min: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value).detach().double()
        self._step[key] = self._step[key] + value if key in self._step else value

    def extreme(self, key: str, value: torch.Tensor, largest: bool) -> None:
        store, pick = (self._max, torch.maximum) if largest else (self._min, torch.minimum)
        value = value.detach().double()
        store[key] = pick(store[key], value) if key in store else value

    def end_step(self) -> dict[str, torch.Tensor]:
        """Close the current optimizer step; returns its (this process's) summed contributions."""
        step, self._step = self._step, {}
        for key, value in step.items():
            self._sums[key] = self._sums[key].to(value.device) + value
            self._counts[key] += 1
        return step

    @property
    def steps(self) -> int:
        return max(self._counts.values(), default=0)

    def summary(self, accelerator: Accelerator) -> dict[str, float]:
        keys = sorted(self._sums)
        out: dict[str, float] = {}
        if keys:
            means = torch.stack([self._sums[k].to(accelerator.device) / self._counts[k] for k in keys])
            if accelerator.num_processes > 1:
                means = accelerator.reduce(means, reduction="sum")
            out.update(zip(keys, means.tolist()))
        for store, largest in ((self._max, True), (self._min, False)):
            for key in sorted(store):
                value = store[key].to(accelerator.device)
                if accelerator.num_processes > 1:
                    value = accelerator.gather(value[None])
                out[key] = float(value.max() if largest else value.min())
        return out

