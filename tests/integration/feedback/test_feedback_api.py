"""The JSON API of the ranking app, in process (starlette's TestClient), on SQLite and PostgreSQL
(the property test on SQLite only): authentication, per-project roles, revoke and rotate, the
queue enforced on the server, the admin views."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.feedback.app import MAX_BODY_BYTES, create_app
from rlhfkit.feedback.store import FeedbackError, FeedbackStore, NotFound


def seed(store: FeedbackStore) -> dict[str, str]:
    """demo (K=3): p1, p2; other (K=2): elsewhere. ada annotates demo; root is admin of demo and
    annotator of other; eve works on other only."""
    store.create_project("demo", 3)
    store.add_prompts("demo", ["p1", "p2"], [["a", "b", "c"], ["d", "e", "f"]])
    store.create_project("other", 2)
    store.add_prompts("other", ["elsewhere"], [["x", "y"]])
    tokens = {"ada": store.add_annotator("ada", "demo"), "root": store.add_annotator("root", "demo", "admin"),
              "eve": store.add_annotator("eve", "other")}
    store.add_member("other", "root")
    return tokens


@pytest.fixture
def setup(store: FeedbackStore) -> Iterator[tuple[TestClient, FeedbackStore, dict[str, str]]]:
    tokens = seed(store)
    with TestClient(create_app(store, "demo", annotators_per_prompt=1)) as client:
        yield client, store, tokens


@pytest.fixture
def sqlite_setup(sqlite_store: FeedbackStore) -> Iterator[tuple[TestClient, FeedbackStore, dict[str, str]]]:
    tokens = seed(sqlite_store)
    with TestClient(create_app(sqlite_store, "demo", annotators_per_prompt=1)) as client:
        yield client, sqlite_store, tokens


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def first_prompt(client: TestClient, token: str) -> dict[str, Any]:
    response = client.get("/api/next", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


def test_missing_malformed_and_unknown_tokens_get_401(setup) -> None:
    client, _, _ = setup
    cases = [
        ({}, "missing token"),
        ({"Authorization": "Basic abc"}, "must be 'Bearer <token>'"),
        ({"Authorization": "Bearer "}, "must be 'Bearer <token>'"),
        (auth("not-a-token"), "unknown or revoked token"),
    ]
    for headers, reason in cases:
        for method, path in (("GET", "/api/me"), ("GET", "/api/next"), ("POST", "/api/rankings")):
            response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert reason in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"


def test_a_ranking_round_trip_through_the_api(setup) -> None:
    client, store, tokens = setup
    me = client.get("/api/me", headers=auth(tokens["ada"])).json()
    assert me == {"name": "ada", "admin": False, "role": "annotator", "project": "demo", "k": 3,
                  "annotators_per_prompt": 1, "guidelines": None,
                  "criteria": [{"name": "overall", "description": ""}]}
    prompt = first_prompt(client, tokens["ada"])
    assert prompt["text"] == "p1" and prompt["ranking"] is None
    assert sorted(c["text"] for c in prompt["completions"]) == ["a", "b", "c"]
    ids = [c["id"] for c in prompt["completions"]]
    body = {"prompt_id": prompt["id"], "ranks": {str(ids[0]): 1, str(ids[1]): 0, str(ids[2]): 1},
            "comment": "b wins", "submission_id": "api-round-trip"}
    response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
    assert response.status_code == 201, response.text
    assert client.get("/api/next", headers=auth(tokens["ada"])).json()["progress"] == {"done": 1, "left": 1}
    assert store.get_ranking("ada", prompt["id"]).ranks == {ids[0]: 1, ids[1]: 0, ids[2]: 1}
    again = client.get(f"/api/prompts/{prompt['id']}", headers=auth(tokens["ada"])).json()["prompt"]
    assert again["ranking"]["ranks"] == {str(ids[0]): 1, str(ids[1]): 0, str(ids[2]): 1}
    assert [c["id"] for c in again["completions"]] == ids  # the same shuffled order on every visit
    back = client.get(f"/api/previous?before={first_prompt(client, tokens['ada'])['id']}", headers=auth(tokens["ada"]))
    assert back.json()["prompt"]["id"] == prompt["id"]


def test_a_ranking_that_is_not_a_permutation_of_the_shown_completions_gets_422(setup) -> None:
    client, store, tokens = setup
    prompt = first_prompt(client, tokens["ada"])
    a, b, c = (x["id"] for x in prompt["completions"])
    other = store.next_prompt("other", "eve")
    cases = [
        ([a, b], f"completion {c} is missing"),
        ([a, b, b], f"completion {b} appears more than once"),
        ([a, b, c, other.completions[0].id], f"completion {other.completions[0].id} is not one of this prompt's"),
    ]
    for i, (order, reason) in enumerate(cases):
        body = {"prompt_id": prompt["id"], "order": order, "submission_id": f"bad-order-{i}"}
        response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
        assert response.status_code == 422, response.text
        assert reason in response.json()["error"]
    assert store.rankings("demo") == []


def test_malformed_bodies_get_422_naming_the_field(setup) -> None:
    client, _, tokens = setup
    prompt = first_prompt(client, tokens["ada"])
    base = {"prompt_id": prompt["id"], "order": [c["id"] for c in prompt["completions"]], "submission_id": "abcdefgh"}
    cases = [
        (base | {"order": "1,2,3"}, "order"),
        (base | {"order": [1.5, 2, 3]}, "order.0"),
        (base | {"submission_id": "short"}, "submission_id"),
        (base | {"submission_id": "has spaces in it"}, "submission_id"),
        (base | {"comment": "x" * 2001}, "comment"),
        (base | {"skip": "yes"}, "skip"),
        (base | {"colour": "blue"}, "colour"),
        ({k: v for k, v in base.items() if k != "prompt_id"}, "prompt_id"),
    ]
    for body, field in cases:
        response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"].startswith(field), response.json()
    response = client.post("/api/rankings", headers=auth(tokens["ada"]) | {"Content-Type": "application/json"},
                           content=b"{not json")
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]
    response = client.post("/api/rankings", headers=auth(tokens["ada"]), content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413 and "over the limit" in response.json()["error"]


def test_unknown_prompts_get_404(setup) -> None:
    client, store, tokens = setup
    elsewhere = store.next_prompt("other", "eve")
    for pid in (424242, 2**31, 10**30, elsewhere.id):  # unknown, beyond any id, in another project
        response = client.get(f"/api/prompts/{pid}", headers=auth(tokens["ada"]))
        assert response.status_code == 404 and f"prompt {pid} not found" in response.json()["error"]
        body = {"prompt_id": pid, "order": [1, 2, 3], "submission_id": f"unknown-{pid}"}
        response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
        assert response.status_code == 404 and f"prompt {pid} not found" in response.json()["error"]
    assert client.get("/api/nothing-here", headers=auth(tokens["ada"])).status_code == 404
    assert client.get("/api/previous?before=99999999999999999999", headers=auth(tokens["ada"])).status_code == 200


def test_a_retried_submit_does_not_duplicate(setup) -> None:
    client, store, tokens = setup
    prompt = first_prompt(client, tokens["ada"])
    body = {"prompt_id": prompt["id"], "order": [c["id"] for c in prompt["completions"]],
            "submission_id": "retried-0001"}
    first = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
    retry = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert (first.json()["duplicate"], retry.json()["duplicate"]) == (False, True)
    assert len(store.rankings("demo")) == 1
    assert client.get("/api/next", headers=auth(tokens["ada"])).json()["progress"] == {"done": 1, "left": 1}
    stolen = client.post("/api/rankings", headers=auth(tokens["root"]), json=body)  # same id, other annotator
    assert stolen.status_code == 409 and "already used" in stolen.json()["error"]


def test_admin_page_data_needs_an_admin_token(setup) -> None:
    client, _, tokens = setup
    for path in ("/api/admin", "/api/admin/prompts", "/api/admin/prompts/1"):
        response = client.get(path, headers=auth(tokens["ada"]))
        assert response.status_code == 403 and "needs an admin of project 'demo'" in response.json()["error"]
    data = client.get("/api/admin", headers=auth(tokens["root"])).json()
    assert data["progress"]["prompts"] == 2
    # Only the project's members: eve works on "other" and is not listed.
    assert [(a["annotator"], a["role"]) for a in data["progress"]["annotators"]] == [
        ("ada", "annotator"), ("root", "admin")]
    assert data["agreement"] == {"pairs": [], "agreement": None, "kendall_tau": None}


def test_the_page_is_served_with_a_strict_content_security_policy(setup) -> None:
    client, _, _ = setup
    for path in ("/", "/admin"):
        response = client.get(path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", csp).group(1)
        assert "unsafe-inline" not in csp and "default-src 'none'" in csp
        scripts = re.findall(r"<script([^>]*)>", response.text)
        assert scripts == [f' nonce="{nonce}"']
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in response.text  # data only ever enters the page as text
        assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/").headers["content-security-policy"] != client.get("/").headers["content-security-policy"]
    assert client.get("/api/me").headers["content-security-policy"].startswith("default-src 'none'")


def test_create_app_checks_its_arguments(sqlite_store: FeedbackStore) -> None:
    with pytest.raises(NotFound, match="project 'nope' not found"):
        create_app(sqlite_store, "nope")
    sqlite_store.create_project("demo", 2)
    with pytest.raises(FeedbackError, match="annotators_per_prompt"):
        create_app(sqlite_store, "demo", 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "prompt_id": json_values | st.integers(0, 5) | st.sampled_from([2**31, 2**63, 10**30]),
        "order": json_values | st.lists(st.integers(0, 8), max_size=5),
        "ranks": json_values | st.dictionaries(st.integers(0, 8).map(str), st.integers(-1, 3), max_size=5),
        "skip": json_values,
        "unsafe": json_values,
        "comment": json_values,
        "submission_id": json_values | st.text("abcdef0123456789", min_size=8, max_size=12),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies | json_values)
def test_no_body_gets_a_server_error(sqlite_setup, body: Any) -> None:
    client, _, tokens = sqlite_setup
    response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
    assert response.status_code in (200, 201, 403, 404, 409, 422), (body, response.status_code, response.text)
    assert isinstance(response.json()["error"] if response.status_code >= 400 else response.json()["ranking"],
                      (str, dict))


# ----- the queue, enforced by the server ------------------------------------------------------
def ids_best_first(prompt: dict[str, Any]) -> list[int]:
    return [c["id"] for c in prompt["completions"]]


def test_a_prompt_not_given_to_the_annotator_can_be_neither_read_nor_ranked(setup) -> None:
    client, store, tokens = setup
    given = first_prompt(client, tokens["ada"])  # p1 is handed to ada
    other = store.find_prompts("demo", ["p2"])["p2"]
    response = client.get(f"/api/prompts/{other}", headers=auth(tokens["ada"]))
    assert response.status_code == 403 and f"prompt {other} was not given to you" in response.json()["error"]
    completions = [c.id for c in store.prompt(other).completions]
    body = {"prompt_id": other, "order": completions, "submission_id": "not-given-1"}
    response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
    assert response.status_code == 403 and "was not given to you" in response.json()["error"]
    assert store.rankings("demo") == []
    # The prompt handed out can be read and ranked, and after that read and changed again.
    assert client.get(f"/api/prompts/{given['id']}", headers=auth(tokens["ada"])).status_code == 200
    body = {"prompt_id": given["id"], "order": ids_best_first(given), "submission_id": "given-0001"}
    assert client.post("/api/rankings", headers=auth(tokens["ada"]), json=body).status_code == 201
    assert client.get(f"/api/prompts/{given['id']}", headers=auth(tokens["ada"])).status_code == 200
    body = {"prompt_id": given["id"], "order": ids_best_first(given)[::-1], "submission_id": "given-0002"}
    assert client.post("/api/rankings", headers=auth(tokens["ada"]), json=body).status_code == 200


def test_a_prompt_never_collects_more_than_n_rankings(setup) -> None:
    """N = 1. root is handed p1 with a lease that has already expired, so p1 goes to ada, who
    ranks it. root's late ranking of p1 is refused (409): p1 keeps exactly one ranking."""
    client, store, tokens = setup
    late = store.next_prompt("demo", "root", 1, lease_seconds=-1)
    assert late.text == "p1"
    mine = first_prompt(client, tokens["ada"])
    assert mine["id"] == late.id
    body = {"prompt_id": mine["id"], "order": ids_best_first(mine), "submission_id": "ada-p1-0001"}
    assert client.post("/api/rankings", headers=auth(tokens["ada"]), json=body).status_code == 201
    body = {"prompt_id": late.id, "order": [c.id for c in late.completions], "submission_id": "root-p1-0001"}
    response = client.post("/api/rankings", headers=auth(tokens["root"]), json=body)
    assert response.status_code == 409 and "already has its 1 ranking(s)" in response.json()["error"]
    assert [r.annotator for r in store.rankings("demo")] == ["ada"]
    # Skipping it is still allowed (skips do not count towards N).
    body = {"prompt_id": late.id, "skip": True, "submission_id": "root-p1-skip"}
    assert client.post("/api/rankings", headers=auth(tokens["root"]), json=body).status_code == 201


