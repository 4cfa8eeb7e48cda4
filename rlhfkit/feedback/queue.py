"""One job: the labelling queue, which prompt an annotator is given next (and which came before).

A prompt is open to an annotator when it has all K completions, the annotator has neither
ranked nor skipped it, and it has fewer than N rankings counting the prompts handed to other
annotators in the last `LEASE_SECONDS` (a lease, the `assignments` table) as ranked. Prompts are
given in project order, so annotators working at the same time get different prompts, and a
prompt in hand is given again until it is ranked.

The web API enforces the queue (`was_given`, `check_may_rank`): an annotator reads and ranks
only prompts handed to them (or ranked by them before), and a prompt never collects more than N
rankings.

These are queries on an open session; `FeedbackStore.next_prompt`, `standing`,
`previous_prompt` and `submit_ranking` run them inside their transactions.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Select, bindparam, exists, func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.checks import is_row_id
from rlhfkit.feedback.errors import Conflict, FeedbackError, Forbidden
from rlhfkit.feedback.records import AnnotatorInfo, ProjectInfo
from rlhfkit.feedback.schema import Assignment, Prompt, Ranking, UTCDateTime

LEASE_SECONDS = 600
"""How long a prompt handed to an annotator counts towards its annotators before it is
offered to someone else (an annotator who walked away does not block it for long)."""


def check_annotators_per_prompt(n: object) -> int:
    """N, the rankings each prompt needs: an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FeedbackError(f"annotators_per_prompt must be an integer >= 1, got {n!r}")
    return n


def open_to(p: ProjectInfo, a: AnnotatorInfo, annotators_per_prompt: int, now: datetime) -> Select[tuple[Prompt]]:
    """Prompts `a` may be given: complete (K completions), not ranked or skipped by `a`, and
    with fewer than N rankings plus other annotators' live assignments.

    The counters on the prompt row rule out full prompts before any subquery runs, so the
    cost does not grow with the rankings already made, whatever plan the database picks.
    """
    n_held = (
        select(func.count())
        .where(Assignment.prompt_id == Prompt.id, Assignment.annotator_id != a.id, Assignment.expires_at > now)
        .scalar_subquery()
    )
    done_by_me = exists().where(Ranking.prompt_id == Prompt.id, Ranking.annotator_id == a.id)
    return select(Prompt).where(
        Prompt.project_id == p.id,
        Prompt.n_completions == p.k,
        Prompt.n_rankings < annotators_per_prompt,
        ~done_by_me,
        Prompt.n_rankings + n_held < annotators_per_prompt,
    )


def take_next(
    s: Session,
    p: ProjectInfo,
    a: AnnotatorInfo,
    annotators_per_prompt: int,
    now: datetime,
    lease_seconds: float = LEASE_SECONDS,
) -> Prompt | None:
    """The prompt `a` holds (leased, not ranked yet) or else the first one open to them, leased
    to `a` for `lease_seconds`; None when nothing is left. Writes the lease: run it in a write
    transaction that holds the project's lock, so two annotators cannot take the last slot."""
    mine = s.scalar(
        select(Prompt)
        .join(Assignment, Assignment.prompt_id == Prompt.id)
        .where(
            Prompt.project_id == p.id,
            Assignment.annotator_id == a.id,
            Assignment.expires_at > now,
            ~exists().where(Ranking.prompt_id == Prompt.id, Ranking.annotator_id == a.id),
        )
        .order_by(Prompt.position)
        .limit(1)
    )
    prompt = mine or s.scalar(open_to(p, a, annotators_per_prompt, now).order_by(Prompt.position).limit(1))
    if prompt is None:
        return None
    lease = s.get(Assignment, (a.id, prompt.id))
    expires = now + timedelta(seconds=lease_seconds)
    if lease is None:
        s.add(Assignment(annotator_id=a.id, prompt_id=prompt.id, expires_at=expires))
    elif lease.expires_at < now + timedelta(seconds=lease_seconds / 2):
        lease.expires_at = expires  # renewed only when half gone: most reloads write nothing
    return prompt


