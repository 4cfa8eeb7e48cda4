"""Schema migrations of the feedback store (Alembic), run by the store itself.

`upgrade(connection)` brings a database to the newest revision; `FeedbackStore.open` calls it,
so users never run Alembic by hand. Developers changing `schema.py` add a revision with

    .venv/bin/python -m rlhfkit.feedback.migrations "what changes" [--db URL]

which compares the tables of a database at the newest revision (a temporary SQLite file by
default) with `schema.py` and writes the difference to `versions/`; review it before use.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "rlhfkit_feedback_version"
"""Not Alembic's default `alembic_version`: a PostgreSQL database shared with another
Alembic-managed application would otherwise mix up the two histories."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this folder (no alembic.ini: nothing to find on disk)."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision id this version of rlhfkit knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration revisions found"
    return head


def upgrade(connection: Connection) -> None:
    """Run `alembic upgrade head` on an open connection (inside the caller's transaction)."""
    command.upgrade(alembic_config(connection), "head")


def new_revision(message: str, connection: Connection) -> None:
    """Autogenerate a revision from the difference between the database and schema.py."""
    command.revision(alembic_config(connection), message=message, autogenerate=True)
