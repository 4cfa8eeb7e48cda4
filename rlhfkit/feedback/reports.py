"""One job: read a project's rankings back out as reports: progress, agreement, export rows.

These are read-only queries on an open session; `FeedbackStore.progress`, `agreement` and
`export_rows` run them in a read transaction. The arithmetic lives in `agreement.py` (pairwise
agreement, Kendall tau-b) and `export.py` (merging annotators, pairwise and ranked rows): this
module only gathers what they need from the database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from rlhfkit.feedback import export as export_mod
from rlhfkit.feedback.agreement import AgreementReport, agreement_report, pair_counts
from rlhfkit.feedback.errors import FeedbackError
from rlhfkit.feedback.records import (
    AnnotatorProgress,
    CommentView,
    CompletionView,
    CriterionInfo,
    CriterionProgress,
    ProjectInfo,
    ProjectProgress,
    PromptDetail,
    PromptSummary,
    RankingView,
    RoundProgress,
)
from rlhfkit.feedback.schema import Annotator, Completion, Criterion, Membership, Prompt, Ranking, RankingEntry


def criteria(s: Session, project_id: int) -> list[CriterionInfo]:
    """The project's criteria in page order."""
    rows = s.execute(select(Criterion.name, Criterion.description, Criterion.position)
                     .where(Criterion.project_id == project_id).order_by(Criterion.position)).all()
    return [CriterionInfo(name, description, position) for name, description, position in rows]


def progress(s: Session, p: ProjectInfo, annotators_per_prompt: int = 1) -> ProjectProgress:
    """Counts for the project, its rounds, and each of its members (and anyone who ranked in it)."""
    in_project = and_(Prompt.id == Ranking.prompt_id, Prompt.project_id == p.id)
    member = and_(Membership.annotator_id == Annotator.id, Membership.project_id == p.id)
    per_annotator = s.execute(
        select(
            Annotator.name,
            func.max(Membership.role),
            func.max(Annotator.revoked_at),
            func.count(Ranking.id).filter(Ranking.skip.is_(False)),
            func.count(Ranking.id).filter(Ranking.skip.is_(True)),
            func.count(Ranking.id).filter(Ranking.unsafe.is_(True)),
            func.count(Ranking.id).filter(Ranking.comment.is_not(None)),
            func.max(Ranking.updated_at),
        )
        .select_from(Annotator)
        .outerjoin(Membership, member)
        .outerjoin(Ranking, and_(Ranking.annotator_id == Annotator.id, exists().where(in_project)))
        .where(or_(Membership.role.is_not(None), Ranking.id.is_not(None)))
        .group_by(Annotator.id, Annotator.name)
        .order_by(Annotator.name)
    ).all()
    # Per round from the counters on the prompt rows (n_rankings counts rankings, not skips).
    per_round = s.execute(
        select(
            Prompt.round,
            func.count(Prompt.id),
            func.count(Prompt.id).filter(Prompt.n_completions == p.k),
            func.coalesce(func.sum(Prompt.n_rankings), 0),
            func.count(Prompt.id).filter(Prompt.n_rankings >= annotators_per_prompt),
        )
        .where(Prompt.project_id == p.id)
        .group_by(Prompt.round)
        .order_by(Prompt.round)
    ).all()
    rounds = [RoundProgress(r, n, ready, int(ranked), complete) for r, n, ready, ranked, complete in per_round]
    return ProjectProgress(
        criteria=criteria_progress(s, p, annotators_per_prompt),
        project=p.name,
        k=p.k,
        annotators_per_prompt=annotators_per_prompt,
        prompts=sum(r.prompts for r in rounds),
        ready=sum(r.ready for r in rounds),
        rankings=sum(r.rankings for r in rounds),
        complete=sum(r.complete for r in rounds),
        annotators=[
            AnnotatorProgress(
                annotator=name,
                role=role or "removed",
                revoked=revoked is not None,
                ranked=ranked,
                skipped=skipped,
                unsafe=unsafe,
                comments=comments,
                last_at=_aware(last),
            )
            for name, role, revoked, ranked, skipped, unsafe, comments, last in per_annotator
        ],
        rounds=rounds,
    )


