"""The store's reports part: progress, agreement, export rows and the admin's prompt views, each
run in a read transaction (the queries are in reports.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfkit.feedback import reports
from rlhfkit.feedback.agreement import AgreementReport
from rlhfkit.feedback.records import CommentView, ProjectInfo, ProjectProgress, PromptDetail, PromptSummary
from rlhfkit.feedback.store_base import StoreBase


class ReportsMixin(StoreBase):
    """Progress, agreement, export rows, prompt summaries, comments and prompt detail."""

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
