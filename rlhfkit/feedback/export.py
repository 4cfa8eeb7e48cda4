"""Rankings -> training rows for the reward model (pure functions, no database).

Two training formats, one JSON object per line:

    ranked    {"prompt": str, "completions": [str, ...]}   best first; with
              "ranks": [0, 1, 1, 2] (dense, 0 = best) when the ranking has ties
    pairwise  {"prompt": str, "chosen": str, "rejected": str}
              one row per pair of completions ranked strictly apart

Every training row also carries the criterion it ranks by, "criterion" (the criterion's name:
`rlhfkit reward --criterion NAME` keeps one), and what the annotators said about its prompt,
which the reward data reader ignores: "round" (the sampling round), "unsafe" (flagged by an annotator: only with
`drop_flagged=False` can it be true) and "comments" ([{"annotator", "comment"}], skips' comments
included). The third format, `annotations`, is the record itself, one row per ranking or skip:

    annotations  {"prompt", "round", "annotator", "completions": [str, ...] (stored order),
                  "rankings": {criterion: [int, ...]} or null when skipped,
                  "criterion": the first exported criterion, "ranks": its ranks (null when
                  skipped or not ranked by it), "skip", "unsafe", "comment"}

and two ways of combining annotators (each criterion on its own):

    majority  one row set per prompt from the merged ranking: each annotator's ranks become
              fractional places (tied completions share the mean of the places they span:
              ranks 0,1,1,2 -> places 0, 1.5, 1.5, 3), the places are averaged over annotators
              (the Borda count up to sign and scale) and completions are ordered by that mean.
              Equal means stay tied: they give no pair and share a rank; rows list tied
              completions in their original order. Means are compared exactly (fractions).
    all       one row set per annotator ranking, with an "annotator" field

Skipped rankings never export. A prompt that any annotator flagged unsafe is left out entirely
when `drop_flagged` (the default): the flag is about the content, which is the same for all.
Empty completions and repeats of a text (the repeat keeps its best rank) are left out, and so
is a ranked row whose completions all tie: they teach the reward model nothing, and the reward
data reader (rlhfkit.data.preferences) refuses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

FORMATS = ("ranked", "pairwise", "annotations")
DEFAULT_CRITERION = "overall"  # the criterion of a LabeledPrompt built without `by_criterion`
MERGES = ("majority", "all")


@dataclass(frozen=True)
class LabeledPrompt:
    """A prompt with its completions and the (not skipped) rankings it received."""

    text: str
    completions: list[str]  # in their stored order
    rankings: dict[str, list[int]]  # by the first criterion: annotator name -> rank vector aligned with completions
    flagged: bool  # an annotator marked it unsafe (in a ranking or a skip)
    id: int | None = None  # the prompt's id in the store
    round: int = 1
    comments: dict[str, str] = field(default_factory=dict)  # annotator name -> comment (skips' too)
    flagged_by: frozenset[str] = frozenset()  # who marked it unsafe
    skipped_by: frozenset[str] = frozenset()
    # criterion name -> annotator name -> rank vector, in criterion order (the first is
    # `rankings`); empty: one criterion, "overall", holding `rankings`
    by_criterion: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def criteria_rankings(self) -> dict[str, dict[str, list[int]]]:
        return self.by_criterion or {DEFAULT_CRITERION: self.rankings}


def dense_ranks(values: Sequence[Any]) -> list[int]:
    """0 for the smallest value, 1 for the next distinct one, ... (equal values share a rank)."""
    levels = {v: i for i, v in enumerate(sorted(set(values)))}
    return [levels[v] for v in values]


def fractional_places(ranks: Sequence[int]) -> list[Fraction]:
    """The mean place (0-based) each completion occupies when ties share their places."""
    ranks = dense_ranks(ranks)
    counts = [ranks.count(r) for r in range(max(ranks) + 1)]
    starts = [sum(counts[:r]) for r in range(len(counts))]
    return [starts[r] + Fraction(counts[r] - 1, 2) for r in ranks]


def merge_mean_rank(rank_vectors: Sequence[Sequence[int]]) -> list[int]:
    """Merge several annotators' rank vectors into one by mean fractional place (dense ranks)."""
    if not rank_vectors:
        raise ValueError("no rankings to merge")
    places = [fractional_places(r) for r in rank_vectors]
    means = [sum(column) / len(places) for column in zip(*places, strict=True)]
    return dense_ranks(means)


def best_first(ranks: Sequence[int]) -> list[int]:
    """Completion indices from best to worst; ties keep their stored order."""
    return sorted(range(len(ranks)), key=lambda i: (ranks[i], i))


