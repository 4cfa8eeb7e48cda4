"""Checkpoints and --resume of the stages counted in optimizer steps: reward, sft and dpo.

Such a run writes into the hidden sibling folder `.OUTPUT_DIR.partial` (`staged_output`) until it
completes; its checkpoints (`checkpoint.py`: safetensors weights, weights_only state, a manifest)
go there every `checkpoint_every` steps and when SIGTERM / Ctrl-C asks the run to stop. --resume
loads the newest intact one (weights, optimizer, schedule, RNG states, the loop's counters),
refuses settings that cannot change, drops the metrics logged after it, and the loop skips the
batches already done (each pass's order is seeded by (seed, pass)), so the resumed run repeats
the uninterrupted one. On completion the folder, checkpoints removed, becomes output_dir.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import ConfigError
from rlhfkit.tracking.console import console
from rlhfkit.tracking.metrics import MetricsLogger, open_metrics
from rlhfkit.trainers.checkpoint import (
    check_resume_settings,
    leftover_temporaries,
    load_checkpoint,
    remove_checkpoint,
    resume_from,
    resume_line,
    save_checkpoint,
)
from rlhfkit.trainers.common import move_into_place, staged_output
from rlhfkit.trainers.master_weights import MasterWeights, fp32_weights
from rlhfkit.trainers.signals import stop_requested, stopped


def partial_folder(out_dir: str | Path) -> Path:
    """`.NAME.partial` beside output_dir: where a resumable run writes until it completes."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.partial"


def completed_run(cfg: Any) -> dict[str, Any] | None:
    """With --resume, the eval.json of a run that already completed (killed after its folder was moved into
    place, or after its model was saved: that folder is moved into place now), said in one line; else None."""
    out, partial = Path(cfg.output_dir), partial_folder(cfg.output_dir)
    if not cfg.resume:
        return None
    if partial.is_dir() and (partial / "eval.json").is_file():  # written last: the model is saved whole
        # killed after saving, before the folder was moved into place: finish that
        drop_checkpoints(partial)
        move_into_place(partial, out)
    elif partial.is_dir() or not (out / "eval.json").is_file():
        return None
    console.print(f"--resume: {out} holds a completed run; nothing to resume")
    return json.loads((out / "eval.json").read_text())


def find_resume(cfg: Any) -> Path | None:
    """The checkpoint a --resume run starts from (None: from the beginning, said in one line)."""
    return resume_from(partial_folder(cfg.output_dir), cfg.resume, overwrite=True) if cfg.resume else None


def load_step_checkpoint(path: Path, cfg: Any, stage: str, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                         total_steps: int, main: bool, master: MasterWeights | None = None) -> dict[str, Any]:
    """Load a step checkpoint into the model, optimizer and schedule (and the RNG states); returns the trainer
    state (`step` and the loop's own counters). Settings that cannot change are refused first, in one line."""
    changed = check_resume_settings(path, cfg)
    weights, state = load_checkpoint(path)
    if state["step"] > total_steps:
        raise ConfigError(f"setting 'epochs': {path} has {state['step']} steps done, more than the {total_steps} "
                          f"of --epochs {cfg.epochs}; raise --epochs")
    with fp32_weights(master):  # with --bf16-weights, into the fp32 copies, exactly
        model.load_state_dict(weights)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if main:
        console.print(resume_line(stage, path, state["step"], total_steps, "steps", changed))
    return state


def keep_logged(path: Path, step: int) -> None:
    """Drop the metrics lines logged after `step` (by the run that was killed) and any torn line."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    path.write_text("".join(line + "\n" for line in keep))


@contextmanager
def run_folder(out_dir: str | Path, cfg: Any, main: bool, resume_path: Path | None, step: int
               ) -> Iterator[tuple[Path, MetricsLogger]]:
    """The run's `.partial` folder (`staged_output`: emptied unless resuming, moved to out_dir on success)
    and its metrics logger; a resumed run first drops the metrics the killed run logged after `step`."""
    resuming = resume_path is not None
    with staged_output(out_dir, enabled=main, folder=partial_folder(out_dir), fresh=not resuming) as tmp:
        if resuming and main:
            keep_logged(tmp / "metrics.jsonl", step)
        yield tmp, open_metrics(tmp, cfg, enabled=main, append=resuming)


def remaining_batches(batches: Any, epochs: int, step: int) -> Iterator[Any]:
    """The global batches of `epochs` passes over `batches` after the first `step` (done before the
    checkpoint a run resumed from). Pass e's order is seeded by (seed, e) (`batches.passes = e`), so a
    resumed run sees the same batches in the same order as the run it continues."""
    for epoch in range(step // len(batches), epochs):
        batches.passes = epoch
        for index, rows in enumerate(batches):
            if epoch * len(batches) + index >= step:
                yield rows


def drop_checkpoints(folder: Path) -> None:
    """The run is complete and its model saved: its checkpoints go (only now, so that a run killed while
    saving the model still resumes from them)."""
    for path in folder.glob("checkpoint-*"):
        remove_checkpoint(path)
    for stale in leftover_temporaries(folder):  # of a run killed while writing or deleting one
        shutil.rmtree(stale, ignore_errors=True)


class StepCheckpoints:
    """A step-counted run's checkpoints in its `.partial` folder: on schedule and when a signal asks to stop.

    The loop passes its counters (step, and what the stage keeps, e.g. pairs seen); the model's weights,
    the optimizer and the schedule are added here."""

    def __init__(self, folder: Path, cfg: Any, accelerator: Any, model: Callable[[], torch.nn.Module],
                 optimizer: Any, scheduler: Any, total_steps: int, master: MasterWeights | None = None) -> None:
        self.folder, self.cfg, self.accelerator, self.master = folder, cfg, accelerator, master
        self.model, self.optimizer, self.scheduler, self.total_steps = model, optimizer, scheduler, total_steps

    def save(self, state: dict[str, Any]) -> Path:
        """Write checkpoint-<step> (main process; the others wait for it)."""
        step = state["step"]
        full = {**state, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            with fp32_weights(self.master):  # with --bf16-weights, the fp32 copies
                save_checkpoint(self.folder, self.model().state_dict(), full, done=step,
                                keep=self.cfg.keep_checkpoints, config=self.cfg)
        return self.folder / f"checkpoint-{step}"

    def after_step(self, now: dict[str, Any], logger: Any) -> None:
        """At the end of a step: a checkpoint every checkpoint_every steps (not after the last: the model is
        saved then), and on SIGTERM / Ctrl-C a checkpoint and `Stopped` (one line saying how to resume)."""
        step = now["step"]
        saved = bool(self.cfg.checkpoint_every) and step % self.cfg.checkpoint_every == 0 and step != self.total_steps
        if saved:
            self.save(now)
        signum = None if step == self.total_steps else stop_requested(self.accelerator)
        if signum is not None:
            path = self.save(now) if not saved else self.folder / f"checkpoint-{step}"
            logger.close()
            raise stopped(signum, f"after step {step} of {self.total_steps}", path)
