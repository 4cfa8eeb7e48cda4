"""Console output: a rich progress bar that shows the latest metrics, and summary tables.

When stderr is not a terminal (CI, Slurm, nohup, a pipe) a bar would print nothing until the
stage ends, so a plain line is printed instead every RLHFKIT_PROGRESS_EVERY seconds (default 30)
and when the stage ends: `ppo 12/100 (12%) 0:01:05 elapsed, ~0:07:57 left  reward 1.2  kl 0.03`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: Any, keys: tuple[str, ...]) -> None:
        self._progress, self._task, self._keys = progress, task, keys

    def update(self, advance: int = 1, **metrics: Any) -> None:
        """Advance the bar and show the given metrics (only the keys chosen at creation)."""
        if self._progress is None:
            return
        shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in self._keys if isinstance(metrics.get(k), (int, float)))
        self._progress.update(self._task, advance=advance, metrics=shown)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class PlainProgress:
    """Progress as a plain line every `every` seconds (and at the end), for output that is not a terminal."""

    def __init__(self, total: int, description: str, keys: tuple[str, ...], every: float) -> None:
        self.total, self.description, self.keys, self.every = total, description, keys, every
        self.done, self.metrics = 0, ""
        self.start = self.last = time.monotonic()
        self.start_done = 0
        self.printed = -1  # `done` when the last line was printed

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = f", ~{_clock((self.total - self.done) / rate)} left" if rate > 0 and self.total > self.done else ""
        return (f"{self.description} {self.done}/{self.total}{share} {_clock(elapsed)} elapsed{left}"
                + (f"  {self.metrics}" if self.metrics else ""))

    def update(self, advance: int = 1, **metrics: Any) -> None:
        if self.done == 0 and advance and not metrics:  # a resumed run skipping the iterations done before
            self.start_done = advance
        self.done += advance
        shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in self.keys if isinstance(metrics.get(k), (int, float)))
        self.metrics = shown or self.metrics
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._print()

    def _print(self) -> None:
        self.printed = self.done
        print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.printed != self.done:
            self._print()


def progress_every() -> float:
    """Seconds between plain progress lines (RLHFKIT_PROGRESS_EVERY, default 30)."""
    try:
        return max(float(os.environ.get("RLHFKIT_PROGRESS_EVERY", "30")), 0.0)
    except ValueError:
        return 30.0


@contextmanager
def progress_bar(total: int, description: str, keys: tuple[str, ...] = (), enabled: bool = True) -> Iterator[Any]:
    """A progress bar with the named metrics beside it (plain lines when stderr is not a terminal); a no-op
    when disabled (non-main ranks)."""
    if not enabled:
        yield _Bar(None, None, keys)
        return
    if not console.is_terminal:
        plain = PlainProgress(total, description, keys, progress_every())
        try:
            yield plain
        finally:
            plain.close()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=console,
    )
    with progress:
        task = progress.add_task(description, total=total, metrics="")
        yield _Bar(progress, task, keys)


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column table of name -> value."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
