"""Named limits and the checks of everything that goes into the store.

Each check raises a FeedbackError (an InvalidRanking for rankings) that names the item that is
wrong and what is expected, so the CLI and the web app can pass the message on as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rlhfkit.feedback.errors import FeedbackError, InvalidRanking
from rlhfkit.feedback.export import dense_ranks

MIN_K = 2
MAX_K = 9
"""Most completions per prompt: the page picks them with the number keys 1-9."""
MAX_TEXT_CHARS = 100_000
"""Longest prompt or completion accepted (the page shows them whole)."""
MAX_COMMENT_CHARS = 2_000
MAX_NAME_CHARS = 100
"""Longest project or annotator name."""
MAX_MODEL_CHARS = 300
"""Longest model id stored with a completion (HF ids and local paths)."""
MAX_SUBMISSION_ID_CHARS = 100
"""Longest client submission id (a UUID is 36)."""
MAX_TOKEN_CHARS = 200
"""Longer strings are not looked up as tokens (ours are 32)."""
MAX_CRITERION_CHARS = 40
"""Longest criterion name (a short slug shown as a heading and used as the export tag)."""
MAX_DESCRIPTION_CHARS = 300
"""Longest criterion description (one line under its heading on the page)."""
DEFAULT_CRITERION = "overall"
"""The criterion a project declared without any gets (empty description: the page shows no heading)."""
MAX_ID = 2**31 - 1
"""Largest row id (PostgreSQL's INTEGER): a larger number cannot name a row, and is not sent to
the database, where it would be an error rather than "not found"."""
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")
_CRITERION = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def normalise_ranking(
    prompt_id: int, completion_ids: Sequence[int], ranks: Mapping[int, int] | None, order: Sequence[int] | None,
    criterion: str | None = None,
) -> dict[int, int]:
    """Check a ranking covers exactly the prompt's completions; return dense ranks {id: rank}.
    `criterion`, when given, is named in the errors."""
    where = f"ranking of prompt {prompt_id}" + (f" by criterion {criterion!r}" if criterion is not None else "")
    shown = ", ".join(map(str, completion_ids))
    if (ranks is None) == (order is None):
        raise InvalidRanking(
            f"{where}: give either `order` (completion ids best first) or `ranks` ({{completion id: rank}}), "
            "not both and not neither; or skip the prompt"
        )
    if order is not None:
        if isinstance(order, (str, bytes, Mapping)) or not isinstance(order, Sequence):
            raise InvalidRanking(f"{where}: `order` must be a list of completion ids, got {type(order).__name__}")
        ids = list(order)
        for cid in ids:
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise InvalidRanking(f"{where}: `order` must hold completion ids (integers), got {cid!r}")
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        if dupes:
            raise InvalidRanking(f"{where}: completion {dupes[0]} appears more than once in `order`")
        given = {cid: i for i, cid in enumerate(ids)}
    else:
        if not isinstance(ranks, Mapping):
            raise InvalidRanking(f"{where}: `ranks` must map completion ids to ranks, got {type(ranks).__name__}")
        given = {}
        for cid, rank in ranks.items():
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise InvalidRanking(f"{where}: `ranks` keys must be completion ids (integers), got {cid!r}")
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
                raise InvalidRanking(f"{where}: rank of completion {cid} must be an integer >= 0, got {rank!r}")
            given[cid] = rank
    unknown = [c for c in given if c not in set(completion_ids)]
    if unknown:
        raise InvalidRanking(
            f"{where}: completion {unknown[0]} is not one of this prompt's completions ({shown}); "
            "rank exactly the completions shown"
        )
    missing = [c for c in completion_ids if c not in given]
    if missing:
        raise InvalidRanking(
            f"{where}: completion {missing[0]} is missing; rank all {len(completion_ids)} completions shown ({shown})"
        )
    dense = dense_ranks([given[c] for c in completion_ids])
    return dict(zip(completion_ids, dense, strict=True))


def is_row_id(value: object) -> bool:
    """Whether `value` can be the id of a stored row."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise FeedbackError(f"{what} must be non-empty text, got {name!r}")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise FeedbackError(f"{what} is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    if any(not ch.isprintable() for ch in name):
        raise FeedbackError(f"{what} {name!r} contains control characters")
    return name


def check_criterion_name(name: object) -> str:
    """A criterion name: a short slug (lowercase letters, digits, _ or -), the export's tag."""
    if not isinstance(name, str) or not _CRITERION.match(name.strip()) or len(name.strip()) > MAX_CRITERION_CHARS:
        raise FeedbackError(
            f"criterion name {name!r}: use 1-{MAX_CRITERION_CHARS} lowercase letters, digits, _ or - "
            "(starting with a letter or digit), e.g. helpful"
        )
    return name.strip()


def check_criterion_description(description: object, name: str) -> str:
    """One line of text shown under the criterion's heading (may be empty)."""
    if description is None:
        return ""
    if not isinstance(description, str):
        raise FeedbackError(f"description of criterion {name!r} must be text, got {type(description).__name__}")
    text = description.strip()
    if "\n" in text or "\r" in text or any(not ch.isprintable() for ch in text):
        raise FeedbackError(f"description of criterion {name!r} must be one line of printable text")
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise FeedbackError(
            f"description of criterion {name!r} is {len(text)} characters; the limit is {MAX_DESCRIPTION_CHARS}"
        )
    return text


def check_text(text: object, what: str, *, allow_empty: bool) -> None:
    if not isinstance(text, str):
        raise FeedbackError(f"{what} must be text, got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise FeedbackError(f"{what} is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise FeedbackError(f"{what} is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")


def check_completions(texts: Sequence[str], k: int, what: str, *, have: int, exact: bool) -> None:
    """`exact`: the texts must be all K at once (import); otherwise they may fill a prompt in parts."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise FeedbackError(f"{what}: completions must be a list of texts, got {type(texts).__name__}")
    if exact and len(texts) != k:
        raise FeedbackError(f"{what}: {len(texts)} completions given; the project takes exactly k={k}")
    if not texts:
        raise FeedbackError(f"{what}: no completions given")
    if have + len(texts) > k:
        raise FeedbackError(
            f"{what}: {len(texts)} more completions would make {have + len(texts)}; "
            f"the project takes k={k} and it already has {have}"
        )
    for j, t in enumerate(texts):
        check_text(t, f"{what}, completion {j + 1}", allow_empty=True)  # a model may say nothing


def check_sampling(sampling: Mapping[str, Any] | None) -> dict[str, Any]:
    if sampling is None:
        return {}
    if not isinstance(sampling, Mapping):
        raise FeedbackError(f"sampling settings must be a mapping, got {type(sampling).__name__}")
    try:
        return json.loads(json.dumps(dict(sampling)))
    except (TypeError, ValueError) as e:
        raise FeedbackError(f"sampling settings must be JSON values (numbers, text, lists): {e}") from None


def check_model(model: object) -> str:
    if not isinstance(model, str) or not model.strip():
        raise FeedbackError(f"model must be a non-empty model id, got {model!r}")
    if len(model) > MAX_MODEL_CHARS:
        raise FeedbackError(f"model id is {len(model)} characters; the limit is {MAX_MODEL_CHARS}")
    return model


def check_submission_id(sid: object) -> str:
    if not isinstance(sid, str) or not _SUBMISSION_ID.match(sid) or len(sid) > MAX_SUBMISSION_ID_CHARS:
        raise FeedbackError(
            f"submission_id must be 1-{MAX_SUBMISSION_ID_CHARS} letters, digits or _ . : -, got {sid!r}"
        )
    return sid


