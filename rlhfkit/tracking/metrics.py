"""Metrics: one JSON object per line in metrics.jsonl, optional TensorBoard scalars.

Keys are slash-grouped (`loss/policy`, `reward/mean`, `kl/ref`, `time/generation`); every
record carries `step`. Only the main process writes (pass `enabled=False` on the others).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers; NaN/inf -> None (valid JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append metrics to `<out_dir>/metrics.jsonl` (and TensorBoard when asked)."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = False, enabled: bool = True,
                 filename: str = "metrics.jsonl", append: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / filename
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tb"))

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write one record; returns it with plain Python values."""
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if self._tb is not None:
                for k, v in record.items():
                    if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tb.add_scalar(k, v, step)
        return record

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """The metrics logger of a stage's run: metrics.jsonl in `out_dir`, plus the trackers `cfg` asks for."""
    return MetricsLogger(out_dir, tensorboard=getattr(cfg, "tensorboard", False), enabled=enabled, append=append)