def standing(
    s: Session, p: ProjectInfo, a: AnnotatorInfo, annotators_per_prompt: int, now: datetime
) -> tuple[int, int]:
    """(done, left) for `a`: prompts they ranked or skipped, and prompts they could still be
    given (the one in hand included)."""
    left = select(func.count()).select_from(open_to(p, a, annotators_per_prompt, now).subquery())
    done = (
        select(func.count())
        .select_from(Ranking)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Prompt.project_id == p.id, Ranking.annotator_id == a.id)
    )
    done_n, left_n = s.execute(select(done.scalar_subquery(), left.scalar_subquery())).one()
    return done_n or 0, left_n or 0


def previous(s: Session, p: ProjectInfo, a: AnnotatorInfo, before: int | None) -> Prompt | None:
    """The prompt `a` ranked (or skipped) just before they ranked prompt `before`; the last one
    they ranked when `before` is None or not ranked yet. None: nothing earlier.

    Order is that of first submission (ranking ids), so going back several times walks the
    history even after earlier rankings were changed.
    """
    q = (
        select(Ranking)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Prompt.project_id == p.id, Ranking.annotator_id == a.id)
    )
    anchor = None
    if is_row_id(before):
        anchor = s.scalar(select(Ranking.id).where(Ranking.prompt_id == before, Ranking.annotator_id == a.id))
    if anchor is not None:
        q = q.where(Ranking.id < anchor)
    r = s.scalar(q.order_by(Ranking.id.desc()).limit(1))
    return None if r is None else s.get_one(Prompt, r.prompt_id)


def was_given(s: Session, a: AnnotatorInfo, prompt_id: int) -> bool:
    """Whether prompt `prompt_id` was handed to `a` (a lease, live or expired) or `a` ranked or
    skipped it: what an annotator may read."""
    held = exists().where(Assignment.annotator_id == a.id, Assignment.prompt_id == prompt_id)
    ranked = exists().where(Ranking.annotator_id == a.id, Ranking.prompt_id == prompt_id)
    return bool(s.scalar(select(held | ranked)))


def _may_rank_query() -> Select:
    """(handed to me?, rankings, other annotators' live leases) of one prompt, locking its row
    (FOR UPDATE: PostgreSQL; SQLite writers are serialised). Built once: submits are hot."""
    me, prompt_id = bindparam("annotator_id"), bindparam("prompt_id")
    now = bindparam("now", type_=UTCDateTime())
    mine = exists().where(Assignment.annotator_id == me, Assignment.prompt_id == prompt_id)
    held = (
        select(func.count())
        .where(Assignment.prompt_id == prompt_id, Assignment.annotator_id != me, Assignment.expires_at > now)
        .scalar_subquery()
    )
    return select(mine, Prompt.n_rankings, held).where(Prompt.id == prompt_id).with_for_update(of=Prompt)


_MAY_RANK = _may_rank_query()


def check_may_rank(
    s: Session, a: AnnotatorInfo, prompt: Prompt, annotators_per_prompt: int, skip: bool, now: datetime
) -> None:
    """Raise unless `a` may store a first ranking (or skip) of `prompt`: it was handed to them,
    and (a skip aside, which does not count) it has fewer than N rankings plus other annotators'
    live leases. With a live lease of their own that always holds; with an expired one the slot
    may have gone to someone else meanwhile. Locks the prompt row (PostgreSQL), so two rankings
    cannot both take its last slot."""
    given, n_rankings, n_held = s.execute(
        _MAY_RANK, {"annotator_id": a.id, "prompt_id": prompt.id, "now": now}
    ).one()
    if not given:
        raise Forbidden(
            f"prompt {prompt.id} was not given to you; rank the prompts the page gives you (GET /api/next)"
        )
    if not skip and n_rankings + n_held >= annotators_per_prompt:
        raise Conflict(
            f"prompt {prompt.id} already has its {annotators_per_prompt} ranking(s) (your hand-out of it expired); "
            "load the next prompt"
        )
