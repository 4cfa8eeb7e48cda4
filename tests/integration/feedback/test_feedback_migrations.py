"""A database written by revision 0001 (the first release's schema) upgrades to the newest
revision on open, on SQLite and PostgreSQL, with every ranking, comment and token kept and the
old database-wide admin flag turned into per-project admin roles. A database at 0002 with
rankings upgrades to 0003 with every rank kept as a rank by `overall`, and downgrades back
keeping the first criterion's ranks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from rlhfkit.feedback.database import database_url, make_engine
from rlhfkit.feedback.migrations import VERSION_TABLE, alembic_config, head_revision
from rlhfkit.feedback.store import FeedbackStore

ADA_TOKEN, ROOT_TOKEN = "ada-token-from-0001-aaaaaaaaaaaaaaaa", "root-token-from-0001-bbbbbbbbbbbbbbbb"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (a new PostgreSQL database, not the session's)."""
    if request.param == "sqlite":
        yield str(tmp_path / "old.db")
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(request.getfixturevalue("postgres_admin_url"))
    name = f"rlhfkit_upgrade_{os.getpid()}"
    libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_0001_database(url: str) -> None:
    """Tables of revision 0001 filled as that release wrote them: two projects, an annotator and
    an admin (the flag then held for every project), two rankings, a comment, a skip."""
    engine = create_engine(database_url(url))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        now = "2026-11-30 12:00:00"
        conn.execute(text("INSERT INTO projects (id, name, k, created_at) VALUES (1, 'demo', 2, :t), "
                          "(2, 'other', 2, :t)"), {"t": now})
        conn.execute(text("INSERT INTO prompts (id, project_id, position, text, n_completions, n_rankings, created_at)"
                          " VALUES (1, 1, 0, 'p1', 2, 1, :t), (2, 1, 1, 'p2', 2, 0, :t)"), {"t": now})
        conn.execute(text("INSERT INTO completions (id, prompt_id, position, text, model, sampling, created_at) VALUES "
                          "(1, 1, 0, 'x', 'm', '{}', :t), (2, 1, 1, 'y', 'm', '{}', :t), "
                          "(3, 2, 0, 'v', 'm', '{}', :t), (4, 2, 1, 'w', 'm', '{}', :t)"), {"t": now})
        conn.execute(text("INSERT INTO annotators (id, name, token_hash, is_admin, created_at) VALUES "
                          "(1, 'ada', :a, FALSE, :t), (2, 'root', :r, TRUE, :t)"),
                     {"a": hashlib.sha256(ADA_TOKEN.encode()).hexdigest(),
                      "r": hashlib.sha256(ROOT_TOKEN.encode()).hexdigest(), "t": now})
        conn.execute(text("INSERT INTO rankings (id, annotator_id, prompt_id, skip, unsafe, comment, submission_id, "
                          "created_at, updated_at) VALUES (1, 1, 1, FALSE, FALSE, 'y is clearer', 'sub-1', :t, :t), "
                          "(2, 1, 2, TRUE, TRUE, NULL, 'sub-2', :t, :t)"), {"t": now})
        conn.execute(text("INSERT INTO ranking_entries (ranking_id, completion_id, rank) VALUES (1, 1, 1), (1, 2, 0)"))
        conn.execute(text("INSERT INTO submissions (submission_id, ranking_id, received_at) VALUES "
                          "('sub-1', 1, :t), ('sub-2', 2, :t)"), {"t": now})
    engine.dispose()


def test_a_0001_database_upgrades_without_losing_data(empty_url: str) -> None:
    write_0001_database(empty_url)
    with FeedbackStore.open(empty_url) as store:  # runs 0002
        with store.engine.connect() as conn:
            assert conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == head_revision()
        ada = store.annotator_for_token(ADA_TOKEN, "demo")
        root = store.annotator_for_token(ROOT_TOKEN, "other")
        assert (ada.name, ada.role) == ("ada", "annotator")  # the old tokens still sign in
        assert (root.name, root.role) == ("root", "admin")  # the old flag: admin of every project
        assert [(m.annotator, m.role) for m in store.members("demo")] == [("ada", "annotator"), ("root", "admin")]
        ranking = store.get_ranking("ada", 1)
        assert ranking.ranks == {1: 1, 2: 0} and ranking.comment == "y is clearer"
        skip = store.get_ranking("ada", 2)
        assert skip.skip and skip.unsafe
        assert store.rounds("demo") == [1]
        assert store.export_rows("demo", "pairwise") == [
            {"prompt": "p1", "chosen": "y", "rejected": "x", "criterion": "overall", "round": 1, "unsafe": False,
             "comments": [{"annotator": "ada", "comment": "y is clearer"}]},
        ]
        # A retry of a submission stored before content hashes existed is still a duplicate.
        again = store.submit_ranking("ada", 1, order=[2, 1], submission_id="sub-1")
        assert again.duplicate
        progress = store.progress("demo")
        assert (progress.prompts, progress.rankings) == (2, 1)


