"""PostgreSQL access: where the database is, connections, pools and migrations.

With `DATABASE_URL` unset the embedded PostgreSQL (pgserver) under the state
folder is started on first use and left running for the next command.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from fsp.errors import DatabaseUnavailable
from fsp.settings import PROJECT_ROOT, Settings, get_settings

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
PLATFORM_SQL = MIGRATIONS_DIR / "platform.sql"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_UPGRADE_LOCK_KEY = 7_310_001


def database_url(settings: Settings) -> str:
    """The configured PostgreSQL URL, else the embedded server's (started if needed)."""
    if settings.database_url:
        return settings.database_url
    return _embedded_url(settings.pg_dir)


def _embedded_url(pg_dir: Path) -> str:
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: only the embedded default needs it

    pg_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(pg_dir, cleanup_mode=None)
    return server.get_uri()


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open one connection, turning a refusal into a one-line `DatabaseUnavailable`."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot reach the database: {reason}") from exc


@contextmanager
def connection(settings: Settings) -> Iterator[psycopg.Connection]:
    """A connection for one unit of work, committed on success, closed always."""
    conn = connect(database_url(settings))
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> ConnectionPool:
    """A connection pool opened now; callers close it."""
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False)
    pool.open(wait=False)
    return pool


def _migrations() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((match.group(1), path))
    return found


def upgrade(conn: psycopg.Connection) -> list[str]:
    """Apply the pending fsp migrations in order, each in its own transaction.

    Serialised by an advisory lock so that two upgrades at once are safe; a
    migration that fails rolls back alone and stops the upgrade. Returns the
    versions applied (empty when already up to date)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS fsp")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS fsp.schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM fsp.schema_migrations")}
        applied = []
        for version, path in _migrations():
            if version in done:
                continue
            with conn.transaction():
                conn.execute(path.read_text())  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO fsp.schema_migrations (version, name) VALUES (%s, %s)",
                    (version, path.name),
                )
            applied.append(version)
    return applied


def ensure_platform_schema(conn: psycopg.Connection) -> None:
    """Create the platform tables of the contract where they are missing (demo, tests)."""
    with conn.transaction():
        conn.execute(PLATFORM_SQL.read_text())  # type: ignore[arg-type]


def platform_is_empty(conn: psycopg.Connection) -> bool:
    """True when no platform table holds a row."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM platform.tutors) OR EXISTS (SELECT 1 FROM platform.students)"
        " OR EXISTS (SELECT 1 FROM platform.sessions) OR EXISTS (SELECT 1 FROM platform.feedback)"
        " OR EXISTS (SELECT 1 FROM platform.tutor_engagement)"
    ).fetchone()
    return not (row and row[0])


def stop_embedded(pg_dir: Path | None = None) -> bool:
    """Stop the embedded PostgreSQL if it runs (for `make clean`); True when one was stopped."""
    folder = pg_dir or get_settings().pg_dir
    if not (folder / "postmaster.pid").exists():
        return False
    import pgserver  # the embedded default only: kept off every other path

    user = "pgserver" if os.geteuid() == 0 else None
    # pg_ctl: a command wrapper pgserver exports from its root (made at import: mypy can't see it)
    pgserver.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "stop", "-m", "fast"], pgdata=folder, user=user
    )
    return True
