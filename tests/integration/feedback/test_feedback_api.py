"""The JSON API of the ranking app, in process (starlette's TestClient), on a SQLite store."""

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


@pytest.fixture
def setup(sqlite_store: FeedbackStore) -> Iterator[tuple[TestClient, FeedbackStore, dict[str, str]]]:
    store = sqlite_store
    store.create_project("demo", 3)
    store.add_prompts("demo", ["p1", "p2"], [["a", "b", "c"], ["d", "e", "f"]])
    store.create_project("other", 2)
    store.add_prompts("other", ["elsewhere"], [["x", "y"]])
    tokens = {"ada": store.add_annotator("ada"), "root": store.add_annotator("root", admin=True)}
    with TestClient(create_app(store, "demo", annotators_per_prompt=1)) as client:
        yield client, store, tokens


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
        (auth("not-a-token"), "unknown token"),
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
    assert me == {"name": "ada", "admin": False, "project": "demo", "k": 3, "annotators_per_prompt": 1}
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
    other = store.next_prompt("other", "ada")
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
    elsewhere = store.next_prompt("other", "ada")
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
    response = client.get("/api/admin", headers=auth(tokens["ada"]))
    assert response.status_code == 403 and "admin token" in response.json()["error"]
    data = client.get("/api/admin", headers=auth(tokens["root"])).json()
    assert data["progress"]["prompts"] == 2
    assert [a["annotator"] for a in data["progress"]["annotators"]] == ["ada", "root"]
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
def test_no_body_gets_a_server_error(setup, body: Any) -> None:
    client, _, tokens = setup
    response = client.post("/api/rankings", headers=auth(tokens["ada"]), json=body)
    assert response.status_code in (200, 201, 404, 409, 422), (body, response.status_code, response.text)
    assert isinstance(response.json()["error"] if response.status_code >= 400 else response.json()["ranking"],
                      (str, dict))
