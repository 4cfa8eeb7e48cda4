"""Names with one meaning across the package, kept free of heavy imports so the CLI starts fast."""

from __future__ import annotations

EMBEDDED_MODEL = "embedded"
"""Model name that stands for the tiny model shipped in rlhfkit/assets (works offline)."""

DEFAULT_DB = "feedback.db"
"""The feedback store used when `--db` is not given: a SQLite file in the working directory."""
