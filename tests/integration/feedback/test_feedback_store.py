"""The feedback store, run on SQLite and on PostgreSQL (the `store` fixture is parametrised).

Expected numbers are worked out by hand in each test's docstring.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from rlhfkit.feedback.migrations import VERSION_TABLE, head_revision
from rlhfkit.feedback.schema import Base, Prompt, Ranking, Submission
from rlhfkit.feedback.store import (
    Conflict,
    DatabaseUnavailable,
    FeedbackError,
    FeedbackStore,
    InvalidRanking,
    NotFound,
)


def seed(store: FeedbackStore, project: str, k: int, prompts: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Create a project with prompts and completions; {prompt text: {completion text: id}} (+ "_id")."""
    store.create_project(project, k)
    ids = store.add_prompts(project, list(prompts), [list(c) for c in prompts.values()], model="tiny",
                            sampling={"temperature": 0.7, "top_p": 0.9})
    out = {}
    for pid, text_ in zip(ids, prompts):
        view = store.prompt(pid)
        out[text_] = {c.text: c.id for c in view.completions} | {"_id": pid}
    return out


ABC = {"p1": ["a1", "b1", "c1"], "p2": ["a2", "b2", "c2"], "p3": ["a3", "b3", "c3"], "p4": ["a4", "b4", "c4"]}


# ----- schema ---------------------------------------------------------------------------------
def test_schema_is_created_by_alembic_and_matches_the_models(store: FeedbackStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        version = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
        assert version == head_revision()
        tables = set(inspect(conn).get_table_names())
        assert {"projects", "prompts", "completions", "annotators", "rankings", "ranking_entries", "submissions",
                "assignments"} <= tables
        # The migrations produce exactly the tables schema.py declares (no drift either way).
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(context, Base.metadata)
        assert diff == []
        uniques = {tuple(u["column_names"]) for u in inspect(conn).get_unique_constraints("rankings")}
        assert ("submission_id",) in uniques and ("annotator_id", "prompt_id") in uniques
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_reopening_keeps_data_and_does_not_migrate_again(store_url: str) -> None:
    with FeedbackStore.open(store_url) as s:
        s.create_project("keep", 2)
    with FeedbackStore.open(store_url) as s:
        assert [p.name for p in s.projects()] == ["keep"]


# ----- round trip -----------------------------------------------------------------------------
def test_ranking_round_trip_with_completion_provenance(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 3, {"p1": ["a", "b", "c"]})
    pid = ids["p1"]["_id"]
    view = store.prompt(pid)
    assert [c.text for c in view.completions] == ["a", "b", "c"]
    assert [c.position for c in view.completions] == [0, 1, 2]
    assert view.completions[0].model == "tiny"
    assert view.completions[0].sampling == {"temperature": 0.7, "top_p": 0.9}

    store.add_annotator("ada")
    a, b, c = ids["p1"]["a"], ids["p1"]["b"], ids["p1"]["c"]
    result = store.submit_ranking("ada", pid, order=[c, a, b], comment="  c is best  ", submission_id="sub-1")
    assert result.created and not result.duplicate
    stored = store.get_ranking("ada", pid)
    assert stored is not None
    assert stored.ranks == {c: 0, a: 1, b: 2}
    assert stored.order == [c, a, b]
    assert stored.comment == "c is best"
    assert (stored.skip, stored.unsafe, stored.submission_id) == (False, False, "sub-1")
    assert stored.created_at.tzinfo is not None and stored.updated_at == stored.created_at
    assert store.prompt(pid, "ada").ranking == stored


def test_ties_are_stored_as_dense_ranks(store: FeedbackStore) -> None:
    """ranks {a: 0, b: 5, c: 5, d: 7} -> dense 0, 1, 1, 2 (equal ranks stay equal)."""
    ids = seed(store, "demo", 4, {"p": ["a", "b", "c", "d"]})["p"]
    store.add_annotator("ada")
    store.submit_ranking("ada", ids["_id"], {ids["a"]: 0, ids["b"]: 5, ids["c"]: 5, ids["d"]: 7})
    assert store.get_ranking("ada", ids["_id"]).ranks == {ids["a"]: 0, ids["b"]: 1, ids["c"]: 1, ids["d"]: 2}


def test_a_retried_submission_id_stores_one_ranking(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 2, {"p": ["x", "y"]})["p"]
    store.add_annotator("ada")
    first = store.submit_ranking("ada", ids["_id"], order=[ids["x"], ids["y"]], submission_id="retry-me")
    again = store.submit_ranking("ada", ids["_id"], ranks={ids["x"]: 0, ids["y"]: 3}, submission_id="retry-me")
    assert first.created and not first.duplicate
    assert again.duplicate and not again.created  # the same content, said another way: a retry
    assert again.ranking.ranks == {ids["x"]: 0, ids["y"]: 1}
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Ranking)) == 1
        assert conn.scalar(select(func.count()).select_from(Submission)) == 1


