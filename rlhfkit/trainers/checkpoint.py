"""Atomic, resumable checkpoints: every `output_dir/checkpoint-N/` (N = iterations done) is complete.

A checkpoint is written to a temporary sibling folder, flushed to disk, then renamed into place,
so a run killed at any moment (SIGKILL included) leaves the previous checkpoints and maybe the
new one, never a half-written one; only then are the oldest removed, down to `keep`
(`--keep-checkpoints`, transformers' `save_total_limit`). A checkpoint holds the trainable
weights, optimizer, scheduler, KL controller, prompt sampler, RNG states and the iteration number.
The RL runs' resume and final save live here too, so the loops only say when to checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from rlhfkit.trainers.common import save_causal_lm

CHECKPOINT = "checkpoint"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(out_dir: str | Path, weights: dict[str, torch.Tensor], state: dict[str, Any], done: int,
                    keep: int = 1) -> Path:
    """Write weights and trainer state as `out_dir/checkpoint-<done>`, then keep only the `keep` newest."""
    out = Path(out_dir)
    final, tmp = out / f"{CHECKPOINT}-{done}", out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(weights, tmp / "weights.pt")
    torch.save({**state, "rng": rng_state()}, tmp / "trainer_state.pt")
    _fsync_dir(tmp)
    if final.exists():  # the same iteration saved again (a resumed run): the old copy goes first
        old = out / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)
    for stale in checkpoints(out)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    found = []
    for path in Path(out_dir).glob(f"{CHECKPOINT}-*"):
        done = path.name.rsplit("-", 1)[-1]
        if done.isdigit() and (path / "trainer_state.pt").is_file() and (path / "weights.pt").is_file():
            found.append((int(done), path))
    return [path for _, path in sorted(found)]


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (None when there is none)."""
    found = checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, trainer state); restores the global RNG states as saved."""
    weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return weights, state


# ---------------------------------------------------------------------------------------------
# The RL runs' checkpoints, resume and final save
# ---------------------------------------------------------------------------------------------
class RLRun(Protocol):
    """What of an RL run (`rlhfkit.trainers.rl_run.RLRun`) a checkpoint saves and restores."""

    accelerator: Accelerator
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kl_ctl: Any
    prompts: Any
    evaluation: Any
    out_dir: Path
    start_iteration: int
    extra_state: dict[str, Any] | None
    lora: Any
    cfg: Any

    @property
    def main(self) -> bool: ...

    @property
    def unwrapped(self) -> torch.nn.Module: ...


def save_rl_checkpoint(run: RLRun, iteration: int, extra: dict[str, Any] | None = None) -> None:
    """Save a resumable checkpoint after `iteration` (main process only)."""
    run.accelerator.wait_for_everyone()
    if not run.main:
        return
    state = {
        "iteration": iteration,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "kl_ctl": run.kl_ctl.state_dict(),
        "prompts": run.prompts.state_dict(),
        "evaluation": run.evaluation.state_dict() if run.evaluation is not None else {},
        "extra": extra or {},
    }
    save_checkpoint(run.out_dir, run.unwrapped.state_dict(), state, done=iteration + 1,
                    keep=run.cfg.keep_checkpoints)


def resume_rl(run: RLRun) -> None:
    """Load the latest checkpoint and drop metrics logged after it."""
    weights, state = load_checkpoint(find_checkpoint(run.out_dir))  # type: ignore[arg-type]
    run.unwrapped.load_state_dict(weights)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.kl_ctl.load_state_dict(state["kl_ctl"])
    run.prompts.load_state_dict(state["prompts"])
    if run.evaluation is not None:
        run.evaluation.load_state_dict(state.get("evaluation") or {})
    run.start_iteration = state["iteration"] + 1
    run.extra_state = state.get("extra") or {}
    if run.main:
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = run.out_dir / name
            if path.exists():
                keep = [line for line in path.read_text().splitlines() if _logged_by(line, state["iteration"])]
                path.write_text("".join(line + "\n" for line in keep))


def _logged_by(line: str, iteration: int) -> bool:
    """Whether a metrics/samples line was written by iterations 0..iteration (the held-out evaluation
    after iteration i is logged at step i + 1)."""
    try:
        record = json.loads(line)
        step = int(record["step"])
    except (ValueError, KeyError, TypeError):
        return False
    is_eval = all(k.startswith("eval/") for k in record if k not in ("step", "time"))
    return step <= iteration or (is_eval and step == iteration + 1)


def save_final_policy(run: RLRun) -> None:
    """The trained policy in save_pretrained layout (plus its tokenizer and critic) directly in output_dir;
    with LoRA the adapter in output_dir/adapter and, with save_merged, the merged weights in output_dir."""
    run.accelerator.wait_for_everyone()
    if not run.main:
        return
    actor = run.unwrapped
    tmp = run.out_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_causal_lm(tmp, actor.policy, run.tokenizer, run.lora, merged=run.cfg.save_merged)
    if actor.value_head is not None:
        save_file({k: v.contiguous() for k, v in actor.value_head.state_dict().items()}, tmp / "value_head.safetensors")
    elif actor.critic is not None:
        actor.critic.save_pretrained(tmp / "critic", safe_serialization=True)
    for item in tmp.iterdir():
        target = run.out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    tmp.rmdir()
