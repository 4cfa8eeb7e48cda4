"""Fixtures of the feedback-store tests: a store on SQLite and on a throwaway PostgreSQL server.

The PostgreSQL server is started once per session from Debian's server binaries
(/usr/lib/postgresql/*/bin: `scripts/install-system-deps.sh` installs them), in a temporary
directory, on a free loopback port, and stopped at the end. Set RLHFKIT_TEST_POSTGRES_URL
(postgresql+psycopg://user:password@host:port/dbname, a user allowed to CREATE DATABASE) to use
an existing server instead.

Without the binaries these tests skip, saying how to enable them; with CI=true they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlhfkit.feedback.store import FeedbackStore

ENABLE = "to run them: sudo bash scripts/install-system-deps.sh"
PG_START_TIMEOUT_S = 60


def missing(reason: str) -> None:
    """Skip a test whose system dependency is missing; in CI, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required here; `make test` runs scripts/install-system-deps.sh)")
    pytest.skip(f"{reason}; {ENABLE}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (not whatever happens to be on PATH)."""
    found = [Path(p).parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    versions = sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


class PostgresServer:
    """initdb + pg_ctl in a temporary directory; run as the `postgres` user when we are root
    (the server refuses to run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_user: list[str] = []
        uid = gid = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                missing("running as root, but there is no `postgres` user to run the PostgreSQL server as")
            uid, gid = entry.pw_uid, entry.pw_gid
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Our own directory under /tmp: pytest's tmp dirs are private to root (mode 700).
        self.root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))
        if uid is not None:
            os.chown(self.root, uid, gid)
        self.data = self.root / "data"
        self.port = 0

    def _run(self, *args: str, timeout: float = PG_START_TIMEOUT_S) -> None:
        cmd = [*self.as_user, str(self.bindir / args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        for _ in range(3):  # a free port may be taken between finding and binding it
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                # A throwaway server: durability off, for speed.
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                          "-t", str(PG_START_TIMEOUT_S), "-o", options, "start")
                return
            except RuntimeError:
                continue
        raise RuntimeError(f"PostgreSQL did not start; see {self.root / 'server.log'}")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a database on a PostgreSQL server where tests may create databases."""
    given = os.environ.get("RLHFKIT_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = _pg_bindir()
    if bindir is None:
        missing("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    server = PostgresServer(bindir)
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        server.stop()
        missing(f"could not start a throwaway PostgreSQL server: {e}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_db(postgres_admin_url: str) -> str:
    """A database created and migrated once per session; tests empty it instead of making new
    ones (CREATE DATABASE costs ~0.4 s, emptying ~20 ms)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_admin_url)
    name = f"rlhfkit_test_{os.getpid()}"
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    FeedbackStore.open(url).close()  # creates the schema through the migrations
    return url


@pytest.fixture
def postgres_url(postgres_db: str) -> str:
    """The session's PostgreSQL database, emptied, with ids starting from 1 again."""
    import psycopg
    from sqlalchemy.engine import make_url

    from rlhfkit.feedback.schema import Base

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with psycopg.connect(_libpq(make_url(postgres_db)), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return postgres_db


def _libpq(url: object) -> str:
    """A SQLAlchemy URL as a libpq connection string for psycopg."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[FeedbackStore]:
    s = FeedbackStore.open(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[FeedbackStore]:
    s = FeedbackStore.open(tmp_path / "feedback.db")
    yield s
    s.close()
