"""Per-project memberships and roles, revocable tokens, guidelines, rounds, submission content.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- `memberships` (project, annotator, role "annotator" | "admin") replaces the database-wide
  `annotators.is_admin` flag. Existing databases keep every annotator's access: each annotator
  becomes a member of every project, an admin where the flag was set.
- `annotators.revoked_at`: a revoked token stops working; the annotator's rankings stay.
- `projects.guidelines`: what "better" means for the project, shown on the ranking page.
- `prompts.round` (1 for every existing prompt): which sampling round made its completions.
- `submissions.content_hash`: what a submission said, so a reused id with other content is
  refused (NULL for the submissions stored before this revision).

Only ADD COLUMN and DROP COLUMN are used on existing tables, never SQLite's copy-and-rename
batch mode: dropping the old `annotators` table would cascade (foreign keys are on) and delete
every ranking.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memberships",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("role IN ('annotator', 'admin')", name=op.f("ck_memberships_role_known")),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"],
                                name=op.f("fk_memberships_annotator_id_annotators"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_memberships_project_id_projects"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", "annotator_id", name=op.f("pk_memberships")),
    )
    op.create_index(op.f("ix_memberships_annotator_id"), "memberships", ["annotator_id"])
    # Every annotator keeps the access the old database-wide flag gave them, project by project.
    op.execute(
        "INSERT INTO memberships (project_id, annotator_id, role, created_at) "
        "SELECT p.id, a.id, CASE WHEN a.is_admin THEN 'admin' ELSE 'annotator' END, a.created_at "
        "FROM projects p CROSS JOIN annotators a"
    )
    op.drop_column("annotators", "is_admin")
    op.add_column("annotators", sa.Column("revoked_at", sa.DateTime(), nullable=True))
    op.add_column("projects", sa.Column("guidelines", sa.Text(), nullable=True))
    op.add_column("prompts", sa.Column("round", sa.Integer(), server_default="1", nullable=False))
    op.create_index("ix_prompts_project_id_round", "prompts", ["project_id", "round"])
    op.add_column("submissions", sa.Column("content_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("submissions", "content_hash")
    op.drop_index("ix_prompts_project_id_round", "prompts")
    op.drop_column("prompts", "round")
    op.drop_column("projects", "guidelines")
    op.drop_column("annotators", "revoked_at")
    op.add_column("annotators", sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("UPDATE annotators SET is_admin = TRUE WHERE id IN "
               "(SELECT annotator_id FROM memberships WHERE role = 'admin')")
    op.drop_table("memberships")
