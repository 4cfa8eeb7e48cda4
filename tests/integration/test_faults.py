"""Faults in the middle of a run: SIGTERM, SIGKILL at random moments (checkpoint writes included), a full disk.

The promise: a run killed at any point resumes from its last intact checkpoint and then repeats
the uninterrupted run's metrics.jsonl row for row (timings aside); a half-written checkpoint is
never loaded; a full disk is one line and leaves the previous checkpoint intact.

`make test` runs RLHFKIT_FAULT_ROUNDS=1 round per stage (reward, ppo, reinforce, sft, dpo), each
round interrupting one run RLHFKIT_FAULT_KILLS=1 time(s) at a random delay with a checkpoint after
every step (SIGTERM and SIGKILL in turn: reward, reinforce and dpo get a SIGTERM, ppo and sft a
SIGKILL), then resuming it to the end (in the test's process). The long version:
RLHFKIT_FAULT_ROUNDS=20 RLHFKIT_FAULT_KILLS=3 pytest tests/integration/test_faults.py -s. The counts (rounds, kills,
resumes that matched, checkpoints found damaged) are printed and, with RLHFKIT_FAULT_REPORT=FILE,
written there as JSON.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy_data import known_rule_pairs, write_jsonl
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.trainers.checkpoint import verify_checkpoint

HERE = Path(__file__).parent
ROUNDS = int(os.environ.get("RLHFKIT_FAULT_ROUNDS", "1"))
KILLS = int(os.environ.get("RLHFKIT_FAULT_KILLS", "1"))
STAGES = ["reward", "ppo", "reinforce", "sft", "dpo"]
COUNTS = {"rounds": 0, "kills": 0, "resumes_matched": 0, "resumes_differed": 0, "checkpoints_checked": 0,
          "checkpoints_damaged": 0}
FAST = ["--threads", "1", "--mixed-precision", "no"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["tell me about the road", "describe the river", "write about a day", "say the city"]))
    demos = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in known_rule_pairs(64, seed=2)]
    return {"pairs": write_jsonl(root / "pairs.jsonl", known_rule_pairs(96, seed=1)), "prompts": prompts,
            "demos": write_jsonl(root / "demos.jsonl", demos), "root": root}


def command(stage: str, files: dict[str, Path], out: Path) -> list[str]:
    """A small run with a checkpoint after every step (so kills often land in checkpoint writes)."""
    base = [stage, "--output-dir", str(out), "--checkpoint-every", "1",
            "--keep-checkpoints", "2", *FAST]
    if stage in ("reward", "dpo"):
        return base + ["--train-data", str(files["pairs"]), "--batch-size", "8", "--max-length", "48",
                       "--eval-every", "5"]
    if stage == "sft":
        return base + ["--train-data", str(files["demos"]), "--batch-size", "8", "--max-length", "48",
                       "--eval-every", "3", "--epochs", "2"]
    return base + ["--prompts", str(files["prompts"]), "--reward-fn", "toy_rewards:count_a", "--iterations", "6",
                   "--rollout-batch-size", "8", "--max-new-tokens", "6", "--num-minibatches", "2",
                   "--sample-every", "1", "--learning-rate", "3e-3"]


def run_folder(stage: str, out: Path) -> Path:
    """Where the run writes until it completes (reward, sft and dpo runs stage into .NAME.partial)."""
    return out.parent / f".{out.name}.partial" if stage in ("reward", "sft", "dpo") else out


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k == "time" or k.startswith(("time/", "perf/")))} for r in rows]


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


CLI = [sys.executable, "-m", "rlhfkit.cli"]


@pytest.fixture(scope="module")
def uninterrupted(files: dict[str, Path]) -> dict[str, list[dict]]:
    """The reference runs, in this process (the same code and settings as the subprocesses, less start-up)."""
    found = {}
    for stage in STAGES:
        out = files["root"] / f"full-{stage}"
        done = CliRunner().invoke(app, command(stage, files, out))
        assert done.exit_code == 0, done.output[-2000:]
        found[stage] = metrics(out)
    return found


def wait_for_progress(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> None:
    """Until the run has logged its first step (or ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = folder / "metrics.jsonl"
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.02)