def test_0002_downgrades_back_to_0001_keeping_rankings_and_admins(empty_url: str) -> None:
    write_0001_database(empty_url)
    FeedbackStore.open(empty_url).close()
    engine = create_engine(database_url(empty_url))
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, is_admin FROM annotators ORDER BY name")).all() == [
            ("ada", False), ("root", True)]
        assert conn.scalar(text("SELECT COUNT(*) FROM rankings")) == 2
        assert conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == "0001"
    engine.dispose()
    with FeedbackStore.open(empty_url) as store:  # and up again
        assert store.annotator_for_token(ROOT_TOKEN, "demo").role == "admin"


def entries(conn: object) -> list[tuple[int, int, int]]:
    return [tuple(r) for r in conn.execute(  # type: ignore[attr-defined]
        text("SELECT ranking_id, completion_id, rank FROM ranking_entries ORDER BY ranking_id, completion_id")).all()]


def test_a_0002_database_upgrades_to_criteria_keeping_every_rank_and_downgrades_back(empty_url: str) -> None:
    write_0001_database(empty_url)
    engine = create_engine(database_url(empty_url))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        # One more ranking, with a tie: root's of prompt 1.
        conn.execute(text("INSERT INTO rankings (id, annotator_id, prompt_id, skip, unsafe, comment, submission_id, "
                          "created_at, updated_at) VALUES (3, 2, 1, FALSE, FALSE, NULL, 'sub-3', :t, :t)"),
                     {"t": "2026-12-01 09:00:00"})
        conn.execute(text("INSERT INTO ranking_entries (ranking_id, completion_id, rank) VALUES (3, 1, 0), (3, 2, 0)"))
        before = entries(conn)
        # Rebuilding ranking_entries must not cascade into its parents' tables.
        counts = {t: conn.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in ("rankings", "submissions", "prompts")}
    assert before == [(1, 1, 1), (1, 2, 0), (3, 1, 0), (3, 2, 0)]
    with FeedbackStore.open(empty_url) as store:  # runs 0003
        assert [(c.name, c.description) for c in store.criteria("demo")] == [("overall", "")]
        assert [(c.name, c.description) for c in store.criteria("other")] == [("overall", "")]
        with store.engine.connect() as conn:
            assert entries(conn) == before
            assert conn.scalar(text("SELECT COUNT(DISTINCT criterion_id) FROM ranking_entries")) == 1
            assert {t: conn.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in counts} == counts
        assert store.get_ranking("ada", 1).by_criterion == {"overall": {1: 1, 2: 0}}
        assert store.get_ranking("root", 1).ranks == {1: 0, 2: 0}
        # A second criterion, ranked: the downgrade drops its ranks and keeps overall's.
        store.add_criteria("demo", {"harmless": ""})
        store.submit_ranking("ada", 1, rankings={"overall": {1: 1, 2: 0}, "harmless": {1: 0, 2: 1}},
                             submission_id="sub-4")
        with store.engine.connect() as conn:
            assert conn.scalar(text("SELECT COUNT(*) FROM ranking_entries")) == 6
    engine.dispose()
    engine = make_engine(database_url(empty_url))  # the store's engine: SQLite foreign keys on, as in use
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    with engine.connect() as conn:
        assert entries(conn) == before
        assert conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == "0002"
        after = {t: conn.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in counts}
        assert after == {**counts, "submissions": counts["submissions"] + 1}  # + sub-4
    engine.dispose()
    with FeedbackStore.open(empty_url) as store:  # and up again
        assert store.get_ranking("ada", 1).by_criterion == {"overall": {1: 1, 2: 0}}
        assert [c.name for c in store.criteria("demo")] == ["overall"]
