"""Atomic, resumable checkpoints: every `output_dir/checkpoint-N/` (N = iterations or steps done) is complete.

A checkpoint is written to a temporary sibling folder `.checkpoint.tmp-<pid>`, every file and the
folder flushed to disk (fsync), then renamed into place, so a run killed at any moment (SIGKILL
included) leaves the previous checkpoints and maybe the new one, never a half-written one; only
then are the oldest removed, down to `keep` (`--keep-checkpoints`, transformers'
`save_total_limit`). A killed write's temporary folder is removed by the next run.

Nothing in a checkpoint can run code when loaded (a pickle can): the weights are
`model.safetensors`; the trainer state (optimizer, scheduler, KL controller, prompt sampler, RNG
states, iteration) is `trainer_state.pt`, plain tensors, numbers and lists, read back with
`torch.load(weights_only=True)`; `checkpoint.json` names the files with their sizes and SHA-256,
and a checkpoint whose files do not match it is never loaded (the previous one is used).
The RL runs' resume and final save live here too, so the loops only say when to checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from rlhfkit.config import to_dict
from rlhfkit.errors import ConfigError, TrainingError
from rlhfkit.tracking.console import console
from rlhfkit.trainers.common import check_finite, disk_full, fsync_path, save_causal_lm
from rlhfkit.trainers.master_weights import fp32_weights

CHECKPOINT = "checkpoint"
WEIGHTS, STATE, MANIFEST, CONFIG = "model.safetensors", "trainer_state.pt", "checkpoint.json", "config.json"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain values and tensors (weights_only=True loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): each such alias gets its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in weights.items():
        v = v.detach()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else (0, id(v))
        out[k] = v.clone().contiguous() if key in seen or not v.is_contiguous() else v
        seen.add(key)
    return out


def leftover_temporaries(out_dir: str | Path) -> list[Path]:
    """Temporary checkpoint folders (being written or deleted) of killed runs (their process is gone)."""
    from rlhfkit.trainers.common import leftover_folders

    out = Path(out_dir)
    found = [p for p in [*out.glob(f".{CHECKPOINT}.tmp*"), *out.glob(f".{CHECKPOINT}.old*")]
             if not p.name.rpartition("-")[2].isdigit() or not _pid_alive(int(p.name.rpartition("-")[2]))]
    return found + leftover_folders(out / CHECKPOINT)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(out_dir: str | Path, weights: dict[str, torch.Tensor], state: dict[str, Any], done: int,
                    keep: int = 1, config: Any = None) -> Path:
    """Write weights and trainer state as `out_dir/checkpoint-<done>`, then keep only the `keep` newest.

    Non-finite weights are refused (the previous checkpoint stays the newest); a write that fails (a full
    disk) leaves no trace and says which checkpoint is intact."""
    out = Path(out_dir)
    check_finite(weights, f"checkpoint-{done}")
    for stale in leftover_temporaries(out):
        shutil.rmtree(stale, ignore_errors=True)
    final, tmp = out / f"{CHECKPOINT}-{done}", out / f".{CHECKPOINT}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(_unshared(weights), str(tmp / WEIGHTS))
        torch.save({**state, "rng": rng_state()}, tmp / STATE)
        if config is not None:
            (tmp / CONFIG).write_text(json.dumps(to_dict(config), indent=1, default=str))
        files = sorted(f.name for f in tmp.iterdir())
        manifest = {"done": done, "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                                            for n in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        if final.exists():  # the same iteration saved again (a resumed run): the old copy goes first
            remove_checkpoint(final)
        tmp.rename(final)
        fsync_path(out)
    except Exception as e:
        full = disk_full(e, out)  # before the partial files are removed
        shutil.rmtree(tmp, ignore_errors=True)
        previous = find_checkpoint(out)
        kept = f"{previous.name} is intact" if previous else "no earlier checkpoint exists"
        if full:
            raise TrainingError(f"{out}: no space left on the disk to write {final.name}; {kept}: free some space, "
                                "then rerun with --resume") from None
        if isinstance(e, OSError):
            raise TrainingError(f"{out}: cannot write {final.name} ({e.strerror or e}); {kept}") from None
        raise
    for stale in checkpoints(out)[:-keep]:
        remove_checkpoint(stale)
    return final


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder without ever leaving a half-deleted one under its name (a kill during the
    deletion would): it is renamed to `.checkpoint.old-<pid>` first, which no loader reads and the next
    save removes."""
    gone = path.parent / f".{CHECKPOINT}.old-{os.getpid()}"
    shutil.rmtree(gone, ignore_errors=True)
    path.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)


def verify_checkpoint(path: Path) -> str | None:
    """None when every file of `path` matches its manifest, else what is wrong (a damaged checkpoint)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        for name, info in manifest["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
                return f"{name} does not match checkpoint.json"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"checkpoint.json unreadable ({e})"
    return None


def checkpoints(out_dir: str | Path) -> list[Path]:
    """The checkpoints of a run folder whose manifest is present, oldest first (see `find_checkpoint`)."""
    return [path for path in checkpoints_named(Path(out_dir)) if (path / MANIFEST).is_file()]


def find_checkpoint(out_dir: str | Path, say: bool = False) -> Path | None:
    """The newest checkpoint whose files match their manifest (None when there is none); a damaged one
    is passed over (and said, with `say`)."""
    for path in reversed(checkpoints(out_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        if say:
            console.print(f"[yellow]{path}: damaged ({problem}); not loaded, trying the one before")
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, trainer state); restores the global RNG states as saved. Nothing is unpickled."""
    weights = load_file(str(path / WEIGHTS))
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    set_rng_state(state["rng"])
    return weights, state