@pytest.mark.parametrize("change", [
    {"order": "reversed"}, {"unsafe": True}, {"comment": "on second thought"}, {"skip": True},
])
def test_a_submission_id_names_one_content(store: FeedbackStore, change: dict[str, Any]) -> None:
    """The lost-change bug: the same id with a changed ranking, flag or comment was taken for a
    retry and the change silently dropped. Now it is refused, and a new id stores the change."""
    ids = seed(store, "demo", 2, {"p": ["x", "y"]})["p"]
    store.add_annotator("ada")
    store.submit_ranking("ada", ids["_id"], order=[ids["x"], ids["y"]], submission_id="first-id")
    changed: dict[str, Any] = {"order": [ids["x"], ids["y"]]}
    if change.get("order") == "reversed":
        changed["order"] = [ids["y"], ids["x"]]
    changed |= {k: v for k, v in change.items() if k != "order"}
    with pytest.raises(Conflict, match="a changed ranking is a new submission"):
        store.submit_ranking("ada", ids["_id"], submission_id="first-id", **changed)
    assert store.get_ranking("ada", ids["_id"]).ranks == {ids["x"]: 0, ids["y"]: 1}
    stored = store.submit_ranking("ada", ids["_id"], submission_id="second-id", **changed)
    assert not stored.duplicate
    view = store.get_ranking("ada", ids["_id"])
    assert (view.skip, view.unsafe, view.comment) == (
        bool(change.get("skip")), bool(change.get("unsafe")), change.get("comment"))
    if change.get("order") == "reversed":
        assert view.ranks == {ids["y"]: 0, ids["x"]: 1}


def test_a_late_retry_does_not_undo_a_later_change(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 2, {"p": ["x", "y"]})["p"]
    store.add_annotator("ada")
    store.submit_ranking("ada", ids["_id"], order=[ids["x"], ids["y"]], submission_id="first")
    store.submit_ranking("ada", ids["_id"], order=[ids["y"], ids["x"]], submission_id="second")
    late = store.submit_ranking("ada", ids["_id"], order=[ids["x"], ids["y"]], submission_id="first")
    assert late.duplicate
    assert store.get_ranking("ada", ids["_id"]).ranks == {ids["y"]: 0, ids["x"]: 1}


def test_a_submission_id_cannot_be_reused_for_another_ranking(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 2, {"p": ["x", "y"], "q": ["v", "w"]})
    store.add_annotator("ada")
    store.add_annotator("bob")
    p, q = ids["p"], ids["q"]
    store.submit_ranking("ada", p["_id"], order=[p["x"], p["y"]], submission_id="same")
    with pytest.raises(Conflict, match="already used"):
        store.submit_ranking("ada", q["_id"], order=[q["v"], q["w"]], submission_id="same")
    with pytest.raises(Conflict, match="already used"):
        store.submit_ranking("bob", p["_id"], order=[p["x"], p["y"]], submission_id="same")


