"""Opening a database: SQLite file paths and PostgreSQL URLs, one engine set-up for each."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from rlhfkit.feedback.errors import DatabaseUnavailable, FeedbackError

SQLITE_BUSY_TIMEOUT_S = 10.0
"""How long a SQLite writer waits for another writer before giving up."""
CONNECT_TIMEOUT_S = 5
"""PostgreSQL connection timeout: a wrong host fails in seconds, not minutes."""
POOL_SIZE, POOL_OVERFLOW = 10, 30  # the web app runs request handlers on up to 40 threads
WRITE_OPTION = "rlhfkit_write"
"""Execution option marking a writer's connection: SQLite then takes the write lock at BEGIN."""
DURABLE_OPTION = "rlhfkit_durable"
"""Execution option; False lets a SQLite write commit without flushing to disk (see _on_begin)."""


def database_url(db: str | Path) -> URL:
    """A SQLAlchemy URL from a SQLite file path or a database URL (`postgresql://` gets psycopg 3)."""
    text = str(db).strip()
    if not text:
        raise FeedbackError("database: empty; give a SQLite file path or a postgresql+psycopg:// URL")
    if "://" not in text:
        return URL.create("sqlite", database=text)
    try:
        url = make_url(text)
    except ArgumentError:
        raise FeedbackError(
            f"database URL {text!r} is not valid; use a file path (feedback.db) or "
            "postgresql+psycopg://user:password@host:5432/dbname"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise FeedbackError("database: an in-memory SQLite database would lose every ranking; give a file path")
        return url
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url
    raise FeedbackError(
        f"database URL {url.render_as_string(hide_password=True)!r}: {backend!r} is not supported; "
        "use a SQLite file path or postgresql+psycopg://user:password@host:5432/dbname"
    )


def _sqlite_engine(url: URL) -> Engine:
    path = Path(url.database or "")
    if not path.parent.exists():
        raise DatabaseUnavailable(f"database {path}: directory {path.parent} does not exist; create it first")
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions out of the driver's hands: `_on_begin` starts them, so that writers
        # can take the write lock up front (BEGIN IMMEDIATE). A deferred transaction that reads
        # and then writes fails with "database is locked" if another writer came in between,
        # whatever the busy timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(WRITE_OPTION, False):
            # FULL: the commit is flushed to disk, so a ranking survives a power cut. NORMAL (in
            # WAL mode): survives a crash of this program, not of the machine; the next FULL
            # commit flushes it too. Only leases on prompts, which expire anyway, use NORMAL.
            durable = options.get(DURABLE_OPTION, True)
            connection.exec_driver_sql(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


def make_engine(url: URL) -> Engine:
    """An engine for a URL from `database_url` (nothing is connected yet)."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    try:
        return create_engine(
            url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True, pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )
    except NoSuchModuleError:
        raise FeedbackError(f"database driver {url.drivername!r} is not installed; use postgresql+psycopg://") from None
    except ModuleNotFoundError as e:
        raise FeedbackError(f"database driver for {url.drivername!r} is missing ({e.name}); "
                            "install it with: pip install 'psycopg[binary]'") from None


def hash_token(token: str) -> str:
    """What the database keeps of a sign-in token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


