"""Errors a user can act on.

Anything raised as a `UserError` is printed by the CLI as one line (`error: ...`) with exit
code 2, never as a stack trace: the message itself must name the file, row or field that is
wrong and say what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config value, a data file, a model path."""


class ConfigError(UserError, ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


class DataError(UserError, ValueError):
    """A data file cannot be read or one of its rows is malformed."""


class ModelError(UserError, ValueError):
    """A model or tokenizer cannot be loaded, or they do not fit together."""


class TrainingError(UserError):
    """A run cannot go on or save its result (diverged weights, a full disk); the message says what is kept."""


def where(path: object, row: int | None = None, field: str | None = None) -> str:
    """Format a location as `file, row N, field 'x'` for error messages (rows count from 1)."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)


def first_line(e: BaseException) -> str:
    """The first line of an error's message (a database driver's wrapped one where there is one)."""
    inner = getattr(e, "orig", None) or e
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return lines[0] if lines else type(inner).__name__
