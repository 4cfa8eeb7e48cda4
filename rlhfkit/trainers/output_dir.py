"""One job: decide, before any work starts, whether a stage may write (or replace) its output folder.

Every stage calls `check_output_dir` first, so a folder that cannot be written (read-only, an
existing file, a path under a file) is one line, not a traceback after training; and
`--overwrite` only ever replaces what rlhfkit writes: a folder holding anything else is
refused with the list of those files, so nothing of the user's is deleted.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path

from rlhfkit.errors import ConfigError

# What an rlhfkit stage writes at the top of its folder: run files, a save_pretrained model and tokenizer,
# checkpoints, trackers' folders, reports, and the demo's stage folders (each itself a run folder).
RLHFKIT_FILES = (
    "config.yaml", "metrics.jsonl", "samples.jsonl", "eval.json", "evaluation.jsonl", "demo.json", "report.html",
    "*.png", "plots", "report.html.tmp", "comparisons.jsonl", "prompts.jsonl", "feedback.db", "feedback.db-*",
    "config.json", "generation_config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "adapter", "value_head.safetensors", "critic", "checkpoint-*", ".checkpoint.tmp*", ".checkpoint.old*",
    ".final.tmp", ".rlhfkit-write-test-*", "tb", "mlflow.db", "mlruns", "wandb",
    "reward_model", "ppo", "ppo_no_guard", "dpo", "sft", "alarms.jsonl", "reward_check.json",
)


def foreign_files(out: Path) -> list[str]:
    """Names at the top of `out` that no rlhfkit stage writes (sorted)."""
    return sorted(p.name for p in out.iterdir() if not any(fnmatch.fnmatch(p.name, pat) for pat in RLHFKIT_FILES))


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out: Path, setting: str = "output_dir") -> None:
    """A ConfigError unless `out` (or the folder it would be created in) takes a new folder."""
    base = _nearest_existing(out)
    if not base.is_dir():
        raise ConfigError(f"setting '{setting}': {out} cannot be created because {base} is a file, not a folder; "
                          "choose another path")
    try:  # the only reliable test (ACLs, read-only mounts, immutable folders): try it
        probe = tempfile.mkdtemp(dir=base, prefix=".rlhfkit-write-test-")
        os.rmdir(probe)
    except OSError as e:
        raise ConfigError(f"setting '{setting}': cannot write in {base} ({e.strerror}); choose a folder you can "
                          "write to") from None


def check_output_dir(out_dir: str | Path, overwrite: bool, setting: str = "output_dir") -> Path:
    """Refuse to replace a finished run unless asked, to replace anything rlhfkit did not write, and a folder
    that cannot be written (all checked before any work starts)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"setting '{setting}': {out} is a file, not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"setting '{setting}': {out} already exists and is not empty; pass --overwrite "
                              "or choose another directory")
        check_replaceable(out, setting)
    check_writable(out, setting)
    return out


def check_replaceable(out: Path, setting: str = "output_dir") -> None:
    """A ConfigError listing the files in `out` that rlhfkit did not write (replacing it would delete them)."""
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:8]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 8 else "")
        raise ConfigError(f"setting '{setting}': {out} holds files rlhfkit did not write ({shown}); --overwrite "
                          "only replaces an rlhfkit run: move them or choose another directory")


def remove_run_folder(out: Path) -> None:
    """Delete a previous run's folder, after `check_replaceable` has said it holds only rlhfkit's files."""
    check_replaceable(out)
    shutil.rmtree(out)
