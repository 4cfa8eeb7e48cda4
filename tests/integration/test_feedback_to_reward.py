"""The feedback loop end to end: a model samples K completions into the store, rankings are
submitted through the store API, `rlhfkit feedback export` writes comparisons, and
`rlhfkit reward` trains on that file unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.feedback.store import FeedbackStore

runner = CliRunner()


def test_sample_rank_export_and_train(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the river\ndescribe the city\nwrite about a door\nwhat happened to the light\n")
    db = str(tmp_path / "feedback.db")
    result = runner.invoke(app, ["feedback", "sample", str(prompts), "--db", db, "--project", "p", "--model",
                                 str(tiny_model_dir), "--k", "3", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output

    # an annotator who prefers completions with more letters 'a' (ties broken by order)
    with FeedbackStore.open(db) as store:
        store.add_annotator("ann")
        n = 0
        while (view := store.next_prompt("p", "ann")) is not None:
            ids = [c.id for c in view.completions]
            texts = [c.text for c in view.completions]
            assert len(ids) == 3 and all(isinstance(t, str) for t in texts)
            order = sorted(range(3), key=lambda i: (-texts[i].count("a"), i))
            store.submit_ranking("ann", view.id, order=[ids[i] for i in order])
            n += 1
    assert n == 4

    pairs = tmp_path / "pairs.jsonl"
    result = runner.invoke(app, ["feedback", "export", "--db", db, "--project", "p", "--out", str(pairs)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows and all(set(r) >= {"prompt", "chosen", "rejected"} for r in rows)

    out = tmp_path / "rm"
    result = runner.invoke(app, ["reward", "--model", str(tiny_model_dir), "--train-data", str(pairs), "--eval-data",
                                 str(pairs), "--output-dir", str(out), "--batch-size", "4", "--max-length", "64"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "eval.json").read_text())["eval/pairs"] == len(rows)


def test_sample_rejects_bad_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = runner.invoke(app, ["feedback", "sample", str(empty), "--db", str(tmp_path / "f.db"), "--project", "p",
                                 "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and "no prompts" in result.output
    ok = tmp_path / "ok.txt"
    ok.write_text("describe the city\n")
    result = runner.invoke(app, ["feedback", "sample", str(ok), "--db", str(tmp_path / "f.db"), "--project", "p",
                                 "--model", str(tiny_model_dir), "--k", "1"])
    assert result.exit_code == 2 and "--k: must be from 2" in result.output