def old_format_checkpoint(out_dir: Path) -> Path | None:
    """A checkpoint written by rlhfkit before safetensors (`weights.pt` + `trainer_state.pt` pickles, no
    checkpoint.json), newest first; None when there is none."""
    old = [p for p in checkpoints_named(out_dir) if (p / "weights.pt").is_file() and not (p / MANIFEST).is_file()]
    return old[-1] if old else None


def checkpoints_named(out_dir: Path) -> list[Path]:
    """Every `checkpoint-N` folder, oldest first, whatever it holds."""
    found = [(int(p.name.rsplit("-", 1)[-1]), p) for p in out_dir.glob(f"{CHECKPOINT}-*")
             if p.name.rsplit("-", 1)[-1].isdigit() and p.is_dir()]
    return [p for _, p in sorted(found)]


def resume_from(out_dir: str | Path, resume: bool, overwrite: bool) -> Path | None:
    """Where a run starts (checked before any work): the newest intact checkpoint with --resume, else None
    after `check_output_dir`. --resume without one says so and starts from the beginning, replacing a
    killed run's files (only rlhfkit's: a folder holding others is refused)."""
    from rlhfkit.trainers.output_dir import check_output_dir, check_replaceable, check_writable

    out = Path(out_dir)
    if not resume:
        check_output_dir(out, overwrite)
        return None
    if out.exists() and not out.is_dir():
        check_output_dir(out, overwrite)
    found = find_checkpoint(out, say=_is_main()) if out.is_dir() else None
    if found is not None:
        check_writable(out)
        return found
    old = old_format_checkpoint(out) if out.is_dir() else None
    if old is not None:
        raise ConfigError(f"setting 'resume': {old} is a checkpoint in an old format (weights.pt, a pickle that "
                          "could run code when loaded) that rlhfkit no longer reads; rerun without --resume "
                          "(--overwrite starts again in this folder) or in another --output-dir")
    if out.is_dir() and any(out.iterdir()):
        check_replaceable(out, "resume")
    check_writable(out)
    if _is_main():
        console.print(f"[yellow]--resume: no intact checkpoint in {out}, so the run starts from the beginning")
    return None


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


# Settings that may differ on --resume: where and how often things are written, threads, memory-only
# knobs that give the same numbers, and the length of the run (more iterations or epochs).
RESUMABLE = {"output_dir", "resume", "overwrite", "log_every", "threads", "report_to", "checkpoint_every",
             "keep_checkpoints", "sample_every", "generation_batch_size", "micro_batch_size", "eval_batch_size",
             "gradient_checkpointing", "iterations", "epochs", "max_steps"}


def check_resume_settings(path: Path, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """Compare the run's settings with those the checkpoint was written with: a ConfigError listing every
    setting that cannot change on resume; returns the changed ones that can ({name: (old, new)})."""
    saved_file = path / CONFIG
    if not saved_file.is_file():
        return {}
    saved = json.loads(saved_file.read_text())
    now = json.loads(json.dumps(to_dict(cfg), default=str))
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
    fixed = sorted(k for k in changed if k not in RESUMABLE)
    if fixed:
        listed = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in fixed)
        raise ConfigError(f"setting 'resume': these settings cannot change on resume: {listed}; use the values of "
                          f"{path.parent}/config.yaml, or start a new run in another --output-dir")
    return {k: v for k, v in changed.items() if k in RESUMABLE}


def resume_line(stage: str, path: Path, done: int, total: int, unit: str, changed: dict[str, tuple[Any, Any]]
                ) -> str:
    """'resuming ppo from out/checkpoint-4: 4 of 10 iterations done (iterations 6 -> 10)'."""
    applied = [f"{k} {old} -> {new}" for k, (old, new) in changed.items() if k not in ("resume", "overwrite")]
    return (f"resuming {stage} from {path}: {done} of {total} {unit} done"
            + (f" ({', '.join(applied)})" if applied else ""))


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
    master: Any  # MasterWeights with --bf16-weights: checkpoints hold its fp32 copies
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
    with fp32_weights(run.master):
        save_checkpoint(run.out_dir, run.unwrapped.state_dict(), state, done=iteration + 1,
                        keep=run.cfg.keep_checkpoints, config=run.cfg)


def resume_rl(run: RLRun, stage: str = "") -> None:
    """Load the latest intact checkpoint, check the settings against it (say what is resumed) and drop
    metrics logged after it."""
    path = find_checkpoint(run.out_dir, say=run.main)
    assert path is not None  # build_rl resumes only when there is one
    changed = check_resume_settings(path, run.cfg)
    weights, state = load_checkpoint(path)
    done = state["iteration"] + 1
    if done > run.cfg.iterations:
        raise ConfigError(f"setting 'iterations': {path} has {done} iterations done, more than --iterations "
                          f"{run.cfg.iterations}; pass --iterations {done} or more")
    if run.main:
        console.print(resume_line(stage or getattr(run.cfg, "STAGE", "run"), path, done, run.cfg.iterations,
                                  "iterations", changed))
    with fp32_weights(run.master):  # into the fp32 copies, exactly
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

    def heads(tmp: Path) -> None:  # the critic, moved in with the policy
        if actor.value_head is not None:
            save_file({k: v.contiguous() for k, v in actor.value_head.state_dict().items()},
                      tmp / "value_head.safetensors")
        elif actor.critic is not None:
            actor.critic.save_pretrained(tmp / "critic", safe_serialization=True)

    with fp32_weights(run.master):
        save_causal_lm(run.out_dir, actor.policy, run.tokenizer, run.lora, merged=run.cfg.save_merged, extra=heads)
