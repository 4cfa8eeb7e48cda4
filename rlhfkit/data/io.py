"""Read rows (dicts) from JSONL, JSON, CSV, Parquet, a saved `datasets` folder, or a Dataset.

Every error names the file and, where there is one, the line; nothing is read lazily, so a
bad file fails before any training starts. A row is named by ONE number everywhere: its line in
the file for JSONL and CSV (a CSV's header is line 1, so its first data row is row 2), its
position from 1 in a JSON list, a Parquet file or a dataset. `read_rows` returns a `Rows` list
that carries these numbers, and every reader's message takes them from `row_numbers`.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError

Source = str | Path | Any  # a path, or a datasets.Dataset / list of dicts passed in Python


def source_name(source: Source) -> str:
    """How a data source is named in messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"


class Rows(list):
    """A list of row dicts plus `lines`: the number each row is called by in messages (see the module doc)."""

    lines: list[int]


def numbered(rows: list[dict[str, Any]], lines: list[int] | None = None) -> Rows:
    out = Rows(rows)
    out.lines = list(lines) if lines is not None else list(range(1, len(rows) + 1))
    return out


def row_numbers(rows: list[Any]) -> list[int]:
    """The number each row is called by in messages: its line in the file (JSONL, CSV), else its position from 1."""
    lines = getattr(rows, "lines", None)
    return list(lines) if lines is not None and len(lines) == len(rows) else list(range(1, len(rows) + 1))


def read_rows(source: Source) -> Rows:
    """All rows of a data source as a list of dicts (a `Rows`, which knows each row's number)."""
    rows = _read_rows(source)
    return rows if isinstance(rows, Rows) else numbered(rows)


def _read_rows(source: Source) -> list[dict[str, Any]]:
    if isinstance(source, list):
        return [_as_dict(r, "<list>", i + 1) for i, r in enumerate(source)]
    if not isinstance(source, (str, Path)):
        if hasattr(source, "to_list"):  # datasets.Dataset
            return [dict(r) for r in source.to_list()]
        raise DataError(f"{source_name(source)}: cannot read rows from this object; pass a file path, "
                        "a datasets.Dataset or a list of dicts")
    path = Path(source)
    if path.is_dir():
        return _read_dataset_dir(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unknown file type '{suffix}'; use .jsonl, .json, .csv or .parquet")
    try:
        return readers[suffix](path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None


def _as_dict(row: Any, name: str, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{name}, row {line}: expected an object with named fields, got {type(row).__name__}")
    return row


def json_error(e: json.JSONDecodeError, line: int | None = None) -> str:
    """'malformed JSON (Expecting value, line 3 column 7)': one wording for every JSON reader."""
    return f"malformed JSON ({e.msg}, line {e.lineno if line is None else line} column {e.colno})"


def _read_jsonl(path: Path) -> Rows:
    rows, lines = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, row {line_no}: {json_error(e, line_no)}; fix or remove that line") from None
            rows.append(_as_dict(row, str(path), line_no))
            lines.append(line_no)
    return numbered(rows, lines)


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: {json_error(e)}") from None
    if isinstance(data, dict):  # column-oriented {"prompt": [...], ...}
        lengths = {len(v) for v in data.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{path}: expected a list of rows or a mapping of equally long columns")
        n = lengths.pop()
        data = [{k: v[i] for k, v in data.items()} for i in range(n)]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows")
    return [_as_dict(r, str(path), i + 1) for i, r in enumerate(data)]


def _read_csv(path: Path) -> Rows:
    rows, lines = [], []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            rows.append(row)
            # the line the row starts on (the header is line 1; a quoted cell may span lines)
            lines.append(reader.line_num - sum(str(v).count("\n") for v in row.values() if isinstance(v, str)))
    for i, row in zip(lines, rows):
        if None in row:
            raise DataError(f"{path}, row {i}: more values than header columns")
        # Cells that hold JSON lists (chat messages, completions) are decoded.
        for k, v in row.items():
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    row[k] = json.loads(v)
                except json.JSONDecodeError:
                    pass
    return numbered(rows, lines)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot read Parquet ({e})") from None


def _read_dataset_dir(path: Path) -> list[dict[str, Any]]:
    """A folder written by `Dataset.save_to_disk` (or a DatasetDict: its 'train' split)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # FileNotFoundError or datasets' own errors
        raise DataError(f"{path}: not a dataset folder saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return [dict(r) for r in ds.to_list()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines (UTF-8, one object per line) and return how many were written.

    Atomic: the rows go to a temporary file in the same folder (created if missing), which then
    replaces `path` (os.replace); if writing fails, the old file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
