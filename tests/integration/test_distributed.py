"""The same trainers under `torchrun` with 2 CPU processes (gloo) match 1 process.

The cases chosen are the ones where a per-process mean would differ from the global one:
responses that stop at EOS (ragged lengths, so the two processes' token counts differ), ranked
lists of 2-4 completions (pairs of unequal weight), and reward batches of an odd size (the
processes get shares of different sizes; the last batch has a single pair, so one process trains
on a weight-0 stand-in row).

Tolerance: every loss divides by the global minibatch's count, so the two processes' gradients
add up to the one-process gradient; what differs is the order of float32 summation (DDP's
all-reduce adds two partial gradients where one process sums all rows at once), about 1e-7
relative per step. Over a handful of AdamW steps we allow 1e-4 on losses and metrics and 1e-4 on
every weight, far below what a real fault does: dividing by the per-process count instead of the
global one changes a ragged minibatch's loss by percents, not 1e-7 (tests/unit/test_global_denominators.py
measures it on ragged masks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_data import known_rule_rankings, write_jsonl

from rlhfkit.data import synthetic

HERE = Path(__file__).parent
# accelerate's own launcher starts a single process for --cpu; torchrun starts two, and the trainers'
# Accelerator (cpu=True without CUDA) joins them in one gloo group.
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run(cmd: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    prefix = LAUNCH if processes == 2 else [sys.executable]
    # fp32 on every machine: bf16 (the default where the CPU has it) rounds differently per batch shape
    done = subprocess.run(prefix + ["-m", "rlhfkit.cli", *cmd, "--threads", "1", "--mixed-precision", "no"], env=env,
                          capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def metrics(out: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def assert_same_weights(a: Path, b: Path) -> None:
    one, two = load_file(a), load_file(b)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
def test_reward_training_on_ranked_lists_on_two_processes_matches_one(tiny_model_dir, tmp_path):
    # Two criteria, alternating rows, one head each: batches mix criteria, and the per-criterion
    # metrics are gathered over both processes too.
    def tagged(rows: list[dict]) -> list[dict]:
        return [{**r, "criterion": "ab"[i % 2]} for i, r in enumerate(rows)]

    train = write_jsonl(tmp_path / "ranked.jsonl", tagged(known_rule_rankings(70, seed=3)))
    evals = write_jsonl(tmp_path / "ranked_eval.jsonl", tagged(known_rule_rankings(30, seed=4)))

    def cmd(out: Path) -> list[str]:
        # 15 pairs a batch: shares of 8 and 7; the pair count is not a multiple of 15, so the last
        # batch is smaller, and one batch per pass is a single pair (see the module docstring).
        return ["reward", "--model", str(tiny_model_dir), "--train-data", str(train), "--eval-data", str(evals),
                "--output-dir", str(out), "--batch-size", "15", "--eval-batch-size", "25", "--learning-rate",
                "2e-3", "--max-length", "96", "--log-every", "1", "--normalize", "none", "--no-group-by-length",
                "--criterion", "a,b"]

    run(cmd(tmp_path / "one"), 1)
    run(cmd(tmp_path / "two"), 2)
    one, two = metrics(tmp_path / "one", "loss/train"), metrics(tmp_path / "two", "loss/train")
    assert len(one) == len(two) > 10
    assert one == pytest.approx(two, rel=1e-4, abs=1e-4)
    assert metrics(tmp_path / "two", "perf/processes") == [2] and metrics(tmp_path / "one", "perf/processes") == [1]
    for key in ("train/accuracy", "train/lr", "eval/accuracy", "eval/loss", "eval/accuracy/a", "eval/loss/b"):
        one_values = metrics(tmp_path / "one", key)
        assert one_values and one_values == pytest.approx(metrics(tmp_path / "two", key), abs=1e-4), key
    assert_same_weights(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")


@pytest.mark.slow
def test_ppo_with_ragged_eos_and_two_criteria_on_two_processes_matches_one(tmp_path):
    """Ragged replies and a reward model with a head per criterion, combined by weights: on 2 processes the
    first rollout's shares are gathered before the criteria's mu and sigma are frozen, so every metric matches
    1 process (a per-process reference would make each process's z mean 0 on iteration 0 and differ after); the
    same for the ensemble member's reference of the standardized spread."""
    from rlhfkit.assets import embedded_model_path
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_model import build_reward_model

    tok = load_tokenizer(embedded_model_path(), padding_side="right")
    torch.manual_seed(1)
    rm = build_reward_model(embedded_model_path(), tok, criteria=("helpful", "concise"))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    torch.manual_seed(2)  # an ensemble member with the same criteria: its spread's reference is gathered too
    build_reward_model(embedded_model_path(), tok, criteria=("helpful", "concise")).save_pretrained(tmp_path / "rm2")
    tok.save_pretrained(tmp_path / "rm2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(synthetic.prompts(16, seed=0, split="train")) + "\n")

    def cmd(out: Path) -> list[str]:
        # The embedded model ends most replies with EOS, at different lengths.
        return ["ppo", "--policy", "embedded", "--prompts", str(prompts), "--reward-model", str(tmp_path / "rm"),
                "--reward-ensemble", str(tmp_path / "rm2"), "--reward-weights", "helpful=1,concise=-0.5",
                "--output-dir", str(out), "--iterations", "3",
                "--rollout-batch-size", "16", "--num-minibatches", "2", "--update-epochs", "2", "--max-new-tokens",
                "16", "--learning-rate", "1e-3", "--sample-every", "1"]

    run(cmd(tmp_path / "one"), 1)
    run(cmd(tmp_path / "two"), 2)
    lengths = metrics(tmp_path / "one", "response/length")
    eos = metrics(tmp_path / "one", "response/eos_share")
    assert max(lengths) < 16 and min(eos) > 0.1, "some responses should stop at EOS (ragged lengths)"
    for key in ("reward/mean", "kl/ref", "loss/policy", "loss/value", "loss/total", "policy/clipfrac",
                "policy/approx_kl", "policy/ratio_max", "value/mean", "policy/grad_norm", "train/lr",
                "reward/helpful", "reward/helpful_z", "reward/concise_z", "reward/combined",
                "reward/ensemble_spread", "reward/ensemble_spread_standardized"):
        assert metrics(tmp_path / "one", key) == pytest.approx(metrics(tmp_path / "two", key), rel=1e-4, abs=1e-4), key
    assert metrics(tmp_path / "two", "reward/helpful_z")[1] != pytest.approx(0.0, abs=1e-3)  # the check can fail
    assert min(metrics(tmp_path / "two", "reward/ensemble_spread_standardized")) > 0
    # two processes really ran, and only the main one writes: one line per iteration, one final model
    assert metrics(tmp_path / "two", "perf/processes") == [2] * 3
    assert len(metrics(tmp_path / "two", "reward/mean")) == 3
    assert_same_weights(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")


def test_a_command_that_ends_well_leaves_its_process_group(tmp_path):
    """gloo's worker threads can abort a finished process at interpreter exit unless the group is destroyed
    first (torch's own advice: call destroy_process_group at the end); the CI once saw a 2-process PPO run
    print its summary and then die with SIGABRT. Every command wraps in one_line_errors, which ends the group
    after a command that returned; one that raised a user error keeps it (no barrier against a failed peer)."""
    script = f"""
import torch, torch.distributed as dist, typer
from rlhfkit.cli_errors import one_line_errors
from rlhfkit.errors import UserError

def bad_input():
    raise UserError("bad input")

def all_reduce():
    dist.all_reduce(torch.ones(2))

dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
try:
    one_line_errors(bad_input)()
except typer.Exit:
    pass
print("after error", dist.is_initialized())
one_line_errors(all_reduce)()
print("after success", dist.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["after error True", "after success False"]