def criteria_progress(s: Session, p: ProjectInfo, annotators_per_prompt: int) -> list[CriterionProgress]:
    """Per criterion: the rankings that rank by it, the prompts with enough of them, and the
    agreement between annotators by it. A criterion added after some rankings were made has
    fewer rankings than the project."""
    prompts = labeled(s, p)
    out = []
    for c in criteria(s, p.id):
        by_prompt = {lp.id: lp.by_criterion.get(c.name, {}) for lp in prompts}
        report = agreement_report(by_prompt)  # type: ignore[arg-type]  (ids are set for stored prompts)
        out.append(CriterionProgress(
            criterion=c.name, description=c.description, rankings=sum(len(r) for r in by_prompt.values()),
            complete=sum(len(r) >= annotators_per_prompt for r in by_prompt.values()),
            agreement=report.agreement, kendall_tau=report.kendall_tau,
        ))
    return out


def agreements(s: Session, p: ProjectInfo) -> dict[str, AgreementReport]:
    """`agreement` by every criterion of the project, in page order, from one read of the rankings."""
    prompts = labeled(s, p)
    return {c.name: agreement_report({i: lp.by_criterion.get(c.name, {}) for i, lp in enumerate(prompts)})
            for c in criteria(s, p.id)}


def agreement(s: Session, p: ProjectInfo, criterion: str | None = None) -> AgreementReport:
    """Pairwise agreement and Kendall tau-b between annotators on the prompts they share
    (skips left out), by `criterion` (the project's first when None); see
    `rlhfkit.feedback.agreement` for the definitions."""
    known = [c.name for c in criteria(s, p.id)]
    if criterion is not None and criterion not in known:
        raise FeedbackError(f"criterion {criterion!r}: project {p.name!r} has no such criterion "
                            f"(its criteria: {', '.join(known)})")
    name = criterion if criterion is not None else known[0]
    return agreement_report({i: lp.by_criterion.get(name, {}) for i, lp in enumerate(labeled(s, p))})


def check_criteria(s: Session, p: ProjectInfo, selected: Sequence[str]) -> None:
    """FeedbackError naming a criterion the project does not have (or an empty selection)."""
    known = [c.name for c in criteria(s, p.id)]
    if not selected:
        raise FeedbackError(f"criteria: none selected; give criterion names such as {known[0]}")
    unknown = [c for c in selected if c not in known]
    if unknown:
        raise FeedbackError(f"criterion {unknown[0]!r}: project {p.name!r} has no such criterion "
                            f"(its criteria: {', '.join(known)})")


def check_export_options(format: str, merge: str) -> None:
    """FeedbackError unless `format` and `merge` are ones `export_rows` knows."""
    if format not in export_mod.FORMATS:
        raise FeedbackError(f"format must be one of {', '.join(export_mod.FORMATS)}, got {format!r}")
    if merge not in export_mod.MERGES:
        raise FeedbackError(f"merge must be one of {', '.join(export_mod.MERGES)}, got {merge!r}")


def check_rounds(s: Session, p: ProjectInfo, rounds: Sequence[int]) -> None:
    """FeedbackError naming a round the project does not have (or an empty selection)."""
    if not rounds:
        raise FeedbackError("rounds: none selected; give round numbers such as 1,2")
    known = set(s.scalars(select(Prompt.round).where(Prompt.project_id == p.id).distinct()))
    unknown = sorted(set(rounds) - known)
    if unknown:
        have = ", ".join(map(str, sorted(known))) or "none yet"
        raise FeedbackError(f"rounds: project {p.name!r} has no round {unknown[0]} (its rounds: {have})")


