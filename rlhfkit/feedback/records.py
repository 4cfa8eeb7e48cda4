"""What the store returns: plain frozen records, detached from any database session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ROLES = ("annotator", "admin")
"""Roles in a project: an annotator ranks; an admin also sees the admin page."""


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    k: int  # completions per prompt
    guidelines: str | None = None  # what "better" means, as the project's admin wrote it


@dataclass(frozen=True)
class CriterionInfo:
    name: str  # a slug: the "criterion" value of exported rows
    description: str  # one line shown to annotators ("" for none)
    position: int  # order on the page


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    role: str | None = None  # role in the project it was looked up for; None: not a member (or not asked)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class MemberInfo:
    annotator: str
    role: str  # one of ROLES
    revoked: bool  # the annotator's token was revoked (they cannot sign in anywhere)


@dataclass(frozen=True)
class CompletionView:
    id: int
    position: int  # order index among the prompt's completions
    text: str
    model: str
    sampling: dict[str, Any]


@dataclass(frozen=True)
class RankingView:
    id: int
    annotator: str
    prompt_id: int
    ranks: dict[int, int]  # by the project's first criterion: completion id -> rank (0 best, dense, equal = tie)
    skip: bool
    unsafe: bool
    comment: str | None
    submission_id: str  # the submission that last wrote it
    created_at: datetime
    updated_at: datetime
    # criterion name -> {completion id: rank}, in criterion order; {} when skipped. A criterion
    # added after this ranking was made is absent.
    by_criterion: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def order(self) -> list[int]:
        """Completion ids best first (ties in id order)."""
        return sorted(self.ranks, key=lambda cid: (self.ranks[cid], cid))


@dataclass(frozen=True)
class PromptView:
    id: int
    project: str
    position: int
    text: str
    completions: list[CompletionView]  # in stored order
    ranking: RankingView | None  # the asking annotator's ranking, when there is one
    criteria: list[CriterionInfo] = field(default_factory=list)  # what to rank by, in page order


@dataclass(frozen=True)
class SubmitResult:
    ranking: RankingView
    created: bool  # first ranking of this prompt by this annotator
    duplicate: bool  # the submission id was seen before: nothing changed


@dataclass(frozen=True)
class AnnotatorProgress:
    annotator: str
    role: str  # "annotator", "admin", or "removed" (ranked here, no longer a member)
    revoked: bool  # token revoked: cannot sign in
    ranked: int  # rankings, skips not included
    skipped: int
    unsafe: int  # rankings or skips flagged unsafe
    comments: int  # rankings or skips with a comment
    last_at: datetime | None


@dataclass(frozen=True)
class RoundProgress:
    round: int
    prompts: int
    ready: int  # with all K completions
    rankings: int  # not skipped
    complete: int  # prompts with at least annotators_per_prompt rankings


@dataclass(frozen=True)
class CriterionProgress:
    criterion: str
    description: str
    rankings: int  # rankings (not skips) with ranks by this criterion
    complete: int  # prompts with at least annotators_per_prompt of them
    agreement: float | None  # pairwise agreement between annotators by this criterion (None: no shared prompt)
    kendall_tau: float | None


@dataclass(frozen=True)
class ProjectProgress:
    project: str
    k: int
    annotators_per_prompt: int
    prompts: int  # all prompts
    ready: int  # prompts with all K completions
    rankings: int  # not skipped, all annotators
    complete: int  # prompts with at least annotators_per_prompt rankings
    annotators: list[AnnotatorProgress]  # the project's members and anyone who ranked in it, by name
    rounds: list[RoundProgress]  # per sampling round, in order
    criteria: list[CriterionProgress] = field(default_factory=list)  # per criterion, in page order



@dataclass(frozen=True)
class PromptSummary:
    """One line of the admin page's prompt table."""

    id: int
    round: int
    position: int
    text: str
    rankings: int  # not skipped
    skips: int
    unsafe: int  # rankings or skips flagged unsafe
    comments: int
    disagreement: float | None  # 1 - pairwise agreement over its annotator pairs; None below 2 rankings
    # the same per criterion (the first criterion's is `disagreement`)
    disagreement_by_criterion: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptDetail:
    """A prompt with every annotator's ranking of it (the admin page's per-prompt view)."""

    id: int
    round: int
    position: int
    text: str
    completions: list[CompletionView]  # in stored order
    rankings: list[RankingView]  # by annotator name
    disagreement: float | None  # by the first criterion
    criteria: list[CriterionInfo] = field(default_factory=list)
    disagreement_by_criterion: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CommentView:
    """A comment an annotator left on a prompt (with a ranking or a skip)."""

    prompt_id: int
    round: int
    prompt: str
    annotator: str
    comment: str
    skip: bool
    unsafe: bool
    updated_at: datetime
