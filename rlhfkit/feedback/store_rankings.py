"""The store's rankings part: the labelling queue calls (next prompt, standing, going back;
their queries are in queue.py) and submitting and reading rankings (idempotent by submission
id, retried on PostgreSQL write races)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.errors import first_line
from rlhfkit.feedback import queue, reports
from rlhfkit.feedback.checks import MAX_COMMENT_CHARS, check_submission_id, is_row_id, normalise_ranking
from rlhfkit.feedback.errors import Conflict, FeedbackError, InvalidRanking
from rlhfkit.feedback.queue import LEASE_SECONDS
from rlhfkit.feedback.records import AnnotatorInfo, CriterionInfo, ProjectInfo, PromptView, RankingView, SubmitResult
from rlhfkit.feedback.schema import (
    Annotator,
    Assignment,
    Completion,
    Criterion,
    Project,
    Prompt,
    Ranking,
    RankingEntry,
    Submission,
    utcnow,
)
from rlhfkit.feedback.store_base import StoreBase

_SUBMIT_ATTEMPTS = 3  # PostgreSQL: a concurrent insert of the same ranking is retried as an update

T = TypeVar("T")


class RankingsMixin(StoreBase):
    """The labelling queue and ranking submission."""

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
