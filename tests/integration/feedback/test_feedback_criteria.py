"""Several ranking criteria: declaring them, one ranking per criterion through the store and the
API (missing and unknown criteria refused, the exactly-once rules over all criteria, going back),
progress, agreement and export per criterion computed by hand, criteria added after rankings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.store import Conflict, FeedbackError, FeedbackStore, InvalidRanking

CRITERIA = {"helpful": "Answers what was asked", "harmless": "Says nothing unsafe"}


def seed(store: FeedbackStore) -> dict[str, int]:
    """Project hh (K=3, helpful and harmless): p1 with a, b, c; p2 with d, e, f."""
    store.create_project("hh", 3, criteria=CRITERIA)
    store.add_prompts("hh", ["p1", "p2"], [["a", "b", "c"], ["d", "e", "f"]])
    ids = {c.text: c.id for pid in (1, 2) for c in store.prompt(pid).completions}
    return ids | {"p1": 1, "p2": 2}


def by(ids: dict[str, int], **ranks: int) -> dict[int, int]:
    return {ids[name]: rank for name, rank in ranks.items()}


def test_projects_declare_criteria_and_get_overall_by_default(store: FeedbackStore) -> None:
    store.create_project("plain", 2)
    assert [(c.name, c.description, c.position) for c in store.criteria("plain")] == [("overall", "", 0)]
    seed(store)
    assert [(c.name, c.description) for c in store.criteria("hh")] == list(CRITERIA.items())
    for bad, fragment in (({"Helpful": ""}, "lowercase letters"), ({"a b": ""}, "lowercase letters"),
                          ({"x" * 41: ""}, "1-40"), ({"ok": "two\nlines"}, "one line")):
        with pytest.raises(FeedbackError, match=fragment):
            store.create_project("bad", 2, criteria=bad)
    with pytest.raises(FeedbackError, match="given twice"):
        store.create_project("bad", 2, criteria=[("a", ""), ("a", "again")])
    with pytest.raises(Conflict, match="exists with criteria helpful, harmless"):
        store.create_project("hh", 3, exist_ok=True, criteria={"overall": ""})
    assert store.create_project("hh", 3, exist_ok=True).k == 3


def test_a_ranking_needs_every_criterion(store: FeedbackStore) -> None:
    ids = seed(store)
    store.add_annotator("ann")
    with pytest.raises(InvalidRanking, match="criterion 'harmless' is missing"):
        store.submit_ranking("ann", 1, rankings={"helpful": by(ids, a=0, b=1, c=2)})
    with pytest.raises(InvalidRanking, match="unknown criterion 'honest'"):
        store.submit_ranking("ann", 1, rankings={"helpful": by(ids, a=0, b=1, c=2), "honest": by(ids, a=0, b=1, c=2)})
    with pytest.raises(InvalidRanking, match="ranks by 2 criteria .* criterion 'harmless' is missing"):
        store.submit_ranking("ann", 1, by(ids, a=0, b=1, c=2))  # the one-criterion form
    with pytest.raises(InvalidRanking, match="by criterion 'harmless': completion .* is missing"):
        store.submit_ranking("ann", 1, rankings={"helpful": by(ids, a=0, b=1, c=2), "harmless": by(ids, a=0)})
    # A list is an order (best first), a mapping ranks; both per criterion.
    result = store.submit_ranking("ann", 1, rankings={"helpful": [ids["c"], ids["a"], ids["b"]],
                                                      "harmless": by(ids, a=0, b=0, c=1)})
    assert result.ranking.by_criterion == {"helpful": by(ids, c=0, a=1, b=2), "harmless": by(ids, a=0, b=0, c=1)}
    assert result.ranking.ranks == by(ids, c=0, a=1, b=2)  # `ranks`: the first criterion's
    assert store.get_ranking("ann", 1).by_criterion == result.ranking.by_criterion
    skip = store.submit_ranking("ann", 2, skip=True)  # a skip needs no criterion
    assert skip.ranking.skip and skip.ranking.by_criterion == {}


@pytest.fixture
def client(store: FeedbackStore) -> Iterator[tuple[TestClient, FeedbackStore, dict[str, int], dict[str, str]]]:
    ids = seed(store)
    headers = {"Authorization": f"Bearer {store.add_annotator('ann', 'hh')}"}
    with TestClient(create_app(store, "hh", annotators_per_prompt=1, shuffle=False)) as c:
        yield c, store, ids, headers


def test_the_api_takes_one_ranking_per_criterion(client: Any) -> None:
    c, store, ids, headers = client
    prompt = c.get("/api/next", headers=headers).json()["prompt"]
    assert prompt["criteria"] == [{"name": n, "description": d} for n, d in CRITERIA.items()]
    assert c.get("/api/me", headers=headers).json()["criteria"] == prompt["criteria"]

    def body(sid: str, **rankings: dict[int, int]) -> dict[str, Any]:
        return {"prompt_id": 1, "submission_id": sid,
                "rankings": {name: {str(k): v for k, v in r.items()} for name, r in rankings.items()}}

    helpful, harmless = by(ids, a=0, b=1, c=2), by(ids, a=2, b=1, c=0)
    missing = c.post("/api/rankings", headers=headers, json=body("sub-00001", helpful=helpful))
    assert missing.status_code == 422 and "criterion 'harmless' is missing" in missing.json()["error"]
    unknown = c.post("/api/rankings", headers=headers, json=body("sub-00001", helpful=helpful, harmless=harmless,
                                                                 honest=helpful))
    assert unknown.status_code == 422 and "unknown criterion 'honest'" in unknown.json()["error"]
    old = {"prompt_id": 1, "submission_id": "sub-00001", "ranks": {str(k): v for k, v in helpful.items()}}
    old_form = c.post("/api/rankings", headers=headers, json=old)
    assert old_form.status_code == 422 and "'harmless' is missing" in old_form.json()["error"]

    first = c.post("/api/rankings", headers=headers, json=body("sub-00001", helpful=helpful, harmless=harmless))
    assert first.status_code == 201, first.text
    assert first.json()["ranking"]["rankings"] == {"helpful": {str(k): v for k, v in helpful.items()},
                                                   "harmless": {str(k): v for k, v in harmless.items()}}
    again = c.post("/api/rankings", headers=headers, json=body("sub-00001", helpful=helpful, harmless=harmless))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    changed = c.post("/api/rankings", headers=headers, json=body("sub-00001", helpful=helpful, harmless=helpful))
    assert changed.status_code == 409 and "already used for a different ranking" in changed.json()["error"]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM submissions")).scalar_one() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM ranking_entries")).scalar_one() == 6
    assert store.get_ranking("ann", 1).by_criterion == {"helpful": helpful, "harmless": harmless}

    # Going back shows both criteria's ranks.
    c.get("/api/next", headers=headers)
    back = c.get("/api/previous", headers=headers).json()["prompt"]
    assert back["id"] == 1
    assert back["ranking"]["rankings"] == first.json()["ranking"]["rankings"]


def test_a_one_criterion_project_still_takes_ranks(store: FeedbackStore) -> None:
    store.create_project("plain", 2)
    store.add_prompts("plain", ["p"], [["x", "y"]])
    headers = {"Authorization": f"Bearer {store.add_annotator('ann', 'plain')}"}
    with TestClient(create_app(store, "plain", shuffle=False)) as c:
        prompt = c.get("/api/next", headers=headers).json()["prompt"]
        x, y = (x["id"] for x in prompt["completions"])
        old = c.post("/api/rankings", headers=headers,
                     json={"prompt_id": prompt["id"], "submission_id": "sub-00001", "ranks": {str(x): 1, str(y): 0}})
        assert old.status_code == 201, old.text
        # The same ranking as `rankings` hashes alike: a retry in either form is the same submission.
        new = c.post("/api/rankings", headers=headers,
                     json={"prompt_id": prompt["id"], "submission_id": "sub-00001",
                           "rankings": {"overall": {str(x): 1, str(y): 0}}})
        assert new.status_code == 200 and new.json()["duplicate"] is True


def rank_two_annotators(store: FeedbackStore, ids: dict[str, int]) -> None:
    """p1: helpful ann (a,b,c) bob (a,c,b); harmless ann (a,b,c) bob (c,b,a). p2: ann only."""
    for name in ("ann", "bob"):
        store.add_annotator(name)
    store.submit_ranking("ann", 1, rankings={"helpful": by(ids, a=0, b=1, c=2), "harmless": by(ids, a=0, b=1, c=2)})
    store.submit_ranking("bob", 1, rankings={"helpful": by(ids, a=0, b=2, c=1), "harmless": by(ids, a=2, b=1, c=0)})
    store.submit_ranking("ann", 2, rankings={"helpful": by(ids, d=0, e=1, f=2), "harmless": by(ids, d=2, e=0, f=1)})


def test_agreement_and_progress_per_criterion_match_hand_computed_values(store: FeedbackStore) -> None:
    """p1, ann vs bob. helpful: (a,b) both a first, (a,c) both a first, (b,c) opposite -> agree
    2/3, tau (2-1)/3 = 1/3. harmless: bob reverses ann -> agree 0, tau -1. p2 has one annotator."""
    ids = seed(store)
    rank_two_annotators(store, ids)
    helpful, harmless = store.agreement("hh", "helpful"), store.agreement("hh", "harmless")
    assert (helpful.pairs[0].prompts, helpful.pairs[0].pairs) == (1, 3)
    assert helpful.agreement == pytest.approx(2 / 3, abs=1e-12)
    assert helpful.kendall_tau == pytest.approx(1 / 3, abs=1e-12)
    assert harmless.agreement == 0.0 and harmless.kendall_tau == pytest.approx(-1.0, abs=1e-12)
    assert store.agreement("hh") == helpful  # the first criterion by default
    assert store.agreements("hh") == {"helpful": helpful, "harmless": harmless}
    with pytest.raises(FeedbackError, match="no such criterion"):
        store.agreement("hh", "honest")
    progress = store.progress("hh", annotators_per_prompt=2)
    got = [(c.criterion, c.rankings, c.complete) for c in progress.criteria]
    assert got == [("helpful", 3, 1), ("harmless", 3, 1)]
    assert progress.criteria[1].agreement == 0.0
    [p1, p2] = store.prompt_summaries("hh")
    assert p1.disagreement_by_criterion == {"helpful": pytest.approx(1 / 3, abs=1e-12), "harmless": 1.0}
    assert p2.disagreement_by_criterion == {"helpful": None, "harmless": None}
    detail = store.prompt_detail("hh", 1)
    assert detail.disagreement_by_criterion == p1.disagreement_by_criterion
    assert [r.by_criterion["harmless"] for r in detail.rankings] == [by(ids, a=0, b=1, c=2), by(ids, a=2, b=1, c=0)]


def test_export_per_criterion_and_all(store: FeedbackStore) -> None:
    """Majority per criterion on p1. helpful: places ann (0,1,2), bob (0,2,1) -> means a 0,
    b 1.5, c 1.5 -> a > b = c. harmless: ann (0,1,2), bob (2,1,0) -> all 1: all tied, no row.
    p2 (ann alone): helpful d > e > f, harmless e > f > d."""
    ids = seed(store)
    rank_two_annotators(store, ids)
    notes = {"round": 1, "unsafe": False, "comments": []}
    helpful = [
        {"prompt": "p1", "completions": ["a", "b", "c"], "ranks": [0, 1, 1], "criterion": "helpful", **notes},
        {"prompt": "p2", "completions": ["d", "e", "f"], "criterion": "helpful", **notes},
    ]
    harmless = [{"prompt": "p2", "completions": ["e", "f", "d"], "criterion": "harmless", **notes}]
    assert store.export_rows("hh", "ranked", criteria=["helpful"]) == helpful
    assert store.export_rows("hh", "ranked", criteria=["harmless"]) == harmless
    assert store.export_rows("hh", "ranked") == [helpful[0], helpful[1], harmless[0]]  # prompt, then criterion order
    pairs = store.export_rows("hh", "pairwise", "all", criteria=["harmless"])
    assert [(r["annotator"], r["chosen"], r["rejected"]) for r in pairs if r["prompt"] == "p1"] == [
        ("ann", "a", "b"), ("ann", "a", "c"), ("ann", "b", "c"), ("bob", "c", "b"), ("bob", "c", "a"),
        ("bob", "b", "a")]
    assert {r["criterion"] for r in pairs} == {"harmless"}
    rows = store.export_rows("hh", "annotations")
    assert [(r["prompt"], r["annotator"], r["criterion"], r["ranks"], r["rankings"]) for r in rows] == [
        ("p1", "ann", "helpful", [0, 1, 2], {"helpful": [0, 1, 2], "harmless": [0, 1, 2]}),
        ("p1", "bob", "helpful", [0, 2, 1], {"helpful": [0, 2, 1], "harmless": [2, 1, 0]}),
        ("p2", "ann", "helpful", [0, 1, 2], {"helpful": [0, 1, 2], "harmless": [2, 0, 1]}),
    ]
    only = store.export_rows("hh", "annotations", criteria=["harmless"])
    assert [(r["criterion"], r["ranks"], r["rankings"]) for r in only][0] == (
        "harmless", [0, 1, 2], {"harmless": [0, 1, 2]})
    with pytest.raises(FeedbackError, match="criterion 'honest': project 'hh' has no such criterion"):
        store.export_rows("hh", criteria=["honest"])


def test_criteria_added_after_rankings_keep_them_and_removal_never_loses_ranks(store: FeedbackStore) -> None:
    ids = seed(store)
    rank_two_annotators(store, ids)
    store.add_criteria("hh", [("concise", "Says it briefly")])
    assert [c.name for c in store.criteria("hh")] == ["helpful", "harmless", "concise"]
    progress = store.progress("hh")
    assert [(c.criterion, c.rankings) for c in progress.criteria] == [("helpful", 3), ("harmless", 3), ("concise", 0)]
    assert store.export_rows("hh", "pairwise", criteria=["concise"]) == []
    assert store.get_ranking("ann", 1).by_criterion.keys() == {"helpful", "harmless"}  # old ranks stay
    with pytest.raises(InvalidRanking, match="criterion 'concise' is missing"):  # a change needs every criterion
        store.submit_ranking("ann", 1, rankings={"helpful": by(ids, a=0, b=1, c=2), "harmless": by(ids, a=0, b=1, c=2)})
    store.submit_ranking("ann", 1, rankings={"helpful": by(ids, a=0, b=1, c=2), "harmless": by(ids, a=0, b=1, c=2),
                                             "concise": by(ids, a=1, b=0, c=2)})
    assert store.export_rows("hh", "pairwise", criteria=["concise"]) == [
        {"prompt": "p1", "chosen": c, "rejected": r, "criterion": "concise", "round": 1, "unsafe": False,
         "comments": []} for c, r in (("b", "a"), ("b", "c"), ("a", "c"))]
    with pytest.raises(Conflict, match="criterion 'concise' of project 'hh' is used by 1 ranking"):
        store.remove_criterion("hh", "concise")
    store.add_criteria("hh", {"spare": ""})
    store.remove_criterion("hh", "spare")  # unused: goes
    with pytest.raises(Conflict, match="already has a criterion 'helpful'"):
        store.add_criteria("hh", {"helpful": ""})
    assert store.describe_criterion("hh", "helpful", "Does what was asked").description == "Does what was asked"
    assert len(store.rankings("hh")) == 3
    store.create_project("solo", 2)
    with pytest.raises(Conflict, match="the only one"):
        store.remove_criterion("solo", "overall")


def test_the_cli_declares_lists_adds_and_exports_criteria(tmp_path: Any) -> None:
    import json

    from typer.testing import CliRunner

    from rlhfkit.feedback.cli import feedback_app

    def run(*args: object) -> tuple[int, str, str]:
        result = CliRunner().invoke(feedback_app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    def one_line_error(args: list[object], fragment: str) -> None:
        code, _, err = run(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err

    db = tmp_path / "f.db"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "p1", "completions": ["a", "b"]}) + "\n", encoding="utf-8")
    one_line_error(["import", prompts, "--db", db, "-p", "hh", "--k", "2", "--criterion", "Helpful=x"],
                   "--criterion 'Helpful=x': criterion name 'Helpful'")
    code, out, err = run("import", prompts, "--db", db, "-p", "hh", "--k", "2",
                         "--criterion", "helpful=Answers what was asked", "--criterion", "harmless")
    assert code == 0, err
    code, out, _ = run("criteria", "hh", "--db", db)
    assert (code, out) == (0, "helpful\tAnswers what was asked\nharmless\n")
    spec = tmp_path / "criteria.yaml"
    spec.write_text("harmless: Says nothing unsafe\nconcise: Short\n", encoding="utf-8")
    code, out, err = run("criteria", "hh", "--db", db, "--file", spec, "--add", "honest=Says what it knows")
    assert code == 0, err
    assert out.splitlines() == ["helpful\tAnswers what was asked", "harmless\tSays nothing unsafe",
                                "honest\tSays what it knows", "concise\tShort"]
    one_line_error(["criteria", "hh", "--db", db, "--add", "helpful=again"], "already has a criterion 'helpful'")
    spec.write_text("- name: x\n  colour: red\n", encoding="utf-8")
    one_line_error(["criteria", "hh", "--db", db, "--file", spec], "criteria.yaml, entry 1: expected a name")

    with FeedbackStore.open(db) as store:
        store.add_annotator("ann")
        a, b = (c.id for c in store.prompt(1).completions)
        store.submit_ranking("ann", 1, rankings={"helpful": [a, b], "harmless": [b, a], "honest": [a, b],
                                                 "concise": [b, a]})
    one_line_error(["criteria", "hh", "--db", db, "--remove", "concise"], "is used by 1 ranking")
    one_line_error(["import", prompts, "--db", db, "-p", "hh", "--criterion", "overall"],
                   "exists with criteria helpful, harmless, honest, concise")
    out_file = tmp_path / "harmless.jsonl"
    code, _, err = run("export", "--db", db, "-p", "hh", "--out", out_file, "--criterion", "harmless,honest")
    assert code == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["criterion"], r["chosen"], r["rejected"]) for r in rows] == [
        ("harmless", "b", "a"), ("honest", "a", "b")]
    one_line_error(["export", "--db", db, "-p", "hh", "--out", out_file, "--criterion", "kind"],
                   "criterion 'kind': project 'hh' has no such criterion")
    code, out, err = run("status", "--db", db, "-p", "hh")
    assert code == 0, err
    assert "Criteria" in out and "concise" in out