def test_ranking_again_updates_the_ranking(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 3, {"p": ["a", "b", "c"]})["p"]
    store.add_annotator("ada")
    first = store.submit_ranking("ada", ids["_id"], order=[ids["a"], ids["b"], ids["c"]], submission_id="one")
    second = store.submit_ranking("ada", ids["_id"], order=[ids["c"], ids["b"], ids["a"]], unsafe=True,
                                  comment="changed my mind", submission_id="two")
    assert first.created and not second.created and not second.duplicate
    assert second.ranking.id == first.ranking.id
    assert second.ranking.ranks == {ids["c"]: 0, ids["b"]: 1, ids["a"]: 2}
    assert second.ranking.unsafe and second.ranking.comment == "changed my mind"
    assert second.ranking.created_at == first.ranking.created_at
    assert second.ranking.updated_at >= first.ranking.updated_at
    assert second.ranking.submission_id == "two"
    assert len(store.rankings("demo")) == 1
    assert n_rankings(store, ids["_id"]) == 1
    # A skip replaces a ranking too, and its entries go; it no longer counts towards the prompt.
    store.submit_ranking("ada", ids["_id"], skip=True, submission_id="three")
    assert store.get_ranking("ada", ids["_id"]).ranks == {}
    assert n_rankings(store, ids["_id"]) == 0
    store.submit_ranking("ada", ids["_id"], order=[ids["a"], ids["b"], ids["c"]], submission_id="four")
    assert n_rankings(store, ids["_id"]) == 1


def n_rankings(store: FeedbackStore, prompt_id: int) -> int:
    """The counter on the prompt row that next_prompt relies on."""
    with store.engine.connect() as conn:
        return conn.scalar(select(Prompt.n_rankings).where(Prompt.id == prompt_id))


def test_concurrent_identical_submissions_store_one_ranking(store: FeedbackStore) -> None:
    """Eight threads send the same submission at once (a double click, a retry storm)."""
    ids = seed(store, "demo", 2, {"p": ["x", "y"]})["p"]
    store.add_annotator("ada")
    results, errors = [], []
    barrier = threading.Barrier(8, timeout=10)

    def send() -> None:
        try:
            barrier.wait()
            results.append(store.submit_ranking("ada", ids["_id"], order=[ids["y"], ids["x"]], submission_id="storm"))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sum(r.created for r in results) == 1 and sum(r.duplicate for r in results) == 7
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Ranking)) == 1
        assert conn.scalar(select(func.count()).select_from(Submission)) == 1


# ----- bad input ------------------------------------------------------------------------------
def test_rankings_that_are_not_of_exactly_the_shown_completions_are_refused(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 3, {"p": ["a", "b", "c"], "q": ["d", "e", "f"]})
    store.add_annotator("ada")
    p, q = ids["p"], ids["q"]
    a, b, c, pid = p["a"], p["b"], p["c"], p["_id"]
    cases = [
        ({"order": [a, b]}, f"completion {c} is missing"),
        ({"order": [a, b, c, q["d"]]}, f"completion {q['d']} is not one of this prompt's completions"),
        ({"order": [a, b, b]}, f"completion {b} appears more than once"),
        ({"order": [a, b, "c"]}, "integers"),
        ({"ranks": {a: 0, b: 1}}, f"completion {c} is missing"),
        ({"ranks": {a: 0, b: 1, c: -1}}, f"rank of completion {c} must be an integer >= 0"),
        ({"ranks": {a: 0, b: True, c: 1}}, f"rank of completion {b}"),
        ({}, "give either"),
        ({"order": [a, b, c], "ranks": {a: 0, b: 1, c: 2}}, "give either"),
    ]
    for i, (kwargs, reason) in enumerate(cases):
        with pytest.raises(InvalidRanking, match=reason):
            store.submit_ranking("ada", pid, kwargs.get("ranks"), order=kwargs.get("order"), submission_id=f"bad-{i}")
    assert store.rankings("demo") == []


def test_unknown_prompts_annotators_and_projects(store: FeedbackStore) -> None:
    ids = seed(store, "demo", 2, {"p": ["x", "y"]})["p"]
    store.create_project("other", 2)
    store.add_annotator("ada")
    with pytest.raises(NotFound, match="prompt 999"):
        store.submit_ranking("ada", 999, order=[1, 2])
    for beyond in (2**31, 10**30):  # no such row can exist; never sent to the database
        with pytest.raises(NotFound, match=f"prompt {beyond}"):
            store.submit_ranking("ada", beyond, order=[1, 2])
        with pytest.raises(NotFound):
            store.prompt(beyond)
        with pytest.raises(NotFound):
            store.add_completions(beyond, ["x"], model="m")
        assert store.get_ranking("ada", beyond) is None
    with pytest.raises(NotFound, match="not found in project 'other'"):
        store.submit_ranking("ada", ids["_id"], order=[ids["x"], ids["y"]], project="other")
    with pytest.raises(NotFound, match="annotator 'nobody'"):
        store.submit_ranking("nobody", ids["_id"], order=[ids["x"], ids["y"]])
    with pytest.raises(NotFound, match=r"project 'nope' not found \(known projects: demo, other\)"):
        store.next_prompt("nope", "ada")


