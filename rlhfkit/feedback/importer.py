"""Reading prompts (and optionally their completions) from a JSON-lines file for `feedback import`.

One object per line, blank lines ignored:

    {"prompt": "Write a haiku about rain.", "completions": ["...", "...", "...", "..."]}
    {"prompt": "Explain tides to a child."}

`completions` is optional, but give it on every line or on none (prompts without completions
get them later from `rlhfkit feedback sample`). Errors name the file, the row and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import DataError, where

FIELDS = ("prompt", "completions")
EXAMPLE = '{"prompt": "...", "completions": ["...", "..."]}'


@dataclass(frozen=True)
class PromptRow:
    row: int  # line number in the file, from 1
    prompt: str
    completions: list[str] | None


def read_prompt_file(path: str | Path, k: int | None = None) -> list[PromptRow]:
    """Read and check every row; `k`, when known, is the number of completions each row must have."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    rows: list[PromptRow] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append(_parse(path, number, line, k))
    if not rows:
        raise DataError(f"{path}: no prompts (the file is empty); write one JSON object per line: {EXAMPLE}")
    with_completions = [r for r in rows if r.completions is not None]
    if with_completions and len(with_completions) != len(rows):
        bare = next(r for r in rows if r.completions is None)
        raise DataError(
            f"{where(path, bare.row, 'completions')}: missing, but row {with_completions[0].row} has them; "
            "give completions on every row or on none"
        )
    seen: dict[str, int] = {}
    for r in rows:
        if r.prompt in seen:
            raise DataError(
                f"{where(path, r.row, 'prompt')}: the same prompt as row {seen[r.prompt]}; remove one of them"
            )
        seen[r.prompt] = r.row
    return rows


def _parse(path: Path, number: int, line: str, k: int | None) -> PromptRow:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, number)}: not valid JSON ({e.msg}); expected {EXAMPLE}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where(path, number)}: expected a JSON object like {EXAMPLE}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise DataError(f"{where(path, number, unknown[0])}: unknown field; the fields are {', '.join(FIELDS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where(path, number, 'prompt')}: must be non-empty text, got {prompt!r}")
    completions = obj.get("completions")
    if completions is not None:
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise DataError(f"{where(path, number, 'completions')}: must be a list of texts")
        if k is not None and len(completions) != k:
            raise DataError(
                f"{where(path, number, 'completions')}: {len(completions)} given; the project takes exactly k={k}"
            )
    return PromptRow(number, prompt, completions)