def export_rows(
    s: Session, p: ProjectInfo, format: str = "pairwise", merge: str = "majority", drop_flagged: bool = True,
    rounds: Sequence[int] | None = None, criteria: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Training rows for the reward model (by `criteria` only, when given; tagged with their
    "criterion"); see `rlhfkit.feedback.export` for the formats."""
    check_export_options(format, merge)
    return export_mod.build_rows(labeled(s, p, rounds), format=format, merge=merge, drop_flagged=drop_flagged,
                                 criteria=criteria)


def labeled(s: Session, p: ProjectInfo, rounds: Sequence[int] | None = None) -> list[export_mod.LabeledPrompt]:
    """Every prompt of the project (of `rounds`, when given) that has at least one ranking or
    skip, in project order."""
    in_rounds = Prompt.round.in_(list(rounds)) if rounds is not None else True
    completions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for prompt_id, cid, text in s.execute(
        select(Completion.prompt_id, Completion.id, Completion.text)
        .join(Prompt, Prompt.id == Completion.prompt_id)
        .where(Prompt.project_id == p.id, in_rounds)
        .order_by(Completion.prompt_id, Completion.position)
    ):
        completions[prompt_id].append((cid, text))
    ranks = entries(s, p)
    names = [c.name for c in criteria(s, p.id)]
    rows = s.execute(
        select(Prompt.id, Prompt.text, Prompt.round, Annotator.name, Ranking.id, Ranking.skip, Ranking.unsafe,
               Ranking.comment)
        .join(Ranking, Ranking.prompt_id == Prompt.id)
        .join(Annotator, Annotator.id == Ranking.annotator_id)
        .where(Prompt.project_id == p.id, in_rounds)
        .order_by(Prompt.position, Annotator.name)
    ).all()
    found: dict[int, dict[str, Any]] = {}
    for prompt_id, text, round_, name, rid, skip, unsafe, comment in rows:
        cs = completions[prompt_id]
        f = found.setdefault(prompt_id, {"text": text, "completions": [t for _, t in cs], "round": round_,
                                         "by_criterion": {c: {} for c in names}, "comments": {},
                                         "flagged_by": set(), "skipped_by": set()})
        if unsafe:
            f["flagged_by"].add(name)
        if comment:
            f["comments"][name] = comment
        if skip:
            f["skipped_by"].add(name)
        else:
            for criterion, by_id in ranks.get(rid, {}).items():
                f["by_criterion"][criterion][name] = [by_id[cid] for cid, _ in cs]
    return [
        export_mod.LabeledPrompt(f["text"], f["completions"], f["by_criterion"][names[0]],
                                 flagged=bool(f["flagged_by"]), id=prompt_id, round=f["round"],
                                 comments=f["comments"], flagged_by=frozenset(f["flagged_by"]),
                                 skipped_by=frozenset(f["skipped_by"]), by_criterion=f["by_criterion"])
        for prompt_id, f in found.items()
    ]


def disagreement(rank_vectors: Sequence[Sequence[int]]) -> float | None:
    """1 - pairwise agreement over every two annotators' rankings of one prompt (see
    agreement.py): 0 when all order every pair alike, None with fewer than two rankings."""
    agree = total = 0
    for i, a in enumerate(rank_vectors):
        for b in rank_vectors[i + 1 :]:
            counts = pair_counts(a, b)
            agree, total = agree + counts.agreeing, total + counts.pairs
    return None if total == 0 else 1 - agree / total


def prompt_summaries(s: Session, p: ProjectInfo) -> list[PromptSummary]:
    """Every prompt with a ranking or skip, in project order, with its counts and disagreement."""
    positions = dict(s.execute(select(Prompt.id, Prompt.position).where(Prompt.project_id == p.id)).all())
    return [
        PromptSummary(
            id=lp.id, round=lp.round, position=positions[lp.id], text=lp.text, rankings=len(lp.rankings),
            skips=len(lp.skipped_by), unsafe=len(lp.flagged_by), comments=len(lp.comments),
            disagreement=disagreement(list(lp.rankings.values())),
            disagreement_by_criterion={c: disagreement(list(r.values())) for c, r in lp.by_criterion.items()},
        )
        for lp in labeled(s, p)
        if lp.id is not None
    ]


def comments(s: Session, p: ProjectInfo, limit: int | None = None) -> list[CommentView]:
    """The project's comments, newest first (the `limit` newest, when given)."""
    q = (
        select(Prompt.id, Prompt.round, Prompt.text, Annotator.name, Ranking.comment, Ranking.skip, Ranking.unsafe,
               Ranking.updated_at)
        .join(Ranking, Ranking.prompt_id == Prompt.id)
        .join(Annotator, Annotator.id == Ranking.annotator_id)
        .where(Prompt.project_id == p.id, Ranking.comment.is_not(None))
        .order_by(Ranking.updated_at.desc(), Ranking.id.desc())
    )
    rows = s.execute(q if limit is None else q.limit(limit)).all()
    return [CommentView(pid, r, text, name, comment, bool(skip), bool(unsafe), at)
            for pid, r, text, name, comment, skip, unsafe, at in rows]


