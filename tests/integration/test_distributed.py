"""The same trainers under `accelerate launch` with 2 CPU processes (gloo) match 1 process.

Tolerance: both runs do the same arithmetic except that DDP averages two half-batch gradients
where one process takes one full-batch mean. With fixed-length responses (and equal-size pair
shards) the halves weigh exactly the same, so the only difference is float summation order,
about 1e-7 relative per step; after a handful of AdamW steps we allow 1e-4 on losses and
rewards, which a real bug (a wrong shard, a missing gradient sync, a double count) exceeds by
orders of magnitude.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def run(cmd: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    prefix = LAUNCH if processes == 2 else [sys.executable]
    done = subprocess.run(prefix + ["-m", "rlhfkit.cli", *cmd, "--threads", "1"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def metrics(out: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


@pytest.mark.slow
def test_reward_training_on_two_processes_matches_one(tiny_model_dir, rule_pairs_file, rule_eval_file, tmp_path):
    def cmd(out: Path) -> list[str]:
        return ["reward", "--model", str(tiny_model_dir), "--train-data", str(rule_pairs_file), "--eval-data",
                str(rule_eval_file), "--output-dir", str(out), "--batch-size", "16", "--eval-batch-size", "50",
                "--learning-rate", "2e-3", "--max-length", "96", "--log-every", "1", "--normalize", "none"]

    run(cmd(tmp_path / "one"), 1)
    run(cmd(tmp_path / "two"), 2)
    one, two = metrics(tmp_path / "one", "loss/train"), metrics(tmp_path / "two", "loss/train")
    assert len(one) == len(two) > 10
    assert one == pytest.approx(two, rel=1e-4, abs=1e-4)
    assert metrics(tmp_path / "one", "eval/accuracy") == pytest.approx(metrics(tmp_path / "two", "eval/accuracy"))


@pytest.mark.slow
def test_ppo_on_two_processes_matches_one(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["tell me about the river", "describe the city", "write about a door",
                                  "what happened to the light"] * 4) + "\n")

    def cmd(out: Path) -> list[str]:
        return ["ppo", "--policy", str(tiny_model_dir), "--prompts", str(prompts), "--reward-fn",
                "toy_rewards:count_a", "--output-dir", str(out), "--iterations", "4", "--rollout-batch-size", "16",
                "--num-minibatches", "2", "--update-epochs", "2", "--max-new-tokens", "8", "--no-stop-at-eos",
                "--learning-rate", "3e-3", "--sample-every", "1"]

    run(cmd(tmp_path / "one"), 1)
    run(cmd(tmp_path / "two"), 2)
    for key in ("reward/mean", "kl/ref", "loss/policy", "loss/value", "policy/clipfrac"):
        assert metrics(tmp_path / "one", key) == pytest.approx(metrics(tmp_path / "two", key), rel=1e-4, abs=1e-4), key
    # only the main process writes: one line per iteration, one final model
    assert len(metrics(tmp_path / "two", "reward/mean")) == 4
    assert (tmp_path / "two" / "model.safetensors").is_file()