def test_project_and_content_limits(store: FeedbackStore) -> None:
    for k in (1, 10, True):
        with pytest.raises(FeedbackError, match="k \\(completions per prompt\\)"):
            store.create_project(f"k{k}", k)
    store.create_project("demo", 3)
    with pytest.raises(Conflict, match="already exists"):
        store.create_project("demo", 3)
    assert store.create_project("demo", 3, exist_ok=True).k == 3
    with pytest.raises(Conflict, match="k=3, not k=4"):
        store.create_project("demo", 4, exist_ok=True)
    with pytest.raises(FeedbackError, match="no prompts given"):
        store.add_prompts("demo", [])
    with pytest.raises(FeedbackError, match="prompt 2 is empty"):
        store.add_prompts("demo", ["fine", "  "])
    with pytest.raises(FeedbackError, match="prompt 1: 2 completions given; the project takes exactly k=3"):
        store.add_prompts("demo", ["p"], [["x", "y"]])
    [pid] = store.add_prompts("demo", ["p"])
    store.add_completions(pid, ["x", "y"], model="m1")
    with pytest.raises(FeedbackError, match="would make 4; the project takes k=3 and it already has 2"):
        store.add_completions(pid, ["z", "w"], model="m2")
    store.add_completions(pid, ["z"], model="m2", sampling={"temperature": 1.2})
    view = store.prompt(pid)
    assert [(c.text, c.position, c.model) for c in view.completions] == [("x", 0, "m1"), ("y", 1, "m1"),
                                                                         ("z", 2, "m2")]
    with pytest.raises(FeedbackError, match="JSON values"):
        store.add_completions(pid, ["q"], model="m", sampling={"bad": object()})


def test_a_prompt_without_all_its_completions_is_not_offered_or_rankable(store: FeedbackStore) -> None:
    store.create_project("demo", 3)
    [pid] = store.add_prompts("demo", ["p"])
    [x, y] = store.add_completions(pid, ["x", "y"], model="m")
    store.add_annotator("ada")
    assert store.next_prompt("demo", "ada") is None
    with pytest.raises(Conflict, match="has 2 of its 3 completions"):
        store.submit_ranking("ada", pid, order=[x, y])


# ----- annotators -----------------------------------------------------------------------------
def test_tokens_are_stored_hashed(store: FeedbackStore) -> None:
    import hashlib

    store.create_project("demo", 2)
    token = store.add_annotator("ada", project="demo", role="admin")
    assert len(token) >= 32
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM annotators WHERE name = 'ada'")).scalar_one()
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    who = store.annotator_for_token(token, "demo")
    assert who is not None and who.name == "ada" and who.is_admin
    assert store.annotator_for_token(token + "x") is None
    assert store.annotator_for_token("") is None
    assert store.annotator_for_token(None) is None
    with pytest.raises(Conflict, match="annotator 'ada' already exists"):
        store.add_annotator("ada")
    with pytest.raises(FeedbackError, match="annotator name must be non-empty"):
        store.add_annotator("  ")


# ----- which prompt next ----------------------------------------------------------------------
def test_next_prompt_spreads_prompts_over_annotators(store: FeedbackStore) -> None:
    """N = 2 annotators per prompt, 4 prompts, annotators a, b, c taking turns (take, rank):

        a: p1 | b: p1 (now 2) | c: p2 | a: p2 (2) | b: p3 | c: p3 (2) | a: p4 | b: p4 (2) | c: none
    """
    ids = seed(store, "demo", 3, ABC)
    for name in "abc":
        store.add_annotator(name)
    given = []
    for name in "abcabcabcab":
        view = store.next_prompt("demo", name, 2)
        given.append((name, view.text if view else None))
        if view is not None:
            store.submit_ranking(name, view.id, order=[c.id for c in view.completions])
    assert given == [("a", "p1"), ("b", "p1"), ("c", "p2"), ("a", "p2"), ("b", "p3"), ("c", "p3"),
                     ("a", "p4"), ("b", "p4"), ("c", None), ("a", None), ("b", None)]
    per_prompt = {}
    for r in store.rankings("demo"):
        per_prompt.setdefault(r.prompt_id, set()).add(r.annotator)
    assert per_prompt == {ids["p1"]["_id"]: {"a", "b"}, ids["p2"]["_id"]: {"a", "c"},
                          ids["p3"]["_id"]: {"b", "c"}, ids["p4"]["_id"]: {"a", "b"}}


