"""The feedback store's tables (SQLAlchemy 2 typed ORM), the same on SQLite and PostgreSQL.

    projects ─< criteria                        (what annotators rank by: "helpful", "harmless", ...;
       │                                          at least one per project, "overall" by default)
       └──< prompts ─< completions          (K completions per prompt, in order; prompts
                   │                             belong to a round: 1, 2, ... one per sampling)
                   └─< rankings >─ annotators   (one ranking per annotator and prompt)
                          ├─< ranking_entries   (a rank per criterion and completion: ties allowed)
                          └─< submissions       (every client submission id ever accepted)
    memberships: which annotators work on which project, as "annotator" or "admin"
    assignments: which annotator holds which prompt right now (a lease, so that annotators
                 working at the same time are given different prompts)

The schema is created and upgraded by the Alembic revisions in `migrations/`; a test checks
that they produce exactly these tables. Timestamps are stored as naive UTC (SQLite has no
time zones) and come back as aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from rlhfkit.feedback.checks import (
    MAX_CRITERION_CHARS,
    MAX_MODEL_CHARS,
    MAX_NAME_CHARS,
    MAX_SUBMISSION_ID_CHARS,
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python (SQLite would drop the offset anyway)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


# Deterministic constraint names, so that migrations can refer to them on both backends.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (CheckConstraint("k >= 2", name="k_at_least_2"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), unique=True)
    k: Mapped[int] = mapped_column(Integer)  # completions per prompt
    guidelines: Mapped[str | None] = mapped_column(Text)  # what "better" means, shown on the page as text
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Criterion(Base):
    """One thing annotators rank the completions by (Llama 2 kept helpfulness and safety apart);
    every ranking of a prompt carries a full ranking per criterion of its project."""

    __tablename__ = "criteria"
    __table_args__ = (UniqueConstraint("project_id", "name"), UniqueConstraint("project_id", "position"))

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # order on the page and in exports
    name: Mapped[str] = mapped_column(String(MAX_CRITERION_CHARS))  # a slug: the export's "criterion" value
    description: Mapped[str] = mapped_column(Text, default="")  # one line shown to annotators


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("project_id", "position"),
        Index("ix_prompts_project_id_round", "project_id", "round"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order within the project: labeling order
    # Which sampling round made its completions (1 first): the same text may come back in a later
    # round with completions from a newer policy.
    round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    text: Mapped[str] = mapped_column(Text)
    # Counts kept up to date by the store in the same transactions that change them, so that
    # choosing the next prompt skips full prompts by looking at the prompt row alone.
    n_completions: Mapped[int] = mapped_column(Integer, default=0)
    n_rankings: Mapped[int] = mapped_column(Integer, default=0)  # skips not counted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    completions: Mapped[list[Completion]] = relationship(
        order_by="Completion.position", back_populates="prompt", cascade="all, delete-orphan"
    )


class Completion(Base):
    __tablename__ = "completions"
    __table_args__ = (UniqueConstraint("prompt_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order index among the prompt's K completions
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(MAX_MODEL_CHARS))  # model id that generated it
    sampling: Mapped[dict[str, Any]]  # temperature, top_p, max_new_tokens, seed, ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship(back_populates="completions")


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), unique=True)
    # sha256 of the token: a stolen database does not give anyone a way to sign in. Rotating
    # the token replaces it; revoking sets revoked_at and the token stops working everywhere.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Membership(Base):
    """An annotator working on one project, with a role there: "annotator" ranks, "admin" also
    sees the admin page. No membership: the project's page and API refuse them (403)."""

    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('annotator', 'admin')", name="role_known"),)

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(
        ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Ranking(Base):
    __tablename__ = "rankings"
    # One ranking per annotator and prompt: ranking a prompt again updates this row.
    __table_args__ = (UniqueConstraint("annotator_id", "prompt_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)  # increases with first submission: "back" order
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    skip: Mapped[bool] = mapped_column(Boolean, default=False)
    unsafe: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str | None] = mapped_column(Text)
    # The submission that last wrote this row; older ones of the same row live in `submissions`.
    submission_id: Mapped[str] = mapped_column(String(MAX_SUBMISSION_ID_CHARS), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    entries: Mapped[list[RankingEntry]] = relationship(
        back_populates="ranking", cascade="all, delete-orphan", passive_deletes=True
    )


class RankingEntry(Base):
    """The rank one annotator gave one completion by one criterion: 0 is best, equal ranks are ties."""

    __tablename__ = "ranking_entries"
    __table_args__ = (CheckConstraint("rank >= 0", name="rank_not_negative"),)

    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"), primary_key=True)
    criterion_id: Mapped[int] = mapped_column(
        ForeignKey("criteria.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    completion_id: Mapped[int] = mapped_column(
        ForeignKey("completions.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    rank: Mapped[int] = mapped_column(Integer)

    ranking: Mapped[Ranking] = relationship(back_populates="entries")


class Submission(Base):
    """Every submission id the store accepted: a retry of any of them (same content) changes nothing.

    Without this log, a late retry of a superseded submission (the annotator went back and
    changed the ranking meanwhile) would silently undo the change.
    """

    __tablename__ = "submissions"

    submission_id: Mapped[str] = mapped_column(String(MAX_SUBMISSION_ID_CHARS), primary_key=True)
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"), index=True)
    # sha256 of what it said (ranks, skip, unsafe, comment): an id sent again with other content
    # is refused rather than taken for a retry. NULL for submissions stored before revision 0002.
    content_hash: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Assignment(Base):
    """A prompt handed to an annotator and not ranked yet; it counts towards the prompt's
    annotators until `expires_at`, so concurrent annotators are spread over prompts."""

    __tablename__ = "assignments"
    __table_args__ = (Index("ix_assignments_prompt_id_expires_at", "prompt_id", "expires_at"),)

    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True)
    expires_at: Mapped[datetime]
