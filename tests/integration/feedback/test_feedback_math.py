"""Agreement and export arithmetic, without a database: hand-computed cases and identities."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.data.io import write_jsonl
from rlhfkit.feedback.agreement import PairCounts, agreement_report, pair_counts
from rlhfkit.feedback.export import (
    LabeledPrompt,
    build_rows,
    fractional_places,
    merge_mean_rank,
    pairwise_rows,
    ranked_row,
)


def test_pair_counts_by_hand() -> None:
    """(0,1,2) vs (0,0,1): pair (0,1) tied by the second only; (0,2) and (1,2) concordant."""
    c = pair_counts([0, 1, 2], [0, 0, 1])
    assert c == PairCounts(concordant=2, discordant=0, tied_first=0, tied_second=1, tied_both=0)
    assert c.pairs == 3 and c.agreeing == 2
    assert c.tau_b() == pytest.approx(2 / math.sqrt(3 * 2), abs=1e-12)
    assert pair_counts([0, 0, 1], [1, 1, 0]) == PairCounts(0, 2, 0, 0, 1)  # tie shared: agrees
    assert pair_counts([0, 0], [0, 0]).tau_b() is None  # all tied: undefined
    with pytest.raises(ValueError, match="differ in length"):
        pair_counts([0, 1], [0, 1, 2])


def naive_tau_b(a: list[int], b: list[int]) -> float | None:
    """tau-b as sum sgn(a_i - a_j) sgn(b_i - b_j) / sqrt(sum sgn(a)^2 sum sgn(b)^2)."""

    def sgn(x: int) -> int:
        return (x > 0) - (x < 0)

    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    num = sum(sgn(a[i] - a[j]) * sgn(b[i] - b[j]) for i, j in pairs)
    den = math.sqrt(sum(sgn(a[i] - a[j]) ** 2 for i, j in pairs) * sum(sgn(b[i] - b[j]) ** 2 for i, j in pairs))
    return None if den == 0 else num / den


ranks = st.integers(2, 9).flatmap(lambda n: st.tuples(st.lists(st.integers(0, 4), min_size=n, max_size=n),
                                                      st.lists(st.integers(0, 4), min_size=n, max_size=n)))


@settings(max_examples=200, deadline=None)
@given(ranks)
def test_tau_b_matches_the_sign_product_formula(ab: tuple[list[int], list[int]]) -> None:
    a, b = ab
    got, want = pair_counts(a, b).tau_b(), naive_tau_b(a, b)
    assert (got is None) == (want is None)
    if got is not None:
        assert got == pytest.approx(want, abs=1e-12)
        assert pair_counts(a, a).tau_b() == pytest.approx(1.0)
        assert pair_counts(a, [-x for x in a]).tau_b() == pytest.approx(-1.0)  # reversed order


def test_agreement_report_lists_only_annotators_who_share_prompts() -> None:
    report = agreement_report({1: {"x": [0, 1], "y": [1, 0]}, 2: {"z": [0, 1]}})
    assert [(r.first, r.second, r.prompts, r.agreement, r.kendall_tau) for r in report.pairs] == [
        ("x", "y", 1, 0.0, -1.0)
    ]
    assert agreement_report({1: {"x": [0, 1]}}).agreement is None


def test_fractional_places_and_mean_rank_merge_by_hand() -> None:
    """Ranks (0,1,1,2): places 0, then 1 and 2 shared -> 1.5 each, then 3."""
    assert fractional_places([0, 1, 1, 2]) == [0, Fraction(3, 2), Fraction(3, 2), 3]
    assert fractional_places([5, 5, 5]) == [1, 1, 1]
    assert fractional_places([3, 0, 7]) == [1, 0, 2]  # only the order of the ranks matters
    # (0,1,2) and (2,1,0): means 1, 1, 1 -> all tied.
    assert merge_mean_rank([[0, 1, 2], [2, 1, 0]]) == [0, 0, 0]
    # (0,1,2), (1,0,2), (0,2,1): means 1/3, 1, 5/3 -> 0, 1, 2.
    assert merge_mean_rank([[0, 1, 2], [1, 0, 2], [0, 2, 1]]) == [0, 1, 2]
    # (0,0,1) -> places (.5,.5,2); with (1,0,2): means .75, .25, 2 -> b, a, c.
    assert merge_mean_rank([[0, 0, 1], [1, 0, 2]]) == [1, 0, 2]
    with pytest.raises(ValueError, match="no rankings"):
        merge_mean_rank([])


def test_rows_leave_out_what_teaches_nothing() -> None:
    # A repeated text keeps its best rank; an empty completion goes.
    assert ranked_row("p", ["x", "y", "x", " "], [2, 1, 0, 3]) == [{"prompt": "p", "completions": ["x", "y"]}]
    assert ranked_row("p", ["x", "y"], [0, 0]) == []  # all tied
    assert ranked_row("p", ["x", "y", "z"], [1, 0, 1]) == [
        {"prompt": "p", "completions": ["y", "x", "z"], "ranks": [0, 1, 1]}
    ]
    assert pairwise_rows("p", ["x", "x", "y"], [0, 1, 2]) == [{"prompt": "p", "chosen": "x", "rejected": "y"}]


def test_flagged_prompts_are_dropped_whole() -> None:
    prompts = [
        LabeledPrompt("p", ["x", "y"], {"a": [0, 1], "b": [0, 1]}, flagged=True),
        LabeledPrompt("q", ["v", "w"], {"a": [1, 0]}, flagged=False),
        LabeledPrompt("r", ["s", "t"], {}, flagged=False),  # only skips
    ]
    assert build_rows(prompts, "pairwise", "majority") == [
        {"prompt": "q", "chosen": "w", "rejected": "v", "criterion": "overall", "round": 1, "unsafe": False,
         "comments": []}]
    assert len(build_rows(prompts, "pairwise", "all", drop_flagged=False)) == 3
    assert [r["unsafe"] for r in build_rows(prompts, "pairwise", "majority", drop_flagged=False)] == [True, False]


def test_write_jsonl_replaces_the_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(out, [{"prompt": "é", "chosen": "a", "rejected": "b"}]) == 1
    assert out.read_text(encoding="utf-8") == '{"prompt": "é", "chosen": "a", "rejected": "b"}\n'

    def broken():
        yield {"prompt": "new"}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl(out, broken())
    assert json.loads(out.read_text(encoding="utf-8"))["prompt"] == "é"  # the old file is intact
    assert [p.name for p in out.parent.iterdir()] == ["rows.jsonl"]  # no temporary file left


def test_disagreement_of_one_prompt_by_hand() -> None:
    """ann (0,1,2), bob (0,2,1), cat (2,1,0) over pairs (a,b), (a,c), (b,c):
    ann-bob agree on 2 of 3, ann-cat on 0, bob-cat on 1 (b vs c): 3 of 9 agree, disagreement 6/9.
    Ties count as agreeing only when both tie."""
    from rlhfkit.feedback.reports import disagreement

    assert disagreement([[0, 1, 2], [0, 2, 1], [2, 1, 0]]) == pytest.approx(2 / 3, abs=1e-12)
    assert disagreement([[0, 0, 1], [0, 0, 1]]) == 0.0
    assert disagreement([[0, 0, 1], [0, 1, 2]]) == pytest.approx(1 / 3, abs=1e-12)
    assert disagreement([[0, 1, 2]]) is None and disagreement([]) is None
