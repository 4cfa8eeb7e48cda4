"""Console output: a rich progress bar that shows the latest metrics, and summary tables."""

from __future__ import annotations

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


@contextmanager
def progress_bar(total: int, description: str, keys: tuple[str, ...] = (), enabled: bool = True) -> Iterator[_Bar]:
    """A progress bar with the named metrics beside it; a no-op when disabled (non-main ranks)."""
    if not enabled:
        yield _Bar(None, None, keys)
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