def test_a_submission_id_sent_again_with_a_changed_ranking_is_refused(setup) -> None:
    client, store, tokens = setup
    prompt = first_prompt(client, tokens["ada"])
    order = ids_best_first(prompt)
    body = {"prompt_id": prompt["id"], "order": order, "submission_id": "content-0001"}
    assert client.post("/api/rankings", headers=auth(tokens["ada"]), json=body).status_code == 201
    for change in ({"order": order[::-1]}, {"unsafe": True}, {"comment": "changed my mind"}):
        response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body | change)
        assert response.status_code == 409 and "a changed ranking is a new submission" in response.json()["error"]
    assert store.get_ranking("ada", prompt["id"]).order == order


# ----- members, roles, revoke and rotate ------------------------------------------------------
def test_roles_are_per_project(store: FeedbackStore) -> None:
    tokens = seed(store)
    with TestClient(create_app(store, "other")) as other:
        # root is admin of demo, annotator of other; eve works on other; ada on demo only.
        response = other.get("/api/admin", headers=auth(tokens["root"]))
        assert response.status_code == 403 and "needs an admin of project 'other'" in response.json()["error"]
        assert other.get("/api/me", headers=auth(tokens["root"])).json()["role"] == "annotator"
        response = other.get("/api/next", headers=auth(tokens["ada"]))
        assert response.status_code == 403
        assert "'ada' is not a member of project 'other'" in response.json()["error"]
        store.add_member("other", "root", "admin")  # takes effect on the next request
        data = other.get("/api/admin", headers=auth(tokens["root"])).json()
        assert [a["annotator"] for a in data["progress"]["annotators"]] == ["eve", "root"]
    with TestClient(create_app(store, "demo")) as demo:
        assert demo.get("/api/next", headers=auth(tokens["eve"])).status_code == 403
        assert demo.get("/api/admin", headers=auth(tokens["root"])).status_code == 200