def usable(completions: Sequence[str], ranks: Sequence[int]) -> list[tuple[str, int]]:
    """(text, dense rank) best first, without empty texts and without repeats of a text.

    The reward data reader refuses empty text and identical texts ranked differently, and
    neither teaches the reward model anything; a repeated text keeps its best rank.
    """
    kept: list[tuple[str, int]] = []
    seen: set[str] = set()
    for i in best_first(ranks):
        text = completions[i]
        if text.strip() and text not in seen:
            seen.add(text)
            kept.append((text, ranks[i]))
    dense = dense_ranks([r for _, r in kept])
    return [(t, r) for (t, _), r in zip(kept, dense)]


def ranked_row(prompt: str, completions: Sequence[str], ranks: Sequence[int]) -> list[dict[str, Any]]:
    """The ranking as one row (none when fewer than two distinct ranks remain)."""
    items = usable(completions, ranks)
    dense = [r for _, r in items]
    if len(set(dense)) < 2:
        return []  # all tied: the row would hold no comparison
    row: dict[str, Any] = {"prompt": prompt, "completions": [t for t, _ in items]}
    if len(set(dense)) < len(dense):
        row["ranks"] = dense
    return [row]


def pairwise_rows(prompt: str, completions: Sequence[str], ranks: Sequence[int]) -> list[dict[str, Any]]:
    """Every pair ranked strictly apart: for each completion from the best, the ones below it."""
    items = usable(completions, ranks)
    return [
        {"prompt": prompt, "chosen": a, "rejected": b}
        for i, (a, rank_a) in enumerate(items)
        for b, rank_b in items[i + 1 :]
        if rank_a < rank_b
    ]


def build_rows(
    prompts: Iterable[LabeledPrompt], format: str = "pairwise", merge: str = "majority", drop_flagged: bool = True,
    criteria: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Training rows from labeled prompts, in prompt order, then criterion order (then annotator
    name for `all`); of the `criteria` named only, when given. Annotators are merged criterion
    by criterion."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
    if format == "annotations":
        return [row for p in prompts for row in annotation_rows(p, criteria)]
    make = ranked_row if format == "ranked" else pairwise_rows
    rows: list[dict[str, Any]] = []
    for p in prompts:
        if drop_flagged and p.flagged:
            continue
        for criterion, rankings in _selected(p, criteria).items():
            if not rankings:
                continue
            tag = {"criterion": criterion}
            if merge == "majority":
                notes = {"round": p.round, "unsafe": p.flagged, "comments": comment_list(p.comments)}
                merged = merge_mean_rank(list(rankings.values()))
                rows += [{**r, **tag, **notes} for r in make(p.text, p.completions, merged)]
                continue
            for name in sorted(rankings):
                own = {"round": p.round, "unsafe": name in p.flagged_by,
                       "comments": comment_list({name: p.comments[name]} if name in p.comments else {})}
                rows += [{**r, "annotator": name, **tag, **own} for r in make(p.text, p.completions, rankings[name])]
    return rows


def _selected(p: LabeledPrompt, criteria: Sequence[str] | None) -> dict[str, dict[str, list[int]]]:
    """The prompt's rankings by the `criteria` asked for (all when None), in criterion order."""
    everything = p.criteria_rankings()
    if criteria is None:
        return everything
    return {c: r for c, r in everything.items() if c in set(criteria)}


def comment_list(comments: dict[str, str]) -> list[dict[str, str]]:
    return [{"annotator": name, "comment": comments[name]} for name in sorted(comments)]


def annotation_rows(p: LabeledPrompt, criteria: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per ranking or skip of a prompt, as stored (flags, comments and skips included):
    "rankings" {criterion: ranks} by the `criteria` asked for (all when None); "criterion" and
    "ranks" are the first of them, as in a one-criterion project."""
    selected = _selected(p, criteria)
    first = next(iter(selected), None)
    names = sorted({n for r in p.criteria_rankings().values() for n in r} | set(p.skipped_by))
    rows = []
    for name in names:
        skipped = name in p.skipped_by
        rankings = None if skipped else {c: r[name] for c, r in selected.items() if name in r}
        rows.append({
            "prompt": p.text, "round": p.round, "annotator": name, "completions": list(p.completions),
            "criterion": first, "ranks": None if rankings is None else rankings.get(first or ""),
            "rankings": rankings, "skip": skipped, "unsafe": name in p.flagged_by, "comment": p.comments.get(name),
        })
    return rows

