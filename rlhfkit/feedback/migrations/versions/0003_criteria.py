"""Ranking criteria: a project ranks its completions by one or more named criteria.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- `criteria` (project, position, name, description): every existing project gets one criterion
  `overall` with an empty description, so its page and exports look as before.
- `ranking_entries` gains `criterion_id`; its primary key becomes (ranking_id, criterion_id,
  completion_id). Every existing rank is kept, as a rank by the project's `overall` criterion.

`ranking_entries` is a leaf table (nothing refers to it), so it is rebuilt: its rows are copied
aside, the table is dropped and created again with the new column, and the rows copied back.
No parent table (rankings, prompts, ...) is ever dropped or recreated: with foreign keys on,
that would cascade-delete their children.

The downgrade keeps the ranks by each project's first criterion (lowest position) and DROPS
the ranks by every other criterion, then the criteria themselves.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ASIDE = "ranking_entries_0003_copy"  # the rows while ranking_entries is rebuilt


def _entries_table(with_criterion: bool) -> None:
    columns = [sa.Column("ranking_id", sa.Integer(), nullable=False)]
    key = ["ranking_id"]
    if with_criterion:
        columns.append(sa.Column("criterion_id", sa.Integer(), nullable=False))
        key.append("criterion_id")
    key.append("completion_id")
    fks = [
        sa.ForeignKeyConstraint(["completion_id"], ["completions.id"],
                                name=op.f("fk_ranking_entries_completion_id_completions"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["ranking_id"], ["rankings.id"], name=op.f("fk_ranking_entries_ranking_id_rankings"),
                                ondelete="CASCADE"),
    ]
    if with_criterion:
        fks.append(sa.ForeignKeyConstraint(["criterion_id"], ["criteria.id"],
                                           name=op.f("fk_ranking_entries_criterion_id_criteria"), ondelete="CASCADE"))
    op.create_table(
        "ranking_entries",
        *columns,
        sa.Column("completion_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.CheckConstraint("rank >= 0", name=op.f("ck_ranking_entries_rank_not_negative")),
        *fks,
        sa.PrimaryKeyConstraint(*key, name=op.f("pk_ranking_entries")),
    )
    op.create_index(op.f("ix_ranking_entries_completion_id"), "ranking_entries", ["completion_id"])
    if with_criterion:
        op.create_index(op.f("ix_ranking_entries_criterion_id"), "ranking_entries", ["criterion_id"])


def _rebuild(select_rows: str, with_criterion: bool) -> None:
    """Copy the rows `select_rows` picks aside, recreate ranking_entries, copy them back."""
    op.execute(f"CREATE TABLE {_ASIDE} AS {select_rows}")
    op.drop_table("ranking_entries")  # its indexes go with it
    _entries_table(with_criterion)
    columns = "ranking_id, criterion_id, completion_id, rank" if with_criterion else "ranking_id, completion_id, rank"
    op.execute(f"INSERT INTO ranking_entries ({columns}) SELECT {columns} FROM {_ASIDE}")
    op.drop_table(_ASIDE)


def upgrade() -> None:
    op.create_table(
        "criteria",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_criteria_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_criteria")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_criteria_project_id_name")),
        sa.UniqueConstraint("project_id", "position", name=op.f("uq_criteria_project_id_position")),
    )
    op.execute("INSERT INTO criteria (project_id, position, name, description) "
               "SELECT id, 0, 'overall', '' FROM projects")
    _rebuild(
        "SELECT e.ranking_id AS ranking_id, c.id AS criterion_id, e.completion_id AS completion_id, e.rank AS rank "
        "FROM ranking_entries e JOIN rankings r ON r.id = e.ranking_id JOIN prompts p ON p.id = r.prompt_id "
        "JOIN criteria c ON c.project_id = p.project_id AND c.position = 0",
        with_criterion=True,
    )


def downgrade() -> None:
    _rebuild(
        "SELECT e.ranking_id AS ranking_id, e.completion_id AS completion_id, e.rank AS rank "
        "FROM ranking_entries e JOIN criteria c ON c.id = e.criterion_id "
        "WHERE c.position = (SELECT MIN(f.position) FROM criteria f WHERE f.project_id = c.project_id)",
        with_criterion=False,
    )
    op.drop_table("criteria")