def test_revoke_rotate_and_remove_take_effect_at_the_next_request(setup) -> None:
    client, store, tokens = setup
    prompt = first_prompt(client, tokens["ada"])
    body = {"prompt_id": prompt["id"], "order": ids_best_first(prompt), "submission_id": "before-revoke"}
    assert client.post("/api/rankings", headers=auth(tokens["ada"]), json=body).status_code == 201

    store.revoke_token("ada")
    response = client.get("/api/me", headers=auth(tokens["ada"]))
    assert response.status_code == 401 and "unknown or revoked token" in response.json()["error"]
    new = store.rotate_token("ada")
    assert new != tokens["ada"]
    assert client.get("/api/me", headers=auth(tokens["ada"])).status_code == 401  # the old token stays dead
    assert client.get("/api/me", headers=auth(new)).json()["name"] == "ada"
    assert store.get_ranking("ada", prompt["id"]).order == ids_best_first(prompt)  # rankings kept

    token = store.rotate_token("root")  # rotating a working token retires the old one at once
    assert client.get("/api/me", headers=auth(tokens["root"])).status_code == 401
    assert client.get("/api/me", headers=auth(token)).status_code == 200

    store.remove_member("demo", "ada")
    response = client.get("/api/next", headers=auth(new))
    assert response.status_code == 403 and "not a member of project 'demo'" in response.json()["error"]
    assert [(a.annotator, a.role, a.ranked) for a in store.progress("demo").annotators] == [
        ("ada", "removed", 1), ("root", "admin", 0)]


