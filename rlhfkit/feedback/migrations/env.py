"""Alembic environment for the feedback store.

The store runs `upgrade head` itself when it opens a database (`FeedbackStore.open`), handing
its connection over in `config.attributes["connection"]`. For a new revision, run from the
repository root:

    .venv/bin/python -m rlhfkit.feedback.migrations "what changes"
"""

from __future__ import annotations

from alembic import context

from rlhfkit.feedback.migrations import VERSION_TABLE
from rlhfkit.feedback.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through rlhfkit.feedback (FeedbackStore.open), not the alembic CLI")


def _skip_empty(_context: object, _revision: object, directives: list) -> None:
    """Write no revision file when schema.py and the migrations already agree."""
    if directives and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        print("schema.py and the migrations agree: no revision written")


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
    process_revision_directives=_skip_empty,
)
with context.begin_transaction():
    context.run_migrations()
