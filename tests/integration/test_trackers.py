"""`--report-to`: TensorBoard, W&B (offline) and MLflow (a local SQLite store) get the same numbers as
metrics.jsonl, read back with each tracker's own reader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.tracking.metrics import check_trackers, read_metrics
from rlhfkit.trainers.reward import train
from rlhfkit.trainers.reward_config import RewardConfig


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir: Path, rule_pairs_file: Path, rule_eval_file: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trackers")
    out, pairs = folder / "rm", folder / "pairs.jsonl"
    pairs.write_text("".join(rule_pairs_file.read_text().splitlines(keepends=True)[:48]))  # 12 steps of 4
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        train(RewardConfig(model=str(tiny_model_dir), train_data=str(pairs), eval_data=str(rule_eval_file),
                           output_dir=str(out), batch_size=4, max_length=96, seed=0, mixed_precision="no",
                           report_to=["tensorboard", "wandb", "mlflow"]))
    finally:
        mp.undo()
    return out


def jsonl_series(out: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(out / "metrics.jsonl") if r.get(key) is not None}


def test_tensorboard_has_every_logged_value(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((tracked_run / "tb").rglob("events.out.tfevents.*"))[:1]
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    expected = jsonl_series(tracked_run, "loss/train")
    assert len(expected) > 5
    got = {e.step: e.value for e in acc.Scalars("loss/train")}
    assert got.keys() == expected.keys()
    assert all(math.isclose(got[s], expected[s], rel_tol=1e-6) for s in expected)  # float32 in the event file


def test_mlflow_local_store_has_the_metric_history(tracked_run: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(tracked_run / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "rlhfkit"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss/train")}
    expected = jsonl_series(tracked_run, "loss/train")
    assert history.keys() == expected.keys()
    assert all(math.isclose(history[s], expected[s], rel_tol=1e-9) for s in expected)
    assert run.data.params["batch_size"] == "4"  # the settings are the run's parameters


def test_wandb_offline_run_holds_every_logged_value(tracked_run: Path) -> None:
    """The offline run file (what `wandb sync` uploads) stores each value as its JSON text beside its key."""
    (run_file,) = list((tracked_run / "wandb").glob("offline-run-*/run-*.wandb"))
    data = run_file.read_bytes()
    losses = jsonl_series(tracked_run, "loss/train")
    assert len(losses) > 5 and data.count(b"loss/train") >= len(losses)
    assert all(json.dumps(v).encode() in data for v in losses.values())
    final = read_metrics(tracked_run / "metrics.jsonl")[-1]
    assert json.dumps(final["eval/accuracy"]).encode() in data


def test_a_missing_tracker_package_is_one_line_before_any_work(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_trackers(["tensorboard", "wandb"])
