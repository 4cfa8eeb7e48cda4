"""Length settings never exceed the model's context, through the real CLI on the embedded model.

The embedded GPT-2 reads 64 positions (n_positions in its config.json). Before these checks the
README's own `rlhfkit reward` example (max_length 512) and `rlhfkit score` with defaults (1024)
ended in an IndexError from the position embedding. Now max_length defaults to the model's
context, a longer value is one line with exit status 2 before any work, PPO's prompt + response
lengths must fit, and pairs that do not fit even with the prompt truncated are counted in eval.json.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from toy_data import NEGATIVE, NEUTRAL, POSITIVE, write_jsonl
from transformers import AutoTokenizer
from typer.testing import CliRunner

from rlhfkit.assets import embedded_model_path
from rlhfkit.cli import app

runner = CliRunner()
EMBEDDED = embedded_model_path()
CONTEXT = json.loads((EMBEDDED / "config.json").read_text())["n_positions"]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(NEUTRAL) for _ in range(n))


def pair_rows(n: int, seed: int, long_prompts: int = 0, long_responses: int = 0) -> list[dict]:
    """Short pairs, then `long_prompts` with a prompt far beyond the context (truncated), then
    `long_responses` whose chosen response alone overflows it (cannot fit)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = words(rng, 120) if i < long_prompts else words(rng, 3)
        body = words(rng, 4)
        chosen = f" {body} {rng.choice(POSITIVE)}"
        if long_prompts <= i < long_prompts + long_responses:
            chosen += " " + words(rng, 120)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": f" {body} {rng.choice(NEGATIVE)}"})
    rng.shuffle(rows)
    return rows


def expected_counts(rows: list[dict], max_length: int) -> tuple[int, int, int]:
    """(pairs, truncated, did not fit), counted here with the tokenizer: a sequence is prompt ids
    (with the tokenizer's special tokens) + response ids + EOS; the prompt may lose tokens on the left."""
    tok = AutoTokenizer.from_pretrained(str(EMBEDDED))
    truncated = dropped = pairs = 0
    for row in rows:
        completions = row["completions"] if "completions" in row else [row["chosen"], row["rejected"]]
        prompt = len(tok(row["prompt"])["input_ids"])
        lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in completions]
        for a in range(len(lengths)):
            for b in range(a + 1, len(lengths)):
                pairs += 1
                longest = max(lengths[a], lengths[b])
                if prompt + longest > max_length:
                    if longest >= max_length:
                        dropped += 1
                    else:
                        truncated += 1
    return pairs, truncated, dropped


def one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README example, verbatim, in a folder holding prefs.jsonl (some prompts far beyond the context)."""
    root = tmp_path_factory.mktemp("readme")
    write_jsonl(root / "prefs.jsonl", pair_rows(48, seed=0, long_prompts=12))
    write_jsonl(root / "rows.jsonl", [{"prompt": words(random.Random(1), 150), "completion": " a day"},
                                      {"prompt": "the road", "completion": " a lovely house"}])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = runner.invoke(app, "reward --model embedded --train-data prefs.jsonl --output-dir runs/rm".split())
    assert result.exit_code == 0, result.output
    return root


def test_readme_reward_example_runs_with_defaults(readme_run: Path) -> None:
    out = readme_run / "runs" / "rm"
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["data/max_length"] == CONTEXT
    assert yaml.safe_load((out / "config.yaml").read_text())["max_length"] == CONTEXT  # the length it used
    rows = [json.loads(line) for line in (readme_run / "prefs.jsonl").read_text().splitlines()]
    pairs, truncated, dropped = expected_counts(rows, CONTEXT)
    assert truncated >= 12 and dropped == 0
    assert evaluation["data/train_truncated"] + evaluation["data/eval_truncated"] == truncated
    assert evaluation["data/train_dropped"] == evaluation["data/eval_dropped"] == 0


def test_score_runs_with_defaults(readme_run: Path, tmp_path: Path) -> None:
    """The first row's prompt is far beyond the context: it loses tokens on the left."""
    result = runner.invoke(app, ["score", "--model", str(readme_run / "runs" / "rm"), "--data",
                                 str(readme_run / "rows.jsonl"),
                                 "--output", str(tmp_path / "scored.jsonl")])
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 2 and all(isinstance(r["score"], float) for r in scored)


@pytest.mark.parametrize("stage", ["reward", "score"])
def test_too_long_max_length_is_one_line_before_any_work(stage: str, readme_run: Path, tmp_path: Path) -> None:
    if stage == "reward":
        args = ["reward", "--model", "embedded", "--train-data", str(readme_run / "prefs.jsonl"), "--output-dir",
                str(tmp_path / "rm")]
        what = "model"
    else:
        args = ["score", "--model", str(readme_run / "runs" / "rm"), "--data", str(readme_run / "rows.jsonl"),
                "--output", str(tmp_path / "scored.jsonl")]
        what = "reward model"
    result = runner.invoke(app, [*args, "--max-length", "1024"])
    assert result.exit_code == 2
    assert one_error_line(result.output) == (
        f"error: setting 'max_length': 1024 is longer than the {what}'s context ({CONTEXT} tokens, config.json "
        f"n_positions); use at most {CONTEXT}")
    assert not any(tmp_path.iterdir())  # nothing was written
    assert runner.invoke(app, [*args, "--max-length", str(CONTEXT)]).exit_code == 0  # the context itself is fine


