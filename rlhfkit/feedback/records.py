"""What the store returns: plain frozen records, detached from any database session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    k: int  # completions per prompt


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    is_admin: bool


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
    ranks: dict[int, int]  # completion id -> rank (0 best, dense, equal = tie); {} when skipped
    skip: bool
    unsafe: bool
    comment: str | None
    submission_id: str  # the submission that last wrote it
    created_at: datetime
    updated_at: datetime

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


@dataclass(frozen=True)
class SubmitResult:
    ranking: RankingView
    created: bool  # first ranking of this prompt by this annotator
    duplicate: bool  # the submission id was seen before: nothing changed


@dataclass(frozen=True)
class AnnotatorProgress:
    annotator: str
    is_admin: bool
    ranked: int  # rankings, skips not included
    skipped: int
    unsafe: int  # rankings or skips flagged unsafe
    last_at: datetime | None


@dataclass(frozen=True)
class ProjectProgress:
    project: str
    k: int
    annotators_per_prompt: int
    prompts: int  # all prompts
    ready: int  # prompts with all K completions
    rankings: int  # not skipped, all annotators
    complete: int  # prompts with at least annotators_per_prompt rankings
    annotators: list[AnnotatorProgress]  # every annotator, by name


