"""`rlhfkit demo --quick`: the whole pipeline on the embedded model, shortened; twice, to check that
the same seed gives the same numbers, and that the report's numbers are the run's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.tracking.metrics import read_metrics

runner = CliRunner()


def run_demo(out: Path) -> dict:
    result = runner.invoke(app, ["demo", "--quick", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads((out / "demo.json").read_text())


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> tuple[Path, dict, dict]:
    base = tmp_path_factory.mktemp("demo")
    first = run_demo(base / "a")
    second = run_demo(base / "b")
    return base / "a", first, second


def test_every_stage_left_its_output(demo_runs) -> None:
    out, _, _ = demo_runs
    for path in ("feedback.db", "comparisons.jsonl", "reward_model/model.safetensors", "ppo/model.safetensors",
                 "ppo_no_guard/model.safetensors", "report.html", "plots/reward.png", "plots/kl.png",
                 "plots/entropy.png", "plots/diversity.png", "plots/reward_model.png"):
        assert (out / path).is_file(), path
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rankings_went_through_the_feedback_store(demo_runs) -> None:
    from rlhfkit.feedback.store import FeedbackStore

    out, summary, _ = demo_runs
    with FeedbackStore.open(out / "feedback.db") as store:
        rankings = store.rankings("demo")
        exported = store.export_rows("demo", format="ranked", merge="majority")
    assert len(rankings) == summary["settings"]["label_prompts"]
    assert [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()] == exported


def test_summary_numbers_come_from_the_runs(demo_runs) -> None:
    out, summary, _ = demo_runs
    rm_eval = json.loads((out / "reward_model" / "eval.json").read_text())
    assert summary["reward_model_accuracy"] == rm_eval["eval/accuracy"]
    for name, folder in summary["runs"].items():
        rows = read_metrics(out / folder / "metrics.jsonl")
        assert summary["kl_final"][name] == pytest.approx(rows[-1]["kl/ref"])
        assert all("gold/mean" in r for r in rows)  # the gold judge is logged every iteration
    ppo_config = (out / "ppo_no_guard" / "config.yaml").read_text()
    assert "kl_coef: 0.0" in ppo_config and "ent_coef: 0.0" in ppo_config
    for name in ("with_guard", "without_guard"):
        assert 0.0 <= summary["win_rate"][name] <= 1.0
    for metric in ("distinct_1", "distinct_2", "repetition"):
        assert set(summary[metric]) == {"start", "with_guard", "without_guard"}
        assert all(0.0 <= v <= 1.0 for v in summary[metric].values()), metric
    html = (out / "report.html").read_text()
    assert f"{100 * summary['win_rate']['with_guard']:.1f}%" in html
    assert f"{100 * summary['reward_model_accuracy']:.1f}%" in html


def test_the_same_seed_gives_the_same_numbers(demo_runs) -> None:
    _, first, second = demo_runs
    for key in ("reward_model_accuracy", "win_rate", "gold", "proxy", "kl_final", "distinct_1", "distinct_2",
                "repetition", "samples"):
        assert first[key] == second[key], key
    assert not any(isinstance(v, float) and math.isnan(v) for v in first["gold"].values())
