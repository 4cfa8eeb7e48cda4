"""Atomic, resumable checkpoints: `output_dir/checkpoint/` is always a complete checkpoint.

A checkpoint is written to a temporary sibling folder, flushed to disk, then swapped in with
renames, so a run killed at any moment (SIGKILL included) leaves either the previous or the new
checkpoint, never a mix. It holds the trainable weights, optimizer, scheduler, KL controller,
prompt sampler, RNG states and the iteration number.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def save_checkpoint(out_dir: str | Path, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write weights and trainer state as `out_dir/checkpoint`, replacing the previous one atomically."""
    out = Path(out_dir)
    final, tmp, old = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(weights, tmp / "weights.pt")
    torch.save({**state, "rng": rng_state()}, tmp / "trainer_state.pt")
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """The latest complete checkpoint (the previous one if a run died between the two renames)."""
    out = Path(out_dir)
    for candidate in (out / CHECKPOINT, out / f".{CHECKPOINT}.old"):
        if (candidate / "trainer_state.pt").is_file() and (candidate / "weights.pt").is_file():
            return candidate
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, trainer state); restores the global RNG states as saved."""
    weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return weights, state
