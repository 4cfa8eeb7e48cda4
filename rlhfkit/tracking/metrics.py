"""Metrics: one JSON object per line in metrics.jsonl, and the experiment trackers asked for.

Keys are slash-grouped (`loss/policy`, `reward/mean`, `kl/ref`, `time/generation`); every
record carries `step`. Only the main process writes (pass `enabled=False` on the others).
`--report-to tensorboard,wandb,mlflow` sends the same numbers to accelerate's trackers
(`accelerate.tracking`), with the run's settings as their hyperparameters.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers; NaN/inf -> None (valid JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append metrics to `<out_dir>/metrics.jsonl` and to the trackers in `report_to`."""

    def __init__(self, out_dir: str | Path, report_to: list[str] | tuple[str, ...] = (), enabled: bool = True,
                 filename: str = "metrics.jsonl", append: bool = False, run_name: str = "rlhfkit",
                 settings: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / filename
        self.trackers: list[Any] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w")
        for name in report_to:
            tracker = _make_tracker(name, Path(out_dir), run_name)
            tracker.start()
            if settings:
                tracker.store_init_configuration(_hparams(settings))
            self.trackers.append(tracker)

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write one record; returns it with plain Python values."""
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            numbers = {k: v for k, v in record.items() if k not in ("step", "time")
                       and isinstance(v, (int, float)) and not isinstance(v, bool)}
            for tracker in self.trackers:
                if numbers:
                    tracker.log(numbers, step=int(step))
        return record

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            for tracker in self.trackers:
                tracker.finish()
            self.trackers = []

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_trackers(report_to: list[str]) -> None:
    """Fail before any work when a tracker's package is missing (one line that says what to install)."""
    for name in report_to:
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            pip = "mlflow-skinny" if name == "mlflow" else package
            raise ConfigError(f"setting 'report_to': {name} needs the {package} package; pip install {pip} "
                              "(or pip install 'rlhfkit[trackers]'), or leave it out of --report-to")


def _make_tracker(name: str, out_dir: Path, run_name: str) -> Any:
    from accelerate import tracking

    if name == "tensorboard":
        return tracking.TensorBoardTracker(run_name, out_dir / "tb")
    if name == "wandb":  # WANDB_MODE=offline keeps the run in out_dir/wandb; `wandb sync` uploads it later
        return tracking.WandBTracker(os.environ.get("WANDB_PROJECT", "rlhfkit"), name=run_name, dir=str(out_dir))
    if name == "mlflow":
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):  # a local store beside the run: one SQLite file
            mlflow.set_tracking_uri(f"sqlite:///{(out_dir / 'mlflow.db').resolve()}")
        return tracking.MLflowTracker(experiment_name="rlhfkit", run_name=run_name)
    raise ConfigError(f"setting 'report_to': unknown tracker {name!r}")


def _hparams(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as tracker hyperparameters: lists become comma-separated text."""
    return {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in settings.items()}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file (a truncated last line from a killed run is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def open_metrics(out_dir: str | Path, cfg: Any, *, enabled: bool = True, append: bool = False) -> MetricsLogger:
    """The metrics logger of a stage's run: metrics.jsonl in `out_dir`, plus the trackers `cfg.report_to` asks for,
    named after the stage and the output folder."""
    import dataclasses

    report_to = list(cfg.report_to)
    check_trackers(report_to)
    name = f"{getattr(cfg, 'STAGE', '') or 'run'}-{Path(cfg.output_dir).name}"
    return MetricsLogger(out_dir, report_to=report_to, enabled=enabled, append=append, run_name=name,
                         settings=dataclasses.asdict(cfg) if report_to else None)
