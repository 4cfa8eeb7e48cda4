"""Initial schema: projects, prompts, completions, annotators, rankings and their entries,
submissions, assignments.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Column types are spelled out here rather than imported from schema.py, so this revision keeps
creating the same tables whatever schema.py becomes later. Timestamps are naive UTC.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=False)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "annotators",
        _id(),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotators")),
        sa.UniqueConstraint("name", name=op.f("uq_annotators_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_annotators_token_hash")),
    )
    op.create_table(
        "projects",
        _id(),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("k >= 2", name=op.f("ck_projects_k_at_least_2")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "prompts",
        _id(),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("n_completions", sa.Integer(), nullable=False),
        sa.Column("n_rankings", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        _fk("prompts", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("project_id", "position", name=op.f("uq_prompts_project_id_position")),
    )
    op.create_index(op.f("ix_prompts_project_id"), "prompts", ["project_id"])
    op.create_table(
        "completions",
        _id(),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("sampling", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        _fk("completions", "prompt_id", "prompts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
        sa.UniqueConstraint("prompt_id", "position", name=op.f("uq_completions_prompt_id_position")),
    )
    op.create_index(op.f("ix_completions_prompt_id"), "completions", ["prompt_id"])
    op.create_table(
        "assignments",
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        _timestamp("expires_at"),
        _fk("assignments", "annotator_id", "annotators"),
        _fk("assignments", "prompt_id", "prompts"),
        sa.PrimaryKeyConstraint("annotator_id", "prompt_id", name=op.f("pk_assignments")),
    )
    op.create_index("ix_assignments_prompt_id_expires_at", "assignments", ["prompt_id", "expires_at"])
    op.create_table(
        "rankings",
        _id(),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("skip", sa.Boolean(), nullable=False),
        sa.Column("unsafe", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("submission_id", sa.String(length=100), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _fk("rankings", "annotator_id", "annotators"),
        _fk("rankings", "prompt_id", "prompts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rankings")),
        sa.UniqueConstraint("annotator_id", "prompt_id", name=op.f("uq_rankings_annotator_id_prompt_id")),
        sa.UniqueConstraint("submission_id", name=op.f("uq_rankings_submission_id")),
    )
    op.create_index(op.f("ix_rankings_prompt_id"), "rankings", ["prompt_id"])
    op.create_table(
        "ranking_entries",
        sa.Column("ranking_id", sa.Integer(), nullable=False),
        sa.Column("completion_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.CheckConstraint("rank >= 0", name=op.f("ck_ranking_entries_rank_not_negative")),
        _fk("ranking_entries", "completion_id", "completions"),
        _fk("ranking_entries", "ranking_id", "rankings"),
        sa.PrimaryKeyConstraint("ranking_id", "completion_id", name=op.f("pk_ranking_entries")),
    )
    op.create_index(op.f("ix_ranking_entries_completion_id"), "ranking_entries", ["completion_id"])
    op.create_table(
        "submissions",
        sa.Column("submission_id", sa.String(length=100), nullable=False),
        sa.Column("ranking_id", sa.Integer(), nullable=False),
        _timestamp("received_at"),
        _fk("submissions", "ranking_id", "rankings"),
        sa.PrimaryKeyConstraint("submission_id", name=op.f("pk_submissions")),
    )
    op.create_index(op.f("ix_submissions_ranking_id"), "submissions", ["ranking_id"])


def downgrade() -> None:
    # Children before parents; indexes go with their tables.
    for table in ("submissions", "ranking_entries", "rankings", "assignments", "completions", "prompts",
                  "projects", "annotators"):
        op.drop_table(table)