def test_next_prompt_counts_prompts_in_hand_and_repeats_them(store: FeedbackStore) -> None:
    """N = 2: a and b are handed p1 (two in hand), so c gets p2; asking again gives the same."""
    seed(store, "demo", 3, ABC)
    for name in "abcd":
        store.add_annotator(name)
    assert store.next_prompt("demo", "a", 2).text == "p1"
    assert store.next_prompt("demo", "b", 2).text == "p1"
    assert store.next_prompt("demo", "c", 2).text == "p2"
    assert store.next_prompt("demo", "a", 2).text == "p1"
    assert store.standing("demo", "a", 2) == (0, 4)  # p1 (in hand), p2, p3, p4
    assert store.standing("demo", "d", 2) == (0, 3)  # p1 is taken by two others


def test_an_expired_hand_out_is_offered_again(store: FeedbackStore) -> None:
    seed(store, "demo", 3, ABC)
    store.add_annotator("a")
    store.add_annotator("b")
    assert store.next_prompt("demo", "a", 1, lease_seconds=-1).text == "p1"  # already expired
    assert store.next_prompt("demo", "b", 1).text == "p1"


def test_skips_do_not_count_towards_the_annotators_of_a_prompt(store: FeedbackStore) -> None:
    seed(store, "demo", 3, ABC)
    store.add_annotator("a")
    store.add_annotator("b")
    view = store.next_prompt("demo", "a", 1)
    store.submit_ranking("a", view.id, skip=True)
    assert store.next_prompt("demo", "a", 1).text == "p2"  # a never sees p1 again
    assert store.next_prompt("demo", "b", 1).text == "p1"  # p1 still needs a ranking


def test_previous_prompt_walks_back_through_the_rankings(store: FeedbackStore) -> None:
    seed(store, "demo", 3, ABC)
    store.add_annotator("a")
    order = []
    for _ in range(3):
        view = store.next_prompt("demo", "a", 1)
        store.submit_ranking("a", view.id, order=[c.id for c in view.completions])
        order.append(view.id)
    current = store.next_prompt("demo", "a", 1)  # p4, not ranked yet
    back1 = store.previous_prompt("demo", "a", before=current.id)
    back2 = store.previous_prompt("demo", "a", before=back1.id)
    back3 = store.previous_prompt("demo", "a", before=back2.id)
    assert [back1.id, back2.id, back3.id] == order[::-1]
    assert back1.ranking is not None and back1.ranking.order == [c.id for c in back1.completions]
    assert store.previous_prompt("demo", "a", before=back3.id) is None
    assert store.previous_prompt("demo", "a").id == order[-1]
    # Changing an earlier ranking keeps the walk order.
    store.submit_ranking("a", order[0], order=[c.id for c in reversed(back3.completions)])
    assert store.previous_prompt("demo", "a").id == order[-1]


# ----- reports --------------------------------------------------------------------------------
def label_export_case(store: FeedbackStore) -> dict[str, dict[str, int]]:
    """K = 3.  p1: ann a>b>c, bob a=b>c.  p2: ann c>a>b, bob skips.
    p3: ann a>b>c flagged unsafe, bob b>a>c.  p4: bob skips.  cat ranks nothing.
    Comments: ann on p1 "close call", bob on his p2 skip "off topic".  dan is no member."""
    ids = seed(store, "demo", 3, ABC)
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name, project="demo")
    store.add_annotator("dan")

    def o(p: str, *names: str) -> list[int]:
        return [ids[p][n + p[1]] for n in names]

    p1, p2, p3, p4 = (ids[p]["_id"] for p in ("p1", "p2", "p3", "p4"))
    store.submit_ranking("ann", p1, order=o("p1", "a", "b", "c"), comment="close call")
    store.submit_ranking("bob", p1, {ids["p1"]["a1"]: 0, ids["p1"]["b1"]: 0, ids["p1"]["c1"]: 1})
    store.submit_ranking("ann", p2, order=o("p2", "c", "a", "b"))
    store.submit_ranking("bob", p2, skip=True, comment="off topic")
    store.submit_ranking("ann", p3, order=o("p3", "a", "b", "c"), unsafe=True)
    store.submit_ranking("bob", p3, order=o("p3", "b", "a", "c"))
    store.submit_ranking("bob", p4, skip=True)
    return ids