# ----- the admin views ------------------------------------------------------------------------
def test_admin_prompt_views_show_rankings_flags_comments_and_disagreement(store: FeedbackStore) -> None:
    """N = 2 on p1 (a, b, c): ada a>b>c, root a>c>b with a comment and the unsafe flag. Pairs
    (a,b) and (a,c) agree, (b,c) does not: disagreement 1/3."""
    tokens = seed(store)
    with TestClient(create_app(store, "demo", annotators_per_prompt=2, shuffle=False)) as client:
        p1 = first_prompt(client, tokens["ada"])
        assert first_prompt(client, tokens["root"])["id"] == p1["id"]
        a, b, c = ids_best_first(p1)
        client.post("/api/rankings", headers=auth(tokens["ada"]),
                    json={"prompt_id": p1["id"], "order": [a, b, c], "submission_id": "ada-p1-0001"})
        client.post("/api/rankings", headers=auth(tokens["root"]),
                    json={"prompt_id": p1["id"], "order": [a, c, b], "unsafe": True, "comment": "<b>c</b> is rude",
                          "submission_id": "root-p1-0001"})
        rows = client.get("/api/admin/prompts", headers=auth(tokens["root"])).json()["prompts"]
        assert [(r["id"], r["round"], r["text"], r["rankings"], r["skips"], r["unsafe"], r["comments"]) for r in rows] \
            == [(p1["id"], 1, "p1", 2, 0, 1, 1)]
        assert rows[0]["disagreement"] == pytest.approx(1 / 3, abs=1e-12)
        detail = client.get(f"/api/admin/prompts/{p1['id']}", headers=auth(tokens["root"])).json()["prompt"]
        assert [x["text"] for x in detail["completions"]] == ["a", "b", "c"]
        assert [(r["annotator"], r["ranks"], r["unsafe"], r["comment"]) for r in detail["rankings"]] == [
            ("ada", [0, 1, 2], False, None), ("root", [0, 2, 1], True, "<b>c</b> is rude")]
        assert detail["disagreement"] == pytest.approx(1 / 3, abs=1e-12)
        elsewhere = store.find_prompts("other", ["elsewhere"])["elsewhere"]
        assert client.get(f"/api/admin/prompts/{elsewhere}", headers=auth(tokens["root"])).status_code == 404


def test_guidelines_come_with_me(setup) -> None:
    client, store, tokens = setup
    store.set_guidelines("demo", "  Better = <i>shorter</i> and polite.\n")
    me = client.get("/api/me", headers=auth(tokens["ada"])).json()
    assert me["guidelines"] == "Better = <i>shorter</i> and polite."
    store.set_guidelines("demo", "   ")
    assert client.get("/api/me", headers=auth(tokens["ada"])).json()["guidelines"] is None