@pytest.fixture(scope="module")
def long_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl",
                       [{"prompt": words(random.Random(i), 100)} for i in range(8)])


def ppo_args(prompts: Path, out: Path, *extra: str, policy: str = "embedded") -> list[str]:
    return ["ppo", "--policy", policy, "--prompts", str(prompts), "--output-dir", str(out), "--iterations", "1",
            "--rollout-batch-size", "4", "--num-minibatches", "1", "--update-epochs", "1", "--sample-every", "0",
            *extra]


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-prompt-length", "60", "--max-new-tokens", "10"],
     f"setting 'max_prompt_length': 60 + max_new_tokens 10 = 70 tokens is longer than the policy's context "
     f"({CONTEXT} tokens, config.json n_positions); make the two add up to at most {CONTEXT}"),
    (["--max-new-tokens", str(CONTEXT)],
     f"setting 'max_new_tokens': {CONTEXT} leaves no room for a prompt in the policy's context ({CONTEXT} tokens, "
     f"config.json n_positions); use at most {CONTEXT - 1}"),
])
def test_ppo_lengths_beyond_the_context_are_refused(flags: list[str], message: str, long_prompts: Path,
                                                    tmp_path: Path) -> None:
    result = runner.invoke(app, ppo_args(long_prompts, tmp_path / "ppo", "--reward-fn", "toy_rewards:count_a",
                                         *flags))
    assert result.exit_code == 2
    assert one_error_line(result.output) == f"error: {message}"
    assert not (tmp_path / "ppo").exists()


def test_ppo_defaults_are_lowered_to_fit_and_run(long_prompts: Path, tmp_path: Path) -> None:
    """Defaults 128 + 32 do not fit 64 positions: the prompt default is lowered (said once), and it runs."""
    result = runner.invoke(app, ppo_args(long_prompts, tmp_path / "ppo", "--reward-fn", "toy_rewards:count_a"))
    assert result.exit_code == 0, result.output
    assert "max_prompt_length 128 -> 32" in result.output
    saved = yaml.safe_load((tmp_path / "ppo" / "config.yaml").read_text())
    assert (saved["max_prompt_length"], saved["max_new_tokens"]) == (CONTEXT - 32, 32)


def test_ppo_lengths_must_fit_a_reward_model_that_shares_the_tokenizer(readme_run: Path, long_prompts: Path,
                                                                       tmp_path: Path) -> None:
    """A policy with 128 positions and the embedded tokenizer, scored by a 64-position reward model
    that reads the policy's token ids: 60 + 10 fits the policy but not the reward model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    policy = tmp_path / "policy"
    config = GPT2Config.from_pretrained(str(EMBEDDED), n_positions=2 * CONTEXT)
    GPT2LMHeadModel(config).save_pretrained(policy)
    AutoTokenizer.from_pretrained(str(EMBEDDED)).save_pretrained(policy)
    rm = str(readme_run / "runs" / "rm")
    args = ppo_args(long_prompts, tmp_path / "ppo", "--reward-model", rm, "--max-prompt-length", "60",
                    "--max-new-tokens", "10", policy=str(policy))
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"the reward model's context ({CONTEXT} tokens, config.json n_positions)" in one_error_line(result.output)


def test_pairs_that_do_not_fit_are_counted_in_eval_json(tmp_path: Path) -> None:
    train_rows = pair_rows(40, seed=3, long_prompts=6, long_responses=5)
    # a ranked list of three: the pairs with the long completion cannot fit, the other one can
    rng = random.Random(4)
    train_rows.append({"prompt": "describe the city", "ranks": [0, 1, 2],
                       "completions": [" lovely " + words(rng, 3), " a " + words(rng, 120), " grim " + words(rng, 2)]})
    eval_rows = pair_rows(12, seed=5, long_prompts=3, long_responses=4)
    train, held_out = write_jsonl(tmp_path / "train.jsonl", train_rows), write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    out = tmp_path / "rm"
    result = runner.invoke(app, ["reward", "--model", "embedded", "--train-data", str(train), "--eval-data",
                                 str(held_out), "--output-dir", str(out), "--batch-size", "8"])
    assert result.exit_code == 0, result.output

    train_pairs, train_truncated, train_dropped = expected_counts(train_rows, CONTEXT)
    eval_pairs, eval_truncated, eval_dropped = expected_counts(eval_rows, CONTEXT)
    assert (train_truncated, train_dropped, eval_truncated, eval_dropped) == (6, 7, 3, 4)  # the data as designed
    evaluation = json.loads((out / "eval.json").read_text())
    expected = {"data/train_truncated": train_truncated, "data/train_dropped": train_dropped,
                "data/eval_truncated": eval_truncated, "data/eval_dropped": eval_dropped,
                "eval/pairs": eval_pairs - eval_dropped, "data/max_length": CONTEXT}
    assert {k: evaluation[k] for k in expected} == expected
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k: last[k] for k in expected} == expected
    output = " ".join(result.output.split())
    assert (f"held-out accuracy ({eval_pairs - eval_dropped} of {eval_pairs} pairs; {eval_dropped} did not fit "
            "max_length)") in output
    dropped_rows = [i for i, row in enumerate(eval_rows, start=1) if len(row["chosen"]) > 200]
    assert f"rows {', '.join(map(str, dropped_rows))}); counted in eval.json" in output  # the console names them