def test_progress_counts(store: FeedbackStore) -> None:
    """ann: ranked p1 p2 p3, one unsafe. bob: ranked p1 p3, skipped p2 p4. cat: nothing.
    Prompts 4, all ready; 5 rankings; with N = 2, complete are p1 and p3."""
    label_export_case(store)
    p = store.progress("demo", annotators_per_prompt=2)
    assert (p.prompts, p.ready, p.rankings, p.complete, p.k) == (4, 4, 5, 2, 3)
    rows = {a.annotator: (a.role, a.ranked, a.skipped, a.unsafe, a.comments) for a in p.annotators}
    assert rows == {"ann": ("annotator", 3, 0, 1, 1), "bob": ("annotator", 2, 2, 0, 1),
                    "cat": ("annotator", 0, 0, 0, 0)}  # dan is no member: not listed
    assert [(r.round, r.prompts, r.ready, r.rankings, r.complete) for r in p.rounds] == [(1, 4, 4, 5, 2)]
    notes = store.comments("demo")
    assert [(c.prompt, c.annotator, c.comment, c.skip) for c in notes] == [
        ("p2", "bob", "off topic", True), ("p1", "ann", "close call", False)]  # newest first
    assert notes[0].updated_at.tzinfo is not None and len(store.comments("demo", limit=1)) == 1
    assert [a.last_at is None for a in p.annotators] == [False, False, True]
    assert store.standing("demo", "bob", 2) == (4, 0)
    assert store.standing("demo", "cat", 2) == (0, 2)  # p2 (only ann) and p4 (nobody)


def test_agreement_matches_hand_computed_values(store: FeedbackStore) -> None:
    """Pairs (a,b), (a,c), (b,c); signs < 0 mean the first is better.

    p1: ann (0,1,2), bob (0,2,1), cat (2,1,0).  p2: ann (0,1,2), bob (0,0,1).
    ann-bob p1: ann ---, bob --+  -> C=2 D=1: agree 2/3, tau (2-1)/3 = 1/3
    ann-bob p2: bob ties (a,b)    -> C=2, tied by bob only 1: agree 2/3, tau 2/sqrt(3*2)
    ann-cat p1: reversed          -> D=3: agree 0/3, tau -1
    bob-cat p1: bob --+, cat +++  -> C=1 D=2: agree 1/3, tau -1/3
    ann-bob: agreement 4/6, tau (1/3 + 2/sqrt 6)/2; overall 5/12 and (1/3 + 2/sqrt 6 - 1 - 1/3)/4.
    """
    ids = seed(store, "demo", 3, {"p1": ["a1", "b1", "c1"], "p2": ["a2", "b2", "c2"]})
    for name in ("ann", "bob", "cat"):
        store.add_annotator(name)

    def ranks(p: str, a: int, b: int, c: int) -> dict[int, int]:
        return {ids[p]["a" + p[1]]: a, ids[p]["b" + p[1]]: b, ids[p]["c" + p[1]]: c}

    store.submit_ranking("ann", ids["p1"]["_id"], ranks("p1", 0, 1, 2))
    store.submit_ranking("bob", ids["p1"]["_id"], ranks("p1", 0, 2, 1))
    store.submit_ranking("cat", ids["p1"]["_id"], ranks("p1", 2, 1, 0))
    store.submit_ranking("ann", ids["p2"]["_id"], ranks("p2", 0, 1, 2))
    store.submit_ranking("bob", ids["p2"]["_id"], ranks("p2", 0, 0, 1))

    report = store.agreement("demo")
    got = {(r.first, r.second): (r.prompts, r.pairs, r.agreement, r.kendall_tau) for r in report.pairs}
    assert set(got) == {("ann", "bob"), ("ann", "cat"), ("bob", "cat")}
    assert got[("ann", "bob")][:2] == (2, 6)
    assert got[("ann", "bob")][2] == pytest.approx(4 / 6, abs=1e-12)
    assert got[("ann", "bob")][3] == pytest.approx((1 / 3 + 2 / math.sqrt(6)) / 2, abs=1e-12)
    assert got[("ann", "cat")] == (1, 3, 0.0, pytest.approx(-1.0, abs=1e-12))
    assert got[("bob", "cat")][:3] == (1, 3, pytest.approx(1 / 3, abs=1e-12))
    assert got[("bob", "cat")][3] == pytest.approx(-1 / 3, abs=1e-12)
    assert report.agreement == pytest.approx(5 / 12, abs=1e-12)
    assert report.kendall_tau == pytest.approx((1 / 3 + 2 / math.sqrt(6) - 1 - 1 / 3) / 4, abs=1e-12)


