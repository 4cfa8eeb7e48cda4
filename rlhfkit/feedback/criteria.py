"""Reading criteria declarations for the CLI: `--criterion NAME=DESCRIPTION` and criteria files.

A criteria file is YAML, either a mapping or a list, in page order:

    helpful: Answers what the customer asked          # name: description
    harmless: Says nothing unsafe or rude

    - name: helpful                                   # or a list of name/description entries
      description: Answers what the customer asked
    - harmless                                        # (a bare name: no description)

Names and descriptions are checked by the store (`checks.check_criterion_name`); the errors
here name the flag or the file and entry.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.errors import DataError, UserError
from rlhfkit.feedback.checks import check_criterion_description, check_criterion_name
from rlhfkit.feedback.errors import FeedbackError

EXAMPLE = "--criterion 'helpful=Answers what the customer asked'"


def parse_criterion(text: str, flag: str = "--criterion") -> tuple[str, str]:
    """'helpful=Answers what was asked' -> ('helpful', 'Answers what was asked'); a bare name
    has an empty description."""
    name, _, description = text.partition("=")
    try:
        name = check_criterion_name(name.strip())
        return name, check_criterion_description(description, name)
    except FeedbackError as e:
        raise UserError(f"{flag} {text!r}: {e}; e.g. {EXAMPLE}") from None


def parse_criteria(texts: list[str] | None, flag: str = "--criterion") -> list[tuple[str, str]]:
    """Every `flag` given, checked, in order; a name given twice is an error."""
    out: list[tuple[str, str]] = []
    for text in texts or []:
        name, description = parse_criterion(text, flag)
        if any(n == name for n, _ in out):
            raise UserError(f"{flag}: criterion {name!r} is given twice")
        out.append((name, description))
    return out


def read_criteria_file(path: Path) -> list[tuple[str, str]]:
    """The criteria of a YAML file (see the module docstring), checked, in order."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict):
        items = [(str(k), "" if v is None else v, f"entry {k!r}") for k, v in data.items()]
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data, start=1):
            if isinstance(entry, str):
                items.append((entry, "", f"entry {i}"))
            elif isinstance(entry, dict) and set(entry) <= {"name", "description"} and "name" in entry:
                items.append((str(entry["name"]), entry.get("description") or "", f"entry {i}"))
            else:
                raise DataError(f"{path}, entry {i}: expected a name or {{name: ..., description: ...}}, got {entry!r}")
    else:
        raise DataError(f"{path}: expected a mapping (name: description) or a list of criteria, "
                        f"got {type(data).__name__}")
    out: list[tuple[str, str]] = []
    for name, description, where in items:
        try:
            name = check_criterion_name(name)
            description = check_criterion_description(description, name)
        except FeedbackError as e:
            raise DataError(f"{path}, {where}: {e}") from None
        if any(n == name for n, _ in out):
            raise DataError(f"{path}, {where}: criterion {name!r} is given twice")
        out.append((name, description))
    if not out:
        raise DataError(f"{path}: no criteria in the file")
    return out
