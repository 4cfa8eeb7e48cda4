"""Rounds: the iterated recipe from the command line on the embedded tiny model (sample, rank,
export, train a reward model, optimise, sample again from the trained policy into round 2,
rank, export both rounds), and `sample` filling prompts imported without completions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.data import synthetic
from rlhfkit.data.labeler import SimulatedLabeler
from rlhfkit.defaults import EMBEDDED_MODEL
from rlhfkit.feedback.policy import load_policy
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.models.loading import load_causal_lm, load_tokenizer

runner = CliRunner()
K = 3
N_PROMPTS = 6
SAMPLE = ["--k", str(K), "--max-new-tokens", "8"]


def rlhfkit(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def rank_everything(db: str, labeler: SimulatedLabeler) -> int:
    """The simulated labeler ranks every prompt the queue gives it (as the demo does); returns how many."""
    n = 0
    with FeedbackStore.open(db) as store:
        while (view := store.next_prompt("loop", "sim")) is not None:
            ranks = labeler.rank(view.text, [c.text for c in view.completions])
            store.submit_ranking("sim", view.id, {c.id: r for c, r in zip(view.completions, ranks, strict=True)},
                                 annotators_per_prompt=1)
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_iterated_recipe_runs_from_the_cli(tmp_path: Path) -> None:
    db = str(tmp_path / "feedback.db")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in synthetic.prompts(N_PROMPTS, seed=3)))
    labeler = SimulatedLabeler(noise=0.1, seed=0)

    # Round 1: the embedded model's completions, ranked, exported, a reward model trained on them.
    assert "into round 1 of project 'loop'" in rlhfkit("feedback", "sample", prompts, "--db", db, "-p", "loop", *SAMPLE)
    with FeedbackStore.open(db) as store:
        store.add_annotator("sim", "loop")
    assert rank_everything(db, labeler) == N_PROMPTS
    round1 = tmp_path / "round1.jsonl"
    rlhfkit("feedback", "export", "--db", db, "-p", "loop", "--format", "ranked", "--out", round1)
    rm = tmp_path / "rm"
    rlhfkit("reward", "--train-data", round1, "--eval-data", round1, "--output-dir", rm, "--batch-size", "4",
            "--epochs", "1", "--max-length", "64")
    # A short PPO run with LoRA against it, saved as the adapter alone: the next round samples from it.
    policy = tmp_path / "ppo"
    rlhfkit("ppo", "--prompts", prompts, "--reward-model", rm, "--output-dir", policy, "--iterations", "1",
            "--rollout-batch-size", "4", "--num-minibatches", "1", "--update-epochs", "1", "--sample-every", "0",
            "--max-new-tokens", "8", "--lora-r", "4", "--no-save-merged")
    assert not (policy / "config.json").exists() and (policy / "adapter" / "adapter_config.json").is_file()
    # What round 2 samples from is the trained policy: the base with the trained adapter merged in.
    tokenizer = load_tokenizer(policy)
    trained, base = load_policy(str(policy), tokenizer), load_causal_lm(EMBEDDED_MODEL, tokenizer)
    changed = [n for n, w in base.state_dict().items() if not torch.equal(w, trained.state_dict()[n])]
    assert changed and all(".attn." in n or ".mlp." in n for n in changed), changed[:5]

    # Round 2: the same prompts again, sampled by the trained policy, ranked, exported.
    out = rlhfkit("feedback", "sample", prompts, "--db", db, "-p", "loop", "--model", policy, "--new-round",
                  "--max-new-tokens", "8")
    assert f"for each of {N_PROMPTS} prompts into round 2 of project 'loop'" in out
    assert rank_everything(db, labeler) == N_PROMPTS  # only round 2 was left to rank
    with FeedbackStore.open(db) as store:
        assert store.rounds("loop") == [1, 2]
        by_round = {r.round: r for r in store.progress("loop").rounds}
        assert [(by_round[r].prompts, by_round[r].rankings) for r in (1, 2)] == [(N_PROMPTS, N_PROMPTS)] * 2
        second = [store.prompt(pid) for pid in store.round_prompts("loop", 2).values() for pid in [pid[0]]]
        assert {c.model for v in second for c in v.completions} == {str(policy)}
        assert sorted(v.text for v in second) == sorted(synthetic.prompts(N_PROMPTS, seed=3))

    files = {}
    for rounds in ("1", "2", "1,2"):
        files[rounds] = tmp_path / f"rounds-{rounds}.jsonl"
        rlhfkit("feedback", "export", "--db", db, "-p", "loop", "--format", "ranked", "--rounds", rounds,
                "--out", files[rounds])
    rows = {r: read_jsonl(f) for r, f in files.items()}
    assert {row["round"] for row in rows["1"]} == {1} and {row["round"] for row in rows["2"]} == {2}
    assert rows["1,2"] == rows["1"] + rows["2"]
    assert rows["1"] == read_jsonl(round1)  # round 1 exports as it did before round 2 existed
    out = rlhfkit("feedback", "status", "--db", db, "-p", "loop")
    assert "Rounds" in out


def test_sample_fills_prompts_imported_without_completions(tmp_path: Path) -> None:
    """docs/feedback.md: import prompts alone, then `sample` writes their completions."""
    db = str(tmp_path / "feedback.db")
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"prompt": "tell me about the river"}\n{"prompt": "describe the city"}\n')
    rlhfkit("feedback", "import", bare, "--db", db, "-p", "docs", "--k", str(K))
    texts = tmp_path / "prompts.txt"
    texts.write_text("tell me about the river\ndescribe the city\nwrite about a door\n")
    out = rlhfkit("feedback", "sample", texts, "--db", db, "-p", "docs", "--max-new-tokens", "4")  # k: the project's
    assert f"sampled {K} completions for each of 3 prompts (2 imported without completions) into round 1" in out
    with FeedbackStore.open(db) as store:
        views = [store.prompt(i) for i in (1, 2, 3)]
        assert [len(v.completions) for v in views] == [K, K, K]
        assert [v.text for v in views] == ["tell me about the river", "describe the city", "write about a door"]
        assert store.rounds("docs") == [1]
    # Sampling them again needs a new round; the message says so, and nothing changes.
    result = runner.invoke(app, ["feedback", "sample", str(texts), "--db", db, "-p", "docs", "--max-new-tokens", "4"])
    assert result.exit_code == 2
    assert "already have their 3 completions in round 1" in result.output and "--new-round" in result.output
    result = runner.invoke(app, ["feedback", "sample", str(texts), "--db", db, "-p", "docs", "--k", "5"])
    assert result.exit_code == 2 and "project 'docs' has k=3" in result.output
    twice = tmp_path / "twice.txt"
    twice.write_text("a new prompt\nanother\na new prompt\n")
    result = runner.invoke(app, ["feedback", "sample", str(twice), "--db", db, "-p", "docs", "--new-round"])
    assert result.exit_code == 2 and "twice.txt, row 3: the same prompt as row 1" in result.output
    with FeedbackStore.open(db) as store:
        assert store.rounds("docs") == [1]  # nothing was written
