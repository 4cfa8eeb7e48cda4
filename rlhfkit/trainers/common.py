"""Setup shared by the trainers: seeds, threads, accelerate, optimiser, schedule, output folder.

Kept out of the training loops so each loop reads as the method's steps.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from rlhfkit.config import save_config
from rlhfkit.errors import TrainingError, UserError
from rlhfkit.models.loading import configure_loading
from rlhfkit.tracking.metrics import check_trackers
from rlhfkit.trainers.host_memory import keep_freed_memory
from rlhfkit.trainers.output_dir import check_output_dir
from rlhfkit.trainers.precision import resolve_precision

__all__ = ["check_output_dir", "end_processes", "leftover_folders", "make_accelerator", "make_optimizer",
           "make_scheduler", "publish", "save_causal_lm", "save_run_config", "seed_everything", "staged_output"]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(cfg: Any) -> Accelerator:
    """One Accelerator per run: CPU, one GPU or `accelerate launch` with the same code (and the run's load options)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        keep_freed_memory()  # tensors freed at one step are reused at the next without page faults
    configure_loading(cfg)
    check_trackers(cfg.report_to)
    mp = resolve_precision(cfg.mixed_precision)
    # accelerate keeps one precision per process and refuses another; a second run in the same process
    # (a notebook, a script training the reward model then PPO) may ask for another. The process
    # group (PartialState) is kept, only the precision is set afresh.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mp):
        AcceleratorState._reset_state(reset_partial_state=False)
    # No dataloader goes through accelerate: every trainer deals its global batches to the processes itself.
    # cpu=True on a machine without CUDA: `torchrun --nproc_per_node N` then gives N gloo processes
    # (accelerate's own launcher starts a single process for --cpu).
    return Accelerator(mixed_precision=mp, cpu=on_cpu)


def end_processes() -> None:
    """End a run of N processes: wait for all of them, then destroy the process group.

    Call it once at the end of a script launched by torchrun or `accelerate launch` (the command line
    does). Without it, gloo's worker threads can still be alive while the interpreter shuts down and abort
    a process that finished its work ("terminate called without an active exception", exit -6), which
    fails the whole launch. It does nothing in a single process.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def make_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (CPU and CUDA; one kernel for all parameters instead of several per tensor)."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
                             fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then constant, linear decay to 0, or cosine decay to 0.

    Never pass it to `accelerator.prepare`: accelerate's wrapper steps a scheduler once per process
    at every optimizer step (it assumes a sharded dataloader), so N processes would run the
    schedule N times too fast. Each process steps its own copy once per optimizer step.

    See docs/implementation-details.md, "Learning-rate schedule".
    """
    import math

    warmup = cfg.warmup_steps
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def staged_output(out_dir: str | Path, enabled: bool = True, folder: Path | None = None, fresh: bool = True
                  ) -> Iterator[Path]:
    """Write a run into a temporary sibling folder and move it into place only on success.

    A run that fails leaves nothing half-written under `out_dir` (the temporary folder is
    removed); a previous run there is replaced only once the new one is complete. A resumable run
    names its `folder` (`.NAME.partial`): it is kept when the run stops with a checkpoint in it, and
    `fresh=False` (--resume) continues in it instead of emptying it.
    """
    out = Path(out_dir)
    tmp = folder or out.parent / f".{out.name}.tmp-{os.getpid()}"
    if not enabled:
        yield tmp
        return
    for stale in leftover_folders(out):  # a killed run's half-written folder: never read, removed now
        shutil.rmtree(stale, ignore_errors=True)
    if fresh and tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException as e:
        full = isinstance(e, Exception) and not isinstance(e, UserError) and disk_full(e, tmp)
        if folder is None or not any(folder.glob("checkpoint-*")):
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise TrainingError(f"{out}: no space left on the disk to write the run; nothing half-written was "
                                "kept: free some space and run again") from None
        raise
    move_into_place(tmp, out)


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename a completed run's folder `tmp` to `out`, replacing a previous run there only now."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def disk_full(e: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk: by its errno, or (torch and safetensors wrap the OS error
    in their own) by the disk having less than 1 MiB free right after it."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def leftover_folders(out_dir: str | Path) -> list[Path]:
    """The temporary siblings `.NAME.tmp-PID` / `.NAME.old-PID` that `staged_output` left behind when its
    process was killed (PID no longer running)."""
    out = Path(out_dir)
    found = []
    for path in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = path.name[len(out.name) + 2:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            found.append(path)
    return found


def check_finite(tensors: Any, what: str) -> None:
    """A TrainingError unless every floating tensor of `tensors` (a module or a state dict) is finite: a model
    with NaN or inf weights is never saved (it would score or sample garbage downstream)."""
    items = tensors.state_dict().items() if isinstance(tensors, torch.nn.Module) else tensors.items()
    floats = [(k, v) for k, v in items if isinstance(v, torch.Tensor) and v.is_floating_point()]
    bad = [k for k, v in floats if not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"{what}: {len(bad)} of {len(floats)} weight tensors hold NaN or inf (first: '{bad[0]}'), "
                            "so training diverged and they were not saved; lower --learning-rate or "
                            "--max-grad-norm, or check the rewards and the data")


FINAL_TMP = ".final.tmp"  # where a final model is written before it is moved into its folder


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, folder: Path, last: str = "config.json") -> None:
    """Move every entry of `tmp` into `folder` so that a loader finds no model or the new one whole.

    `from_pretrained` needs `last` (config.json), so the folder's old one goes first, then every other
    entry (a folder such as adapter/ by one rename), and the new `last` after all of them: a kill at any
    moment leaves a folder without config.json (refused as not a model) or the complete new model, never
    new weights read with an old config. Everything is flushed to the disk before `last` appears."""
    for path in tmp.rglob("*"):
        if path.is_file():
            fsync_path(path)
    (folder / last).unlink(missing_ok=True)
    for item in sorted(tmp.iterdir(), key=lambda p: p.name == last):  # `last` last
        target = folder / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    fsync_path(folder)
    tmp.rmdir()


def save_causal_lm(folder: Path, model: Any, tokenizer: Any, lora: Any = None, merged: bool = True,
                   extra: Callable[[Path], None] | None = None) -> None:
    """A trained policy as the next stage loads it: `save_pretrained` layout plus its tokenizer; with LoRA the
    adapter in folder/adapter (peft's format: PeftModel.from_pretrained(base, folder)) and, with `merged`, the
    merged weights as a plain transformers folder in `folder`. Non-finite weights are refused (`check_finite`).

    Everything (and what `extra(tmp)` adds, e.g. a value head) is written to folder/.final.tmp, then moved in
    by `publish`: a run killed during the save never leaves a folder that loads as a half-saved model."""
    check_finite(model, "the trained policy")
    tmp = folder / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)  # a killed save's leftovers
    tmp.mkdir(parents=True)
    if lora is not None:
        lora.save(tmp / "adapter")
        tokenizer.save_pretrained(tmp / "adapter")
        if merged:
            lora.save(tmp, merged=True)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    publish(tmp, folder)


def save_run_config(cfg: Any, folder: Path) -> None:
    """The resolved config beside the outputs (reload with --config folder/config.yaml)."""
    save_config(cfg, folder / "config.yaml")
