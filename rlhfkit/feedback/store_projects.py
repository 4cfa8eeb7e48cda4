"""The store's projects part: creating projects, their criteria, guidelines and rounds, and
adding and finding their prompts and completions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback import queue, reports
from rlhfkit.feedback.checks import (
    DEFAULT_CRITERION,
    MAX_K,
    MIN_K,
    check_completions,
    check_criterion_description,
    check_criterion_name,
    check_model,
    check_name,
    check_sampling,
    check_text,
    is_row_id,
)
from rlhfkit.feedback.errors import Conflict, FeedbackError, Forbidden, NotFound
from rlhfkit.feedback.records import AnnotatorInfo, CriterionInfo, ProjectInfo, PromptView
from rlhfkit.feedback.schema import Completion, Criterion, Project, Prompt, RankingEntry
from rlhfkit.feedback.store_base import StoreBase, _project_info

Criteria = Mapping[str, str] | Sequence[tuple[str, str]]
"""Criteria to declare: {name: description} or [(name, description), ...], in page order."""


class ProjectsMixin(StoreBase):
    """Projects, criteria, rounds, prompts and completions."""

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

