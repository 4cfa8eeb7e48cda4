"""The store's base: the engine and its sessions, opening (and migrating) the database, the
read and write transactions, the lookups every part of the store shares (a project, annotator
or prompt by name or id) and the prompt and ranking views built from rows.

The mixins in store_projects.py, store_annotators.py, store_rankings.py and store_reports.py
add the API on top of it; `FeedbackStore` (store.py) is all of them in one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.defaults import DEFAULT_DB
from rlhfkit.errors import first_line
from rlhfkit.feedback import reports
from rlhfkit.feedback.checks import DEFAULT_CRITERION, is_row_id
from rlhfkit.feedback.database import DURABLE_OPTION, SQLITE_BUSY_TIMEOUT_S, WRITE_OPTION, database_url, make_engine
from rlhfkit.feedback.errors import DatabaseUnavailable, FeedbackError, NotFound
from rlhfkit.feedback.records import AnnotatorInfo, CompletionView, ProjectInfo, PromptView, RankingView
from rlhfkit.feedback.schema import Annotator, Completion, Criterion, Project, Prompt, Ranking

_MIGRATION_LOCK = 7_240_513  # any constant: PostgreSQL advisory lock held while migrating
StoreT = TypeVar("StoreT", bound="StoreBase")  # `open` and `with` give the class they are called on


class StoreBase:
    """The engine, its transactions and the lookups and views the store's mixins share."""

    def __init__(self, engine: Engine) -> None:
        """Use `FeedbackStore.open(url)`: it also checks the connection and migrates."""
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        # Writers are marked so that SQLite takes the write lock at BEGIN (see _sqlite_engine).
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        self._write_lenient = sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True, DURABLE_OPTION: False}), expire_on_commit=False
        )
        # SQLite has one writer at a time. Writers of this process queue on a lock instead of
        # polling the database's busy handler, whose growing sleeps (up to 100 ms a try) make
        # the slowest requests of a busy labeling session take seconds. Other processes still
        # wait through the busy timeout.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    # ----- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls: type[StoreT], url: str | Path = DEFAULT_DB) -> StoreT:
        """Open (and create or upgrade to the current schema) the database at a path or URL."""
        from alembic.util.exc import CommandError

        from rlhfkit.feedback import migrations

        sa_url = database_url(url)
        shown = sa_url.render_as_string(hide_password=True)
        engine = make_engine(sa_url)
        store = cls(engine)
        try:
            with store._write_engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # Two processes opening a new database at once must not both create tables.
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                migrations.upgrade(connection)
        except DBAPIError as e:
            engine.dispose()
            raise DatabaseUnavailable(f"cannot open database {shown}: {first_line(e)}") from None
        except CommandError as e:
            engine.dispose()
            raise FeedbackError(
                f"database {shown}: {first_line(e)}; it was written by a newer rlhfkit (this one knows "
                f"schema revision {migrations.head_revision()}): upgrade rlhfkit"
            ) from None
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self: StoreT) -> StoreT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._read() as s, s.begin():
            yield s

    @contextmanager
    def _writing(self, durable: bool = True) -> Iterator[Session]:
        """A write transaction, committed at the end of the block. `durable=False` (SQLite):
        the commit may be lost in a power cut, not in a crash of this program; for leases,
        which expire anyway, so that handing out a prompt costs no disk flush."""
        maker = self._write if durable else self._write_lenient
        if self._write_lock is None:
            with maker() as s, s.begin():
                yield s
            return
        if not self._write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise DatabaseUnavailable(f"database {self.url}: busy for over {SQLITE_BUSY_TIMEOUT_S:.0f} s; try again")
        try:
            with maker() as s, s.begin():
                yield s
        finally:
            self._write_lock.release()

    # ----- lookups -----------------------------------------------------------------------------
    @staticmethod
    def _project(s: Session, project: str | ProjectInfo, *, lock: bool = False) -> ProjectInfo:
        """The project; `lock` takes its row lock on PostgreSQL (SQLite writers are serialised)."""
        if isinstance(project, ProjectInfo) and not (lock and s.get_bind().dialect.name != "sqlite"):
            return project  # came from this store (projects are never deleted): no query needed
        name = project.name if isinstance(project, ProjectInfo) else project
        q = select(Project).where(Project.name == name)
        row = s.scalar(q.with_for_update() if lock else q)  # FOR UPDATE: PostgreSQL only (SQLite has BEGIN IMMEDIATE)
        if row is None:
            known = s.scalars(select(Project.name).order_by(Project.name)).all()
            hint = f"known projects: {', '.join(known)}" if known else "the database has no projects yet"
            raise NotFound(f"project {name!r} not found ({hint})")
        return _project_info(row)

    @staticmethod
    def _annotator(s: Session, annotator: str | AnnotatorInfo) -> AnnotatorInfo:
        if isinstance(annotator, AnnotatorInfo):
            return annotator  # came from this store (annotators are never deleted): no query needed
        row = s.scalar(select(Annotator).where(Annotator.name == annotator))
        if row is None:
            raise NotFound(f"annotator {annotator!r} not found; add one with `rlhfkit feedback add-annotator`")
        return _annotator_info(row)

    @staticmethod
    def _annotator_row(s: Session, name: str) -> Annotator:
        row = s.scalar(select(Annotator).where(Annotator.name == name))
        if row is None:
            known = s.scalars(select(Annotator.name).order_by(Annotator.name)).all()
            hint = f"known annotators: {', '.join(known)}" if known else "the database has no annotators yet"
            raise NotFound(f"annotator {name!r} not found ({hint})")
        return row

    @staticmethod
    def _prompt(s: Session, prompt_id: int, project: ProjectInfo | None = None) -> Prompt:
        row = s.get(Prompt, prompt_id) if is_row_id(prompt_id) else None
        if row is None or (project is not None and row.project_id != project.id):
            where = f" in project {project.name!r}" if project is not None else ""
            raise NotFound(f"prompt {prompt_id!r} not found{where}")
        return row

    def project(self, name: str) -> ProjectInfo:
        """The project called `name` (NotFound lists the known ones)."""
        with self._reading() as s:
            return self._project(s, name)

    # ----- record building ---------------------------------------------------------------------
    @staticmethod
    def _ranking_view(s: Session, r: Ranking, annotator_name: str) -> RankingView:
        first = s.scalar(select(Criterion.name).join(Prompt, Prompt.project_id == Criterion.project_id)
                         .where(Prompt.id == r.prompt_id).order_by(Criterion.position).limit(1))
        return reports.ranking_view(r, annotator_name, reports.ranking_entries(s, r.id), first or DEFAULT_CRITERION)

    def _prompt_view(
        self, s: Session, prompt: Prompt, annotator: AnnotatorInfo | None, project_name: str | None = None
    ) -> PromptView:
        if project_name is None:
            project_name = s.scalar(select(Project.name).where(Project.id == prompt.project_id)) or ""
        cs = s.scalars(select(Completion).where(Completion.prompt_id == prompt.id).order_by(Completion.position))
        ranking = None
        if annotator is not None:
            r = s.scalar(select(Ranking).where(Ranking.annotator_id == annotator.id, Ranking.prompt_id == prompt.id))
            ranking = None if r is None else self._ranking_view(s, r, annotator.name)
        return PromptView(
            id=prompt.id,
            project=project_name,
            position=prompt.position,
            text=prompt.text,
            completions=[CompletionView(c.id, c.position, c.text, c.model, dict(c.sampling)) for c in cs],
            ranking=ranking,
            criteria=reports.criteria(s, prompt.project_id),
        )


def _project_info(p: Project) -> ProjectInfo:
    return ProjectInfo(p.id, p.name, p.k, p.guidelines)


def _annotator_info(a: Annotator) -> AnnotatorInfo:
    return AnnotatorInfo(a.id, a.name)