def check_checkpoints(folder: Path) -> None:
    for path in folder.glob("checkpoint-*"):
        COUNTS["checkpoints_checked"] += 1
        if verify_checkpoint(path) is not None:
            COUNTS["checkpoints_damaged"] += 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_killed_at_random_moments_resumes_and_repeats_the_uninterrupted_run(
        stage: str, files: dict[str, Path], uninterrupted: dict[str, list[dict]]) -> None:
    rng = random.Random(f"{stage}-{os.getpid()}")
    for round_ in range(ROUNDS):
        out = files["root"] / f"killed-{stage}-{round_}"
        cmd = command(stage, files, out)
        for kill in range(KILLS):
            proc = subprocess.Popen(CLI + cmd + (["--resume"] if kill else []), env=ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            wait_for_progress(proc, run_folder(stage, out))
            time.sleep(rng.uniform(0.0, 1.5))
            # SIGTERM and SIGKILL in turn (by kill, round and stage: one round of one kill covers both)
            sig = signal.SIGTERM if (kill + round_ + STAGES.index(stage)) % 2 == 0 else signal.SIGKILL
            if proc.poll() is None:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            if proc.returncode == 0:
                break  # it finished first
            COUNTS["kills"] += 1
            if proc.returncode == 128 + signal.SIGTERM:  # caught: a checkpoint and one line saying how to resume
                assert "run the same command with --resume" in err.strip().splitlines()[-1], err[-2000:]
            else:
                assert proc.returncode in (-sig, 128 + sig), err[-2000:]
            check_checkpoints(run_folder(stage, out))
        # resumed in this process (the checkpoint on disk is all it reads), saving a second start-up
        resumed = CliRunner().invoke(app, cmd + ["--resume"])
        assert resumed.exit_code == 0, resumed.output[-2000:]
        assert "Traceback" not in resumed.output
        COUNTS["rounds"] += 1
        same = metrics(out) == uninterrupted[stage]
        COUNTS["resumes_matched" if same else "resumes_differed"] += 1
        assert same, f"{stage} round {round_}: the resumed run's metrics differ from the uninterrupted run's"
        assert (out / "model.safetensors").is_file()
        if stage in ("ppo", "reinforce"):  # the samples logged every iteration, too, are the uninterrupted run's
            full = files["root"] / f"full-{stage}"
            assert (out / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
            # a checkpoint after every iteration, the newest 2 kept (--keep-checkpoints 2) whoever wrote them
            assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    assert COUNTS["checkpoints_damaged"] == 0
    report = os.environ.get("RLHFKIT_FAULT_REPORT")
    if report:
        Path(report).write_text(json.dumps(COUNTS, indent=1))
    print(f"\nfault rounds so far: {COUNTS}")


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(files: dict[str, Path],
                                                                    uninterrupted: dict[str, list[dict]]) -> None:
    """A tmpfs sized for the first checkpoint but not a second beside it: the run stops with one line and
    checkpoint-1 is intact (it needs root to mount; skipped elsewhere)."""
    full = files["root"] / "full-ppo"
    need = sum(f.stat().st_size for f in next(full.glob("checkpoint-*")).iterdir())
    disk = files["root"] / "small-disk"
    disk.mkdir()
    size = int(need * 1.5) // 4096 * 4096
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        out = disk / "run"
        done = CliRunner().invoke(app, command("ppo", files, out))
        assert done.exit_code == 2, done.output[-2000:]
        assert "Traceback" not in done.output
        last = done.output.strip().splitlines()[-1]
        assert last.startswith("error: ") and "no space left" in last and "checkpoint-1 is intact" in last, last
        assert verify_checkpoint(out / "checkpoint-1") is None
        assert not list(out.glob(".checkpoint.tmp*"))  # the failed write left nothing behind
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)  # lazy: the failed run may hold a file open


def test_report_and_resume_read_past_a_torn_metrics_line_and_a_damaged_checkpoint(
        files: dict[str, Path], uninterrupted: dict[str, list[dict]], tmp_path: Path) -> None:
    """A killed run's last metrics line cut short, and its newest checkpoint's weights cut short: `report`
    builds, and --resume passes over checkpoint-6 (its files do not match checkpoint.json), resumes from
    checkpoint-5 and ends with the uninterrupted run's metrics."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(files["root"] / "full-ppo", out)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "reward/me')
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    resumed = CliRunner().invoke(app, command("ppo", files, out) + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    said = "".join(resumed.output.split())  # the console wraps long lines
    assert "checkpoint-6:damaged" in said and "checkpoint-5:5of6iterationsdone" in said, resumed.output
    assert metrics(out) == uninterrupted["ppo"]
    assert verify_checkpoint(out / "checkpoint-6") is None  # written again, whole
