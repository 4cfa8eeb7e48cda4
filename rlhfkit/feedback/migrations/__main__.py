"""`python -m rlhfkit.feedback.migrations "message" [--db URL]`: write a new schema revision."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rlhfkit.feedback.migrations import new_revision
from rlhfkit.feedback.store import FeedbackStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("message", help="what the revision changes, e.g. 'add prompt tags'")
    parser.add_argument("--db", help="database at the newest revision to compare with (default: a new SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = FeedbackStore.open(args.db or str(Path(tmp) / "schema.db"))  # upgrades to head
        with store.engine.begin() as connection:
            new_revision(args.message, connection)
        store.close()


if __name__ == "__main__":
    main()
