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

This module's one job is `FeedbackStore` itself: the one class that joins the parts of the
store, each in a module of its own:

    store_base.py        StoreBase: opening the database (and migrating it), the transactions,
                         the lookups the parts share and the prompt and ranking views
    store_projects.py    projects, criteria, guidelines, rounds, prompts and completions
    store_annotators.py  annotators, project members and roles, sign-in tokens
    store_rankings.py    the labelling queue calls and ranking submission and reading
    store_reports.py     progress, agreement, export rows, the admin's prompt views

The labelling queue's queries (which prompt an annotator gets next) are in `queue.py`, the
reports' (progress, agreement, export rows) in `reports.py`; `FeedbackStore` runs them in its
transactions, so the API is one.

SQLite is the default (a file, WAL journal so readers never wait for the writer, foreign keys
on, a busy timeout so concurrent writers queue instead of failing); PostgreSQL by URL runs the
same code. Opening a database brings its schema up to date (Alembic, `migrations/`).
"""

from __future__ import annotations

from rlhfkit.feedback.agreement import AgreementReport
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
from rlhfkit.feedback.store_annotators import AnnotatorsMixin
from rlhfkit.feedback.store_base import StoreBase
from rlhfkit.feedback.store_projects import Criteria as Criteria  # the type of `criteria` arguments
from rlhfkit.feedback.store_projects import ProjectsMixin
from rlhfkit.feedback.store_rankings import RankingsMixin
from rlhfkit.feedback.store_reports import ReportsMixin

__all__ = [  # the records and errors are re-exported: `from rlhfkit.feedback.store import ...`
    "AgreementReport", "AnnotatorInfo", "AnnotatorProgress", "CommentView", "CompletionView", "Conflict",
    "CriterionInfo", "DatabaseUnavailable", "FeedbackError", "FeedbackStore", "Forbidden", "InvalidRanking",
    "MemberInfo", "NotFound",
    "ProjectInfo", "ProjectProgress", "PromptDetail", "PromptSummary", "PromptView", "RankingView", "SubmitResult",
    "LEASE_SECONDS", "ROLES",
]


class FeedbackStore(ProjectsMixin, AnnotatorsMixin, RankingsMixin, ReportsMixin, StoreBase):
    """Projects, prompts, completions, annotators and rankings in one database."""
