"""A database written by revision 0001 (the first release's schema) upgrades to the newest
revision on open, on SQLite and PostgreSQL, with every ranking, comment and token kept and the
old database-wide admin flag turned into per-project admin roles."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from rlhfkit.feedback.database import database_url
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