def test_export_formats_match_hand_written_rows(store: FeedbackStore) -> None:
    """Majority on p1: ann's places (0,1,2), bob's a=b tie -> (0.5,0.5,2); means a 0.25, b 0.75,
    c 2 -> a>b>c. On p3 (kept only with --keep-flagged): ann (0,1,2), bob (1,0,2) -> a 0.5,
    b 0.5, c 2: a and b tie. p2 has ann's ranking only; p4 only a skip: never exported."""
    label_export_case(store)
    ann_p1 = [{"annotator": "ann", "comment": "close call"}]
    bob_p2 = [{"annotator": "bob", "comment": "off topic"}]
    none = {"criterion": "overall", "round": 1, "unsafe": False, "comments": []}
    ranked_all = [
        {"prompt": "p1", "completions": ["a1", "b1", "c1"], "annotator": "ann", **none, "comments": ann_p1},
        {"prompt": "p1", "completions": ["a1", "b1", "c1"], "ranks": [0, 0, 1], "annotator": "bob", **none},
        {"prompt": "p2", "completions": ["c2", "a2", "b2"], "annotator": "ann", **none},
    ]
    assert store.export_rows("demo", "ranked", "all") == ranked_all
    assert store.export_rows("demo", "ranked", "majority") == [
        {"prompt": "p1", "completions": ["a1", "b1", "c1"], **none, "comments": ann_p1},
        {"prompt": "p2", "completions": ["c2", "a2", "b2"], **none, "comments": bob_p2},  # the skip's comment too
    ]
    assert store.export_rows("demo", "ranked", "majority", drop_flagged=False)[-1] == {
        "prompt": "p3", "completions": ["a3", "b3", "c3"], "ranks": [0, 0, 1], **none, "unsafe": True,
    }

    def pairs(prompt: str, *chosen_rejected: str, who: str | None = None, **notes: object) -> list[dict]:
        rows = [{"prompt": prompt, "chosen": cr[:2], "rejected": cr[2:]} for cr in chosen_rejected]
        rows = [r | {"annotator": who} for r in rows] if who else rows
        return [r | none | notes for r in rows]

    assert store.export_rows("demo", "pairwise", "majority") == (
        pairs("p1", "a1b1", "a1c1", "b1c1", comments=ann_p1) + pairs("p2", "c2a2", "c2b2", "a2b2", comments=bob_p2)
    )
    assert store.export_rows("demo", "pairwise", "all") == (
        pairs("p1", "a1b1", "a1c1", "b1c1", who="ann", comments=ann_p1) + pairs("p1", "a1c1", "b1c1", who="bob")
        + pairs("p2", "c2a2", "c2b2", "a2b2", who="ann")
    )
    assert store.export_rows("demo", "pairwise", "all", drop_flagged=False)[-6:] == (
        pairs("p3", "a3b3", "a3c3", "b3c3", who="ann", unsafe=True) + pairs("p3", "b3a3", "b3c3", "a3c3", who="bob")
    )
    # The record itself: every ranking and skip with its flag and comment, flagged prompts kept.
    notes = store.export_rows("demo", "annotations")
    assert [(r["prompt"], r["annotator"], r["ranks"], r["skip"], r["unsafe"], r["comment"]) for r in notes] == [
        ("p1", "ann", [0, 1, 2], False, False, "close call"), ("p1", "bob", [0, 0, 1], False, False, None),
        ("p2", "ann", [1, 2, 0], False, False, None), ("p2", "bob", None, True, False, "off topic"),
        ("p3", "ann", [0, 1, 2], False, True, None), ("p3", "bob", [1, 0, 2], False, False, None),
        ("p4", "bob", None, True, False, None),
    ]
    assert notes[0]["completions"] == ["a1", "b1", "c1"] and notes[0]["round"] == 1
    with pytest.raises(FeedbackError, match="format must be one of ranked, pairwise, annotations"):
        store.export_rows("demo", "csv")
    with pytest.raises(FeedbackError, match="merge must be one of majority, all"):
        store.export_rows("demo", "ranked", "mean")


