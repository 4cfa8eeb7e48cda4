"""The feedback store: prompts, their K completions, annotators and their rankings.

A Python API over SQLAlchemy, usable without the web app (a simulated labeler writes through
`submit_ranking` as a person does through the page):

    store = FeedbackStore.open("feedback.db")            # or "postgresql+psycopg://u:p@host/db"
    store.create_project("demo", k=4)
    [pid] = store.add_prompts("demo", ["Write a haiku about rain."])
    store.add_completions(pid, ["...", "...", "...", "..."], model="gpt2", sampling={"temperature": 1.0})
    token = store.add_annotator("ada", project="demo")   # the clear token, shown once
    view = store.next_prompt("demo", "ada", annotators_per_prompt=2)
    store.submit_ranking("ada", view.id, order=[c.id for c in reversed(view.completions)],
                         submission_id="any-unique-id")   # commits before returning
    rows = store.export_rows("demo", format="pairwise")

This module's one job is the store itself: opening the database, its transactions, and writing
and looking up projects, prompts, completions, annotators and rankings. The labelling queue
(which prompt an annotator gets next) is in `queue.py`, the reports (progress, agreement, export
rows) in `reports.py`; `FeedbackStore` runs their queries in its transactions, so the API is one.

SQLite is the default (a file, WAL journal so readers never wait for the writer, foreign keys
on, a busy timeout so concurrent writers queue instead of failing); PostgreSQL by URL runs the
same code. Opening a database brings its schema up to date (Alembic, `migrations/`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.defaults import DEFAULT_DB
from rlhfkit.errors import first_line
from rlhfkit.feedback import queue, reports
from rlhfkit.feedback.agreement import AgreementReport
from rlhfkit.feedback.checks import (
    DEFAULT_CRITERION,
    MAX_COMMENT_CHARS,
    MAX_K,
    MAX_TOKEN_CHARS,
    MIN_K,
    check_completions,
    check_criterion_description,
    check_criterion_name,
    check_model,
    check_name,
    check_sampling,
    check_submission_id,
    check_text,
    is_row_id,
    normalise_ranking,
)
from rlhfkit.feedback.database import (
    DURABLE_OPTION,
    SQLITE_BUSY_TIMEOUT_S,
    WRITE_OPTION,
    database_url,
    hash_token,
    make_engine,
)
from rlhfkit.feedback.errors import Conflict, DatabaseUnavailable, FeedbackError, Forbidden, InvalidRanking, NotFound
from rlhfkit.feedback.queue import LEASE_SECONDS
from rlhfkit.feedback.records import (
    ROLES,
    AnnotatorInfo,
    AnnotatorProgress,
    CommentView,
    CompletionView,
    CriterionInfo,
    MemberInfo,
    ProjectInfo,
    ProjectProgress,
    PromptDetail,
    PromptSummary,
    PromptView,
    RankingView,
    SubmitResult,
)
from rlhfkit.feedback.schema import (
    Annotator,
    Assignment,
    Completion,
    Criterion,
    Membership,
    Project,
    Prompt,
    Ranking,
    RankingEntry,
    Submission,
    utcnow,
)

__all__ = [  # the records and errors are re-exported: `from rlhfkit.feedback.store import ...`
    "AgreementReport", "AnnotatorInfo", "AnnotatorProgress", "CommentView", "CompletionView", "Conflict",
    "CriterionInfo", "DatabaseUnavailable", "FeedbackError", "FeedbackStore", "Forbidden", "InvalidRanking",
    "MemberInfo", "NotFound",
    "ProjectInfo", "ProjectProgress", "PromptDetail", "PromptSummary", "PromptView", "RankingView", "SubmitResult",
    "LEASE_SECONDS", "ROLES",
]

# Who a token belongs to, and their role in one project (NULL: no member); built once.
_TOKEN_LOOKUP = (
    select(Annotator.id, Annotator.name, Annotator.revoked_at, Membership.role)
    .outerjoin(Membership, and_(Membership.annotator_id == Annotator.id,
                                Membership.project_id == bindparam("project_id")))
    .where(Annotator.token_hash == bindparam("token_hash"))
)
_SUBMIT_ATTEMPTS = 3  # PostgreSQL: a concurrent insert of the same ranking is retried as an update
_MIGRATION_LOCK = 7_240_513  # any constant: PostgreSQL advisory lock held while migrating

T = TypeVar("T")
Criteria = Mapping[str, str] | Sequence[tuple[str, str]]
"""Criteria to declare: {name: description} or [(name, description), ...], in page order."""


class FeedbackStore:
    """Projects, prompts, completions, annotators and rankings in one database."""

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
    def open(cls, url: str | Path = DEFAULT_DB) -> FeedbackStore:
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

    def __enter__(self) -> FeedbackStore:
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

    # ----- projects ----------------------------------------------------------------------------
    def create_project(
        self, name: str, k: int, *, exist_ok: bool = False, criteria: Criteria | None = None
    ) -> ProjectInfo:
        """A new project whose prompts each get `k` completions to rank (2 <= k <= MAX_K), by
        `criteria` (default: one, "overall", with no description)."""
        name = check_name(name, "project name")
        wanted = _check_criteria(criteria) if criteria is not None else [(DEFAULT_CRITERION, "")]
        if not wanted:
            raise FeedbackError(f"project {name!r}: give at least one criterion (or none for {DEFAULT_CRITERION!r})")
        if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
            raise FeedbackError(
                f"k (completions per prompt) must be an integer from {MIN_K} to {MAX_K}, got {k!r}: "
                "ranking needs at least two, and the page picks them with the number keys 1-9"
            )
        with self._writing() as s:
            existing = s.scalar(select(Project).where(Project.name == name))
            if existing is not None:
                if not exist_ok:
                    raise Conflict(f"project {name!r} already exists")
                if existing.k != k:
                    raise Conflict(f"project {name!r} exists with k={existing.k}, not k={k}")
                have = [c.name for c in reports.criteria(s, existing.id)]
                if criteria is not None and have != [n for n, _ in wanted]:
                    raise Conflict(f"project {name!r} exists with criteria {', '.join(have)}; change them with "
                                   f"`rlhfkit feedback criteria {name}`")
                return _project_info(existing)
            row = Project(name=name, k=k)
            s.add(row)
            s.flush()
            s.add_all(Criterion(project_id=row.id, position=i, name=n, description=d)
                      for i, (n, d) in enumerate(wanted))
            return _project_info(row)

    # ----- criteria ----------------------------------------------------------------------------
    def criteria(self, project: str | ProjectInfo) -> list[CriterionInfo]:
        """What the project's annotators rank by, in page order (at least one)."""
        with self._reading() as s:
            return reports.criteria(s, self._project(s, project).id)

    def add_criteria(self, project: str | ProjectInfo, criteria: Criteria) -> list[CriterionInfo]:
        """Append criteria to a project (all or none); returns all its criteria. Allowed after
        rankings exist: those rankings then have no ranks by the new criteria (their counts and
        exports have fewer rows), and changing one of them needs ranks by every criterion."""
        wanted = _check_criteria(criteria)
        with self._writing() as s:
            p = self._project(s, project, lock=True)
            have = reports.criteria(s, p.id)
            taken = {c.name for c in have} & {n for n, _ in wanted}
            if taken:
                raise Conflict(f"project {p.name!r} already has a criterion {sorted(taken)[0]!r}")
            start = max(c.position for c in have) + 1
            s.add_all(Criterion(project_id=p.id, position=start + i, name=n, description=d)
                      for i, (n, d) in enumerate(wanted))
            s.flush()
            return reports.criteria(s, p.id)

    def describe_criterion(self, project: str | ProjectInfo, name: str, description: str) -> CriterionInfo:
        """Change what a criterion's one line says (its rankings stay as they are)."""
        with self._writing() as s:
            row = self._criterion(s, self._project(s, project), name)
            row.description = check_criterion_description(description, name)
            return CriterionInfo(row.name, row.description, row.position)

    def remove_criterion(self, project: str | ProjectInfo, name: str) -> None:
        """Remove a criterion no ranking uses yet; a used one is refused (its ranks would be lost),
        and so is a project's last criterion."""
        with self._writing() as s:
            p = self._project(s, project, lock=True)
            row = self._criterion(s, p, name)
            used = s.scalar(select(func.count(func.distinct(RankingEntry.ranking_id)))
                            .where(RankingEntry.criterion_id == row.id))
            if used:
                raise Conflict(f"criterion {name!r} of project {p.name!r} is used by {used} ranking(s); removing it "
                               "would lose them (export them first, or keep it)")
            if s.scalar(select(func.count()).select_from(Criterion).where(Criterion.project_id == p.id)) == 1:
                raise Conflict(f"criterion {name!r} is the only one of project {p.name!r}; add another one first")
            s.delete(row)

    @staticmethod
    def _criterion(s: Session, p: ProjectInfo, name: str) -> Criterion:
        row = s.scalar(select(Criterion).where(Criterion.project_id == p.id, Criterion.name == name))
        if row is None:
            known = ", ".join(c.name for c in reports.criteria(s, p.id))
            raise NotFound(f"criterion {name!r} not found in project {p.name!r} (its criteria: {known})")
        return row

    def project(self, name: str) -> ProjectInfo:
        """The project called `name` (NotFound lists the known ones)."""
        with self._reading() as s:
            return self._project(s, name)

    def projects(self) -> list[ProjectInfo]:
        with self._reading() as s:
            return [_project_info(p) for p in s.scalars(select(Project).order_by(Project.name))]

    def set_guidelines(self, project: str | ProjectInfo, text: str | None) -> ProjectInfo:
        """Set (or with None or blank text, remove) the project's task guidelines: what "better"
        means. The page shows them as plain text, never as HTML."""
        if text is not None:
            check_text(text, "guidelines", allow_empty=True)
            text = text.strip() or None
        with self._writing() as s:
            p = self._project(s, project)
            row = s.get_one(Project, p.id)
            row.guidelines = text
            s.flush()
            return _project_info(row)

    # ----- rounds ------------------------------------------------------------------------------
    def rounds(self, project: str | ProjectInfo) -> list[int]:
        """The project's rounds that hold prompts, in order."""
        with self._reading() as s:
            p = self._project(s, project)
            return list(s.scalars(select(Prompt.round).where(Prompt.project_id == p.id).distinct()
                                  .order_by(Prompt.round)))

    def round_prompts(self, project: str | ProjectInfo, round: int) -> dict[str, tuple[int, int]]:
        """The prompts of one round: {text: (prompt id, completions it has)}."""
        with self._reading() as s:
            p = self._project(s, project)
            rows = s.execute(select(Prompt.text, Prompt.id, Prompt.n_completions)
                             .where(Prompt.project_id == p.id, Prompt.round == round)).all()
            return {t: (i, n) for t, i, n in rows}

    # ----- prompts and completions -------------------------------------------------------------
    def add_prompts(
        self,
        project: str | ProjectInfo,
        texts: Sequence[str],
        completions: Sequence[Sequence[str]] | None = None,
        *,
        model: str = "imported",
        sampling: Mapping[str, Any] | None = None,
        round: int | None = None,
    ) -> list[int]:
        """Append prompts to a project (all or none); returns their ids in the same order.

        `completions[i]`, when given, are the K completions of `texts[i]` (made by `model` with
        `sampling`); otherwise add them later with `add_completions`. `round`: the sampling round
        they belong to (default: the project's latest, 1 for a new project); a later round may
        hold the same texts again, with completions of a newer policy.
        """
        if round is not None and (isinstance(round, bool) or not isinstance(round, int) or round < 1):
            raise FeedbackError(f"round must be an integer >= 1, got {round!r}")
        texts = list(texts)
        if not texts:
            raise FeedbackError("no prompts given")
        for i, text in enumerate(texts):
            check_text(text, f"prompt {i + 1}", allow_empty=False)
        if completions is not None and len(completions) != len(texts):
            raise FeedbackError(f"{len(texts)} prompts but {len(completions)} completion lists")
        sampling_json = check_sampling(sampling)
        model = check_model(model)
        with self._writing() as s:
            p = self._project(s, project, lock=True)
            if completions is not None:
                for i, cs in enumerate(completions):
                    check_completions(cs, p.k, f"prompt {i + 1}", have=0, exact=True)
            start, latest = s.execute(
                select(func.coalesce(func.max(Prompt.position), -1), func.coalesce(func.max(Prompt.round), 1))
                .where(Prompt.project_id == p.id)
            ).one()
            r = latest if round is None else round
            n = p.k if completions is not None else 0
            rows = [
                Prompt(project_id=p.id, position=start + 1 + i, text=t, n_completions=n, round=r)
                for i, t in enumerate(texts)
            ]
            s.add_all(rows)
            s.flush()
            if completions is not None:
                s.add_all(
                    Completion(prompt_id=r.id, position=j, text=c, model=model, sampling=sampling_json)
                    for r, cs in zip(rows, completions, strict=True)
                    for j, c in enumerate(cs)
                )
            return [r.id for r in rows]

    def add_completions(
        self, prompt_id: int, texts: Sequence[str], model: str, sampling: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Add completions of one prompt made by `model` with `sampling` settings (JSON-able).

        A prompt takes exactly K completions in all (several calls may add them, e.g. one per
        model); it is offered for ranking once it has all K. Returns their ids in order.
        """
        sampling_json = check_sampling(sampling)
        model = check_model(model)
        with self._writing() as s:
            q = select(Prompt).where(Prompt.id == prompt_id).with_for_update()
            prompt = s.scalar(q) if is_row_id(prompt_id) else None
            if prompt is None:
                raise NotFound(f"prompt {prompt_id!r} not found")
            k = s.get_one(Project, prompt.project_id).k
            have = prompt.n_completions
            check_completions(texts, k, f"prompt {prompt_id}", have=have, exact=False)
            prompt.n_completions = have + len(texts)
            rows = [
                Completion(prompt_id=prompt.id, position=have + j, text=t, model=model, sampling=sampling_json)
                for j, t in enumerate(texts)
            ]
            s.add_all(rows)
            s.flush()
            return [r.id for r in rows]

    def find_prompts(
        self, project: str | ProjectInfo, texts: Sequence[str], round: int | None = None
    ) -> dict[str, int]:
        """Which of `texts` are already prompts of the project (of `round`, when given): {text: prompt id}
        (the first one, when a text is in several rounds)."""
        wanted = set(texts)
        with self._reading() as s:
            p = self._project(s, project)
            q = select(Prompt.text, Prompt.id).where(Prompt.project_id == p.id)
            if round is not None:
                q = q.where(Prompt.round == round)
            found: dict[str, int] = {}
            for t, i in s.execute(q.order_by(Prompt.position)).all():
                if t in wanted:
                    found.setdefault(t, i)
            return found

    def prompt(
        self,
        prompt_id: int,
        annotator: str | AnnotatorInfo | None = None,
        project: str | ProjectInfo | None = None,
        *,
        given_only: bool = False,
    ) -> PromptView:
        """A prompt with its completions (and `annotator`'s ranking of it); NotFound if it is not
        in `project` (when given). `given_only`: Forbidden unless the prompt was handed to
        `annotator` (`next_prompt`) or they ranked or skipped it; what the web API enforces."""
        with self._reading() as s:
            p = self._project(s, project) if project is not None else None
            a = self._annotator(s, annotator) if annotator is not None else None
            row = self._prompt(s, prompt_id, p)
            if given_only and a is not None and not queue.was_given(s, a, row.id):
                raise Forbidden(f"prompt {prompt_id} was not given to you; rank the prompts the page gives you "
                                "(GET /api/next)")
            return self._prompt_view(s, row, a)

    # ----- annotators --------------------------------------------------------------------------
    def add_annotator(self, name: str, project: str | ProjectInfo | None = None, role: str = "annotator") -> str:
        """Add an annotator (a member of `project` with `role`, when given) and return their
        sign-in token. Only its hash is stored: show it now."""
        name = check_name(name, "annotator name")
        role = _check_role(role)
        token = secrets.token_urlsafe(24)
        with self._writing() as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise Conflict(f"annotator {name!r} already exists; add them to a project with "
                               f"`rlhfkit feedback add-member {name} --project NAME`")
            p = self._project(s, project) if project is not None else None
            row = Annotator(name=name, token_hash=hash_token(token))
            s.add(row)
            s.flush()
            if p is not None:
                s.add(Membership(project_id=p.id, annotator_id=row.id, role=role))
        return token

    def add_member(self, project: str | ProjectInfo, annotator: str, role: str = "annotator") -> bool:
        """Make `annotator` a member of `project` with `role` (or change their role there).
        Returns whether they were a member before."""
        role = _check_role(role)
        with self._writing() as s:
            p = self._project(s, project)
            a = self._annotator_row(s, annotator)
            m = s.get(Membership, (p.id, a.id))
            if m is None:
                s.add(Membership(project_id=p.id, annotator_id=a.id, role=role))
                return False
            m.role = role
            return True

    def remove_member(self, project: str | ProjectInfo, annotator: str) -> None:
        """Take `annotator` off `project`: the page and API refuse them there from the next request.
        Their rankings stay (and export); the prompts they held go back to the queue."""
        with self._writing() as s:
            p = self._project(s, project)
            a = self._annotator_row(s, annotator)
            if s.get(Membership, (p.id, a.id)) is None:
                raise NotFound(f"annotator {annotator!r} is not a member of project {p.name!r}")
            s.execute(delete(Membership).where(Membership.project_id == p.id, Membership.annotator_id == a.id))
            held = select(Prompt.id).where(Prompt.project_id == p.id)
            s.execute(delete(Assignment).where(Assignment.annotator_id == a.id, Assignment.prompt_id.in_(held)))

    def revoke_token(self, annotator: str) -> None:
        """The annotator's token stops working everywhere (their rankings stay); `rotate_token`
        gives them a new one."""
        with self._writing() as s:
            a = self._annotator_row(s, annotator)
            a.revoked_at = utcnow()
            s.execute(delete(Assignment).where(Assignment.annotator_id == a.id))

    def rotate_token(self, annotator: str) -> str:
        """A new token for `annotator` (a lost or leaked one stops working at once); returns it,
        shown this once. Also lifts a revocation."""
        token = secrets.token_urlsafe(24)
        with self._writing() as s:
            a = self._annotator_row(s, annotator)
            a.token_hash, a.revoked_at = hash_token(token), None
        return token

    def annotator_for_token(self, token: str | None, project: str | ProjectInfo | None = None) -> AnnotatorInfo | None:
        """The annotator a token belongs to (with their role in `project`, None if they are no
        member), or None for an unknown or revoked token.

        The web app asks this on every request, so it is one prepared statement on a plain
        connection (no ORM session): a third of the cost of building the query each time."""
        if not token or not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        if project is not None and not isinstance(project, ProjectInfo):
            project = self.project(project)
        with self.engine.connect() as conn:
            found = conn.execute(_TOKEN_LOOKUP, {"token_hash": hash_token(token),
                                                 "project_id": project.id if project is not None else -1}).first()
        if found is None or found.revoked_at is not None:
            return None
        return AnnotatorInfo(found.id, found.name, found.role if project is not None else None)

    def annotators(self) -> list[AnnotatorInfo]:
        """Every annotator in the database (no role: roles are per project, see `members`)."""
        with self._reading() as s:
            return [_annotator_info(a) for a in s.scalars(select(Annotator).order_by(Annotator.name))]

    def members(self, project: str | ProjectInfo) -> list[MemberInfo]:
        """The project's annotators and admins, by name."""
        with self._reading() as s:
            p = self._project(s, project)
            rows = s.execute(
                select(Annotator.name, Membership.role, Annotator.revoked_at)
                .join(Membership, Membership.annotator_id == Annotator.id)
                .where(Membership.project_id == p.id)
                .order_by(Annotator.name)
            ).all()
            return [MemberInfo(name, role, revoked is not None) for name, role, revoked in rows]

    # ----- labelling queue (the queries: rlhfkit.feedback.queue) -------------------------------
    def next_prompt(
        self,
        project: str | ProjectInfo,
        annotator: str | AnnotatorInfo,
        annotators_per_prompt: int = 1,
        *,
        lease_seconds: float = LEASE_SECONDS,
    ) -> PromptView | None:
        """The prompt `annotator` should rank next, or None when there is nothing left for them.

        That is the first prompt in project order that they have neither ranked nor skipped and
        that has fewer than `annotators_per_prompt` rankings, counting the prompts handed to
        other annotators in the last `lease_seconds` as ranked. The prompt is handed to this
        annotator (asking again gives the same one until they rank it), so annotators working
        at the same time get different prompts. Skips do not count towards the N rankings.
        """
        queue.check_annotators_per_prompt(annotators_per_prompt)
        now = utcnow()
        with self._writing(durable=False) as s:
            # Lock the project row (PostgreSQL) so two annotators cannot both take the last slot;
            # the lock is held only while choosing, the view is read after the commit.
            p = self._project(s, project, lock=True)
            a = self._annotator(s, annotator)
            prompt = queue.take_next(s, p, a, annotators_per_prompt, now, lease_seconds)
            if prompt is None:
                return None
        with self._reading() as s:
            return self._prompt_view(s, prompt, None, p.name)

    def standing(
        self, project: str | ProjectInfo, annotator: str | AnnotatorInfo, annotators_per_prompt: int = 1
    ) -> tuple[int, int]:
        """(done, left) for one annotator: prompts they ranked or skipped, and prompts they could
        still be given (the one in hand included)."""
        with self._reading() as s:
            p, a = self._project(s, project), self._annotator(s, annotator)
            return queue.standing(s, p, a, annotators_per_prompt, utcnow())

    def previous_prompt(
        self, project: str | ProjectInfo, annotator: str | AnnotatorInfo, before: int | None = None
    ) -> PromptView | None:
        """The prompt `annotator` ranked (or skipped) just before they ranked prompt `before`;
        the last one they ranked when `before` is None or not ranked yet. None: nothing earlier.

        Order is that of first submission, so going back several times walks the history even
        after earlier rankings were changed.
        """
        with self._reading() as s:
            p, a = self._project(s, project), self._annotator(s, annotator)
            prompt = queue.previous(s, p, a, before)
            return None if prompt is None else self._prompt_view(s, prompt, a)

    # ----- rankings ----------------------------------------------------------------------------
    def submit_ranking(
        self,
        annotator: str | AnnotatorInfo,
        prompt_id: int,
        ranks: Mapping[int, int] | None = None,
        *,
        order: Sequence[int] | None = None,
        skip: bool = False,
        unsafe: bool = False,
        comment: str | None = None,
        submission_id: str | None = None,
        project: str | ProjectInfo | None = None,
        annotators_per_prompt: int | None = None,
        rankings: Mapping[str, Mapping[int, int] | Sequence[int]] | None = None,
    ) -> SubmitResult:
        """Store `annotator`'s ranking of a prompt's completions; committed when this returns.

        Give the ranking as `order` (completion ids, best first) or as `ranks` ({completion id:
        rank}, 0 best, equal ranks for ties); it must cover exactly the prompt's completions.
        A project with several criteria takes `rankings` instead: {criterion name: ranks (a
        mapping) or order (a list)}, one for every criterion of the project (a missing or
        unknown criterion is an InvalidRanking naming it); `ranks`/`order` are the ranking of a
        one-criterion project.
        `skip=True` needs no ranking (one given is not stored). `unsafe` flags the content;
        `comment` is free text.

        `submission_id` makes the call idempotent: sending the same id again (a retry after a
        lost answer) changes nothing and returns the stored ranking with `duplicate=True`. One
        is generated when left out. The id names one content: the same id with another ranking,
        flag or comment is a Conflict (a changed ranking is a new submission, with a new id).
        Ranking a prompt again (with a new id) replaces the earlier ranking. With `project`, a
        prompt of another project is NotFound.

        `annotators_per_prompt` (N), when given, enforces the queue as the web API does: a first
        ranking needs the prompt to have been handed to the annotator (`next_prompt`; else
        Forbidden) and to have fewer than N rankings and other annotators' live hand-outs (else
        Conflict). Changing one's own earlier ranking is always allowed.
        """
        if annotators_per_prompt is not None:
            queue.check_annotators_per_prompt(annotators_per_prompt)
        sid = check_submission_id(submission_id if submission_id is not None else uuid.uuid4().hex)
        if comment is not None:
            if not isinstance(comment, str):
                raise FeedbackError(f"comment must be text, got {type(comment).__name__}")
            if len(comment) > MAX_COMMENT_CHARS:
                raise FeedbackError(f"comment is {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}")
            comment = comment.strip() or None

        def attempt(s: Session) -> SubmitResult:
            return self._submit(s, annotator, prompt_id, ranks, order, bool(skip), bool(unsafe), comment, sid, project,
                                annotators_per_prompt, rankings)

        return self._retry_on_conflict(attempt, what=f"ranking of prompt {prompt_id}")

    def _retry_on_conflict(self, fn: Callable[[Session], T], what: str) -> T:
        """Run a write; on PostgreSQL, retry it when a concurrent transaction inserted the same
        ranking or submission id first: the retry then sees the winner's row. (SQLite writers
        are serialised and never race.)"""
        if self._write_lock is not None:
            with self._writing() as s:
                return fn(s)
        for attempt in range(_SUBMIT_ATTEMPTS):
            try:
                with self._writing() as s:
                    return fn(s)
            except IntegrityError as e:
                if attempt == _SUBMIT_ATTEMPTS - 1:
                    raise Conflict(f"{what}: conflicting concurrent writes ({first_line(e)}); send it again") from None
        raise AssertionError("unreachable")

    def _submit(
        self,
        s: Session,
        annotator: str | AnnotatorInfo,
        prompt_id: int,
        ranks: Mapping[int, int] | None,
        order: Sequence[int] | None,
        skip: bool,
        unsafe: bool,
        comment: str | None,
        sid: str,
        project: str | ProjectInfo | None,
        annotators_per_prompt: int | None,
        rankings: Mapping[str, Mapping[int, int] | Sequence[int]] | None = None,
    ) -> SubmitResult:
        a = self._annotator(s, annotator)
        seen = s.get(Submission, sid)
        if seen is not None:
            r = s.get_one(Ranking, seen.ranking_id)
            if r.annotator_id != a.id or r.prompt_id != prompt_id:
                raise Conflict(
                    f"submission id {sid!r} was already used for another ranking; send a new id for a new ranking"
                )

        p = self._project(s, project) if project is not None else None
        prompt = self._prompt(s, prompt_id, p)
        k = p.k if p is not None else s.get_one(Project, prompt.project_id).k
        completion_ids = list(s.scalars(select(Completion.id).where(Completion.prompt_id == prompt.id)
                                        .order_by(Completion.position)))
        if len(completion_ids) != k:
            raise Conflict(
                f"prompt {prompt_id} has {len(completion_ids)} of its {k} completions; it cannot be ranked yet"
            )
        rows = s.execute(select(Criterion.id, Criterion.name, Criterion.description, Criterion.position)
                         .where(Criterion.project_id == prompt.project_id).order_by(Criterion.position)).all()
        known = [CriterionInfo(name, description, position) for _, name, description, position in rows]
        new_ranks = {} if skip else _criteria_ranks(prompt_id, completion_ids, known, ranks, order, rankings)
        content = _content_hash(new_ranks, skip, unsafe, comment, known[0].name)
        if seen is not None:
            if seen.content_hash is not None and seen.content_hash != content:
                raise Conflict(
                    f"submission id {sid!r} was already used for a different ranking of prompt {prompt_id} (ranks, "
                    "flag or comment differ); a changed ranking is a new submission: send it with a new id"
                )
            return SubmitResult(self._ranking_view(s, r, a.name), created=False, duplicate=True)
        # Checked after the retry test: a retry of a ranking stored before a criterion was added
        # is still that ranking; a new one must rank by every criterion.
        missing = [c.name for c in known if not skip and c.name not in new_ranks]
        if missing:
            raise InvalidRanking(
                f"ranking of prompt {prompt_id}: criterion {missing[0]!r} is missing; rank the completions by "
                f"every criterion ({', '.join(c.name for c in known)}), e.g. rankings: {{criterion: ranks}}"
            )

        now = utcnow()
        r = s.scalar(select(Ranking).where(Ranking.annotator_id == a.id, Ranking.prompt_id == prompt.id))
        if r is None and annotators_per_prompt is not None:
            queue.check_may_rank(s, a, prompt, annotators_per_prompt, skip, now)
        created = r is None
        counted_before = r is not None and not r.skip
        if r is None:
            r = Ranking(annotator_id=a.id, prompt_id=prompt.id, created_at=now)
            s.add(r)
        r.skip, r.unsafe, r.comment, r.submission_id, r.updated_at = skip, unsafe, comment, sid, now
        s.flush()
        if counted_before != (not skip):  # a new ranking, or a skip turned ranking (or back)
            delta = 1 if not skip else -1
            s.execute(update(Prompt).where(Prompt.id == prompt.id).values(n_rankings=Prompt.n_rankings + delta))
        s.execute(delete(RankingEntry).where(RankingEntry.ranking_id == r.id))
        if new_ranks:
            ids = {name: cid for cid, name, _, _ in rows}
            s.execute(insert(RankingEntry), [
                {"ranking_id": r.id, "criterion_id": ids[name], "completion_id": cid, "rank": rank}
                for name, by_id in new_ranks.items() for cid, rank in by_id.items()
            ])
        s.add(Submission(submission_id=sid, ranking_id=r.id, content_hash=content, received_at=now))
        s.execute(delete(Assignment).where(Assignment.annotator_id == a.id, Assignment.prompt_id == prompt.id))
        s.flush()
        ordered = {c.name: new_ranks[c.name] for c in known if c.name in new_ranks}
        return SubmitResult(reports.ranking_view(r, a.name, ordered, known[0].name), created=created, duplicate=False)

    def get_ranking(self, annotator: str | AnnotatorInfo, prompt_id: int) -> RankingView | None:
        """`annotator`'s ranking of a prompt, or None."""
        if not is_row_id(prompt_id):
            return None
        with self._reading() as s:
            a = self._annotator(s, annotator)
            r = s.scalar(select(Ranking).where(Ranking.annotator_id == a.id, Ranking.prompt_id == prompt_id))
            return None if r is None else self._ranking_view(s, r, a.name)

    def rankings(self, project: str | ProjectInfo) -> list[RankingView]:
        """All rankings and skips of a project, in prompt order, then annotator name."""
        with self._reading() as s:
            p = self._project(s, project)
            rows = s.execute(
                select(Ranking, Annotator.name)
                .join(Prompt, Prompt.id == Ranking.prompt_id)
                .join(Annotator, Annotator.id == Ranking.annotator_id)
                .where(Prompt.project_id == p.id)
                .order_by(Prompt.position, Annotator.name)
            ).all()
            entries = reports.entries(s, p)
            first = reports.criteria(s, p.id)[0].name
            return [reports.ranking_view(r, name, entries.get(r.id, {}), first) for r, name in rows]

    # ----- reports (the queries: rlhfkit.feedback.reports) -------------------------------------
    def progress(self, project: str | ProjectInfo, annotators_per_prompt: int = 1) -> ProjectProgress:
        """Counts for the project and for every annotator."""
        with self._reading() as s:
            return reports.progress(s, self._project(s, project), annotators_per_prompt)

    def agreement(self, project: str | ProjectInfo, criterion: str | None = None) -> AgreementReport:
        """Pairwise agreement and Kendall tau-b between annotators on the prompts they share
        (skips left out), by `criterion` (the project's first when None); see
        `rlhfkit.feedback.agreement` for the definitions."""
        with self._reading() as s:
            return reports.agreement(s, self._project(s, project), criterion)

    def agreements(self, project: str | ProjectInfo) -> dict[str, AgreementReport]:
        """`agreement` by each criterion of the project: {criterion name: report}, in page order."""
        with self._reading() as s:
            return reports.agreements(s, self._project(s, project))

    def export_rows(
        self,
        project: str | ProjectInfo,
        format: str = "pairwise",
        merge: str = "majority",
        drop_flagged: bool = True,
        rounds: Sequence[int] | None = None,
        criteria: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Training rows for the reward model (of `rounds` only and by `criteria` only, when
        given), each with its "criterion"; see `rlhfkit.feedback.export` for the formats."""
        reports.check_export_options(format, merge)
        with self._reading() as s:
            p = self._project(s, project)
            if rounds is not None:
                reports.check_rounds(s, p, rounds)
            if criteria is not None:
                reports.check_criteria(s, p, criteria)
            return reports.export_rows(s, p, format, merge, drop_flagged, rounds, criteria)

    def prompt_summaries(self, project: str | ProjectInfo) -> list[PromptSummary]:
        """Every prompt that has a ranking or skip: counts, flags, comments and disagreement."""
        with self._reading() as s:
            return reports.prompt_summaries(s, self._project(s, project))

    def comments(self, project: str | ProjectInfo, limit: int | None = None) -> list[CommentView]:
        """The comments annotators left on the project's prompts, newest first."""
        with self._reading() as s:
            return reports.comments(s, self._project(s, project), limit)

    def prompt_detail(self, project: str | ProjectInfo, prompt_id: int) -> PromptDetail:
        """One prompt of the project with every annotator's ranking, flag and comment."""
        with self._reading() as s:
            p = self._project(s, project)
            return reports.prompt_detail(s, p, self._prompt(s, prompt_id, p))

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


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise FeedbackError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return str(role)


def _check_criteria(criteria: Criteria) -> list[tuple[str, str]]:
    """[(name, description)] checked: slugs, one-line descriptions, no name twice."""
    items = list(criteria.items()) if isinstance(criteria, Mapping) else list(criteria)
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
            raise FeedbackError(f"criteria: expected (name, description) pairs, got {item!r}")
        name = check_criterion_name(item[0])
        if name in (n for n, _ in out):
            raise FeedbackError(f"criterion {name!r} is given twice")
        out.append((name, check_criterion_description(item[1], name)))
    return out


def _criteria_ranks(
    prompt_id: int,
    completion_ids: Sequence[int],
    known: Sequence[CriterionInfo],
    ranks: Mapping[int, int] | None,
    order: Sequence[int] | None,
    rankings: Mapping[str, Mapping[int, int] | Sequence[int]] | None,
) -> dict[str, dict[int, int]]:
    """{criterion name: dense ranks} from either `rankings` or (one criterion) `ranks`/`order`.
    Unknown criteria are refused here; missing ones by the caller, after its retry test."""
    names = [c.name for c in known]
    if rankings is None:
        if len(names) > 1:
            raise InvalidRanking(
                f"ranking of prompt {prompt_id}: the project ranks by {len(names)} criteria ({', '.join(names)}); "
                f"send `rankings` {{criterion: ranks}} instead of `ranks`/`order`: criterion {names[1]!r} is missing"
            )
        return {names[0]: normalise_ranking(prompt_id, completion_ids, ranks, order)}
    if ranks is not None or order is not None:
        raise InvalidRanking(f"ranking of prompt {prompt_id}: give `rankings` or `ranks`/`order`, not both")
    if not isinstance(rankings, Mapping) or not rankings:
        raise InvalidRanking(f"ranking of prompt {prompt_id}: `rankings` must map each criterion "
                             f"({', '.join(names)}) to its ranks")
    out: dict[str, dict[int, int]] = {}
    for name, given in rankings.items():
        if name not in names:
            raise InvalidRanking(f"ranking of prompt {prompt_id}: unknown criterion {name!r}; the project's criteria "
                                 f"are {', '.join(names)}")
        if isinstance(given, Mapping):
            out[name] = normalise_ranking(prompt_id, completion_ids, given, None, criterion=name)
        else:
            out[name] = normalise_ranking(prompt_id, completion_ids, None, given, criterion=name)
    return out


def _content_hash(
    ranks: Mapping[str, Mapping[int, int]], skip: bool, unsafe: bool, comment: str | None, first: str
) -> str:
    """What a submission says, as sha256: the same id must always carry the same content.
    A ranking by the first criterion alone hashes as before criteria existed, so a retry of a
    submission stored then is still recognised."""
    if set(ranks) <= {first}:
        content: dict[str, Any] = {"ranks": sorted(ranks.get(first, {}).items())}
    else:
        content = {"rankings": sorted((name, sorted(r.items())) for name, r in ranks.items())}
    content.update(skip=skip, unsafe=unsafe, comment=comment)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()
