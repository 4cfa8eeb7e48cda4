"""One job: read a project's rankings back out as reports: progress, agreement, export rows.

These are read-only queries on an open session; `FeedbackStore.progress`, `agreement` and
`export_rows` run them in a read transaction. The arithmetic lives in `agreement.py` (pairwise
agreement, Kendall tau-b) and `export.py` (merging annotators, pairwise and ranked rows): this
module only gathers what they need from the database.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback import export as export_mod
from rlhfkit.feedback.agreement import AgreementReport, agreement_report
from rlhfkit.feedback.errors import FeedbackError
from rlhfkit.feedback.records import AnnotatorProgress, ProjectInfo, ProjectProgress
from rlhfkit.feedback.schema import Annotator, Completion, Prompt, Ranking, RankingEntry


def progress(s: Session, p: ProjectInfo, annotators_per_prompt: int = 1) -> ProjectProgress:
    """Counts for the project and for every annotator."""
    in_project = and_(Prompt.id == Ranking.prompt_id, Prompt.project_id == p.id)
    per_annotator = s.execute(
        select(
            Annotator.name,
            Annotator.is_admin,
            func.count(Ranking.id).filter(Ranking.skip.is_(False)),
            func.count(Ranking.id).filter(Ranking.skip.is_(True)),
            func.count(Ranking.id).filter(Ranking.unsafe.is_(True)),
            func.max(Ranking.updated_at),
        )
        .select_from(Annotator)
        .outerjoin(Ranking, and_(Ranking.annotator_id == Annotator.id, exists().where(in_project)))
        .group_by(Annotator.id, Annotator.name, Annotator.is_admin)
        .order_by(Annotator.name)
    ).all()
    n_completions = select(Completion.prompt_id, func.count().label("n")).group_by(Completion.prompt_id).subquery()
    prompts, ready = s.execute(
        select(func.count(Prompt.id), func.count(Prompt.id).filter(n_completions.c.n == p.k))
        .select_from(Prompt)
        .outerjoin(n_completions, n_completions.c.prompt_id == Prompt.id)
        .where(Prompt.project_id == p.id)
    ).one()
    per_prompt = (
        select(Ranking.prompt_id, func.count().label("n"))
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Prompt.project_id == p.id, Ranking.skip.is_(False))
        .group_by(Ranking.prompt_id)
        .subquery()
    )
    rankings, complete = s.execute(
        select(func.coalesce(func.sum(per_prompt.c.n), 0), func.count().filter(per_prompt.c.n >= annotators_per_prompt))
    ).one()
    return ProjectProgress(
        project=p.name,
        k=p.k,
        annotators_per_prompt=annotators_per_prompt,
        prompts=prompts,
        ready=ready,
        rankings=int(rankings),
        complete=complete,
        annotators=[
            AnnotatorProgress(
                annotator=name,
                is_admin=bool(admin),
                ranked=ranked,
                skipped=skipped,
                unsafe=unsafe,
                last_at=_aware(last),
            )
            for name, admin, ranked, skipped, unsafe, last in per_annotator
        ],
    )


def agreement(s: Session, p: ProjectInfo) -> AgreementReport:
    """Pairwise agreement and Kendall tau-b between annotators on the prompts they share
    (skips left out); see `rlhfkit.feedback.agreement` for the definitions."""
    return agreement_report({i: lp.rankings for i, lp in enumerate(labeled(s, p))})


def check_export_options(format: str, merge: str) -> None:
    """FeedbackError unless `format` and `merge` are ones `export_rows` knows."""
    if format not in export_mod.FORMATS:
        raise FeedbackError(f"format must be one of {', '.join(export_mod.FORMATS)}, got {format!r}")
    if merge not in export_mod.MERGES:
        raise FeedbackError(f"merge must be one of {', '.join(export_mod.MERGES)}, got {merge!r}")


def export_rows(
    s: Session, p: ProjectInfo, format: str = "pairwise", merge: str = "majority", drop_flagged: bool = True
) -> list[dict[str, Any]]:
    """Training rows for the reward model; see `rlhfkit.feedback.export` for the formats."""
    check_export_options(format, merge)
    return export_mod.build_rows(labeled(s, p), format=format, merge=merge, drop_flagged=drop_flagged)


def labeled(s: Session, p: ProjectInfo) -> list[export_mod.LabeledPrompt]:
    """Every prompt of the project that has at least one ranking or skip, in project order."""
    completions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for prompt_id, cid, text in s.execute(
        select(Completion.prompt_id, Completion.id, Completion.text)
        .join(Prompt, Prompt.id == Completion.prompt_id)
        .where(Prompt.project_id == p.id)
        .order_by(Completion.prompt_id, Completion.position)
    ):
        completions[prompt_id].append((cid, text))
    ranks = entries(s, p)
    rows = s.execute(
        select(Prompt.id, Prompt.text, Annotator.name, Ranking.id, Ranking.skip, Ranking.unsafe)
        .join(Ranking, Ranking.prompt_id == Prompt.id)
        .join(Annotator, Annotator.id == Ranking.annotator_id)
        .where(Prompt.project_id == p.id)
        .order_by(Prompt.position, Annotator.name)
    ).all()
    by_prompt: dict[int, export_mod.LabeledPrompt] = {}
    for prompt_id, text, name, rid, skip, unsafe in rows:
        cs = completions[prompt_id]
        lp = by_prompt.setdefault(prompt_id, export_mod.LabeledPrompt(text, [t for _, t in cs], {}, flagged=False))
        if unsafe and not lp.flagged:
            lp = by_prompt[prompt_id] = export_mod.LabeledPrompt(lp.text, lp.completions, lp.rankings, True)
        if not skip:
            lp.rankings[name] = [ranks[rid][cid] for cid, _ in cs]
    return list(by_prompt.values())


def entries(s: Session, p: ProjectInfo) -> dict[int, dict[int, int]]:
    """{ranking id: {completion id: rank}} for a whole project."""
    out: dict[int, dict[int, int]] = defaultdict(dict)
    for rid, cid, rank in s.execute(
        select(RankingEntry.ranking_id, RankingEntry.completion_id, RankingEntry.rank)
        .join(Ranking, Ranking.id == RankingEntry.ranking_id)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Prompt.project_id == p.id)
    ):
        out[rid][cid] = rank
    return out


def _aware(dt: datetime | None) -> datetime | None:
    # Aggregates (max) bypass the column type, so SQLite hands back a string and PG a naive datetime.
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