# ----- opening databases ----------------------------------------------------------------------
def test_unreachable_and_invalid_databases_fail_fast_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught:
        FeedbackStore.open(f"postgresql://ann:secret@127.0.0.1:{port}/labels")
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert f"cannot open database postgresql+psycopg://ann:***@127.0.0.1:{port}/labels" in message
    assert "secret" not in message and "\n" not in message

    garbage = tmp_path / "notes.db"
    garbage.write_text("these are not the tables you are looking for" * 100)
    cases = [
        ("mysql://u@host/db", "'mysql' is not supported"),
        ("sqlite://", "in-memory"),
        ("", "empty"),
        (str(tmp_path / "no" / "such" / "dir" / "f.db"), "does not exist; create it first"),
        (str(garbage), "file is not a database"),
    ]
    for url, reason in cases:
        with pytest.raises(FeedbackError, match=reason) as caught:
            FeedbackStore.open(url)
        assert "\n" not in str(caught.value)


# ----- rounds, members ------------------------------------------------------------------------
def test_rounds_hold_the_same_prompt_again_and_export_apart(store: FeedbackStore) -> None:
    seed(store, "demo", 2, {"p": ["x", "y"], "q": ["v", "w"]})
    [p2] = store.add_prompts("demo", ["p"], [["x2", "y2"]], model="trained", round=2)
    store.add_annotator("ada", "demo")
    while (view := store.next_prompt("demo", "ada")) is not None:  # p, q of round 1, then p of round 2
        store.submit_ranking("ada", view.id, order=[c.id for c in reversed(view.completions)], annotators_per_prompt=1)
    assert store.rounds("demo") == [1, 2]
    assert store.round_prompts("demo", 2) == {"p": (p2, 2)}
    assert store.find_prompts("demo", ["p"], round=2) == {"p": p2}
    rows = store.export_rows("demo", "pairwise", rounds=[2])
    assert [(r["prompt"], r["chosen"], r["rejected"], r["round"]) for r in rows] == [("p", "y2", "x2", 2)]
    assert [r["round"] for r in store.export_rows("demo", "pairwise")] == [1, 1, 2]
    assert [(r.round, r.prompts, r.rankings) for r in store.progress("demo").rounds] == [(1, 2, 2), (2, 1, 1)]
    assert store.add_prompts("demo", ["r"]) and store.round_prompts("demo", 2).keys() == {"p", "r"}  # the latest
    with pytest.raises(FeedbackError, match="project 'demo' has no round 3 \\(its rounds: 1, 2\\)"):
        store.export_rows("demo", rounds=[3])
    with pytest.raises(FeedbackError, match="round must be an integer >= 1"):
        store.add_prompts("demo", ["s"], round=0)


def test_members_roles_and_tokens(store: FeedbackStore) -> None:
    store.create_project("a", 2)
    store.create_project("b", 2)
    token = store.add_annotator("ada", "a")
    assert store.annotator_for_token(token, "b").role is None  # known, but no member of b
    assert store.add_member("b", "ada", "admin") is False and store.add_member("b", "ada") is True  # role changed
    assert [(m.annotator, m.role, m.revoked) for m in store.members("b")] == [("ada", "annotator", False)]
    with pytest.raises(FeedbackError, match="role must be one of annotator, admin"):
        store.add_member("a", "ada", "owner")
    store.revoke_token("ada")
    assert store.annotator_for_token(token, "a") is None and store.members("a")[0].revoked
    new = store.rotate_token("ada")
    assert store.annotator_for_token(token) is None and store.annotator_for_token(new, "a").role == "annotator"
    store.remove_member("a", "ada")
    assert store.members("a") == [] and store.annotator_for_token(new, "a").role is None
    with pytest.raises(NotFound, match="annotator 'bob' not found \\(known annotators: ada\\)"):
        store.rotate_token("bob")