def prompt_detail(s: Session, p: ProjectInfo, prompt: Prompt) -> PromptDetail:
    """A prompt, its completions and every annotator's ranking of it (by name)."""
    cs = list(s.scalars(select(Completion).where(Completion.prompt_id == prompt.id).order_by(Completion.position)))
    rows = s.execute(
        select(Ranking, Annotator.name).join(Annotator, Annotator.id == Ranking.annotator_id)
        .where(Ranking.prompt_id == prompt.id).order_by(Annotator.name)
    ).all()
    ranks = _entries(s, Ranking.prompt_id == prompt.id)
    known = criteria(s, prompt.project_id)
    views = [ranking_view(r, name, ranks.get(r.id, {}), known[0].name) for r, name in rows]
    by_criterion = {
        c.name: disagreement([[v.by_criterion[c.name][x.id] for x in cs] for v in views
                              if not v.skip and c.name in v.by_criterion])
        for c in known
    }
    return PromptDetail(
        id=prompt.id, round=prompt.round, position=prompt.position, text=prompt.text,
        completions=[CompletionView(c.id, c.position, c.text, c.model, dict(c.sampling)) for c in cs],
        rankings=views, disagreement=by_criterion[known[0].name], criteria=known,
        disagreement_by_criterion=by_criterion,
    )


def ranking_view(r: Ranking, annotator: str, by_criterion: dict[str, dict[int, int]], first: str) -> RankingView:
    """A stored ranking as a record; `ranks` are those by the project's `first` criterion."""
    return RankingView(
        id=r.id, annotator=annotator, prompt_id=r.prompt_id, ranks=dict(by_criterion.get(first, {})), skip=r.skip,
        unsafe=r.unsafe, comment=r.comment, submission_id=r.submission_id, created_at=r.created_at,
        updated_at=r.updated_at, by_criterion={c: dict(v) for c, v in by_criterion.items()},
    )


def entries(s: Session, p: ProjectInfo) -> dict[int, dict[str, dict[int, int]]]:
    """{ranking id: {criterion name: {completion id: rank}}} for a whole project (criteria in
    page order)."""
    in_project = Ranking.prompt_id.in_(select(Prompt.id).where(Prompt.project_id == p.id))
    return _entries(s, in_project)


def ranking_entries(s: Session, ranking_id: int) -> dict[str, dict[int, int]]:
    """{criterion name: {completion id: rank}} of one ranking."""
    return _entries(s, Ranking.id == ranking_id).get(ranking_id, {})


def _entries(s: Session, where: Any) -> dict[int, dict[str, dict[int, int]]]:
    out: dict[int, dict[str, dict[int, int]]] = defaultdict(dict)
    for rid, criterion, cid, rank in s.execute(
        select(RankingEntry.ranking_id, Criterion.name, RankingEntry.completion_id, RankingEntry.rank)
        .join(Ranking, Ranking.id == RankingEntry.ranking_id)
        .join(Criterion, Criterion.id == RankingEntry.criterion_id)
        .where(where)
        .order_by(RankingEntry.ranking_id, Criterion.position, RankingEntry.completion_id)
    ):
        out[rid].setdefault(criterion, {})[cid] = rank
    return out


def _aware(dt: datetime | None) -> datetime | None:
    # Aggregates (max) bypass the column type, so SQLite hands back a string and PG a naive datetime.
    if dt is None:
        return None
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
