"""The worker's two ways to the database: a dedicated health connection, checked in the
background, whose verdict readiness and the API's 503s follow; and a small pool that
requests borrow from to store a prediction or read the fsp tables. Requests never
wait on the database otherwise, and both recover by themselves when it returns."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from fsp.errors import DatabaseUnavailable
from service.config import DB_CONNECTION_OPTIONS, POOL_MAX_SIZE, POOL_TIMEOUT_SECONDS

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "database unavailable"
"""What a caller is told while the database does not answer (503)."""

NOT_CHECKED = "not checked yet"
"""The health verdict before the first check."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class DatabaseHealth:
    """Whether the database answers, from one dedicated connection checked by the
    snapshot thread. `error` is the last failure (None while it answers); it holds
    where the database is, so it goes to the log, never to a caller.

    `resolve_url` is passed in so tests can point it anywhere. Hooks: `located` are
    called with the address once it is known (the request pool opens on it),
    `recovered` when the database answers again after an outage, before requests are
    let through."""

    resolve_url: Callable[[], str]
    located: list[Callable[[str], None]] = field(default_factory=list)
    recovered: list[Callable[[], None]] = field(default_factory=list)
    error: str | None = NOT_CHECKED
    url: str | None = None
    connection: psycopg.Connection | None = None

    @property
    def up(self) -> bool:
        return self.error is None

    def require(self) -> None:
        """Raise DatabaseUnavailable when the last check failed."""
        if self.error is not None:
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE)

    def failed(self, exc: BaseException) -> None:
        """Remember the failure; log it (with where) once per outage."""
        detail = first_line(exc)
        if self.error is None or self.error == NOT_CHECKED:
            log.warning("database unavailable: %s", detail)
        self.error = detail

    def check(self) -> bool:
        """One health check on the dedicated connection, reconnecting when needed."""
        try:
            self._connected().execute("SELECT 1")
        except Exception as exc:  # any failure means the same to a caller: not answering
            self.failed(exc)
            self._drop_connection()
            return False
        if self.error is not None and self.error != NOT_CHECKED:
            log.warning("database answers again")
            for hook in self.recovered:
                hook()
        self.error = None
        return True

    def _connected(self) -> psycopg.Connection:
        if self.url is None:
            self.url = self.resolve_url()
            for hook in self.located:
                hook(self.url)
        if self.connection is None or self.connection.closed:
            options = make_conninfo(self.url, **DB_CONNECTION_OPTIONS)
            self.connection = psycopg.connect(options, autocommit=True)
        return self.connection

    def _drop_connection(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def close(self) -> None:
        self._drop_connection()


@dataclass
class RequestPool:
    """The connections requests borrow (POOL_MAX_SIZE per worker), opened once the
    database's address is known; a borrow fails fast (DatabaseUnavailable) while the
    health check says the database is down."""

    health: DatabaseHealth
    pool: ConnectionPool | None = None

    def open(self, url: str) -> None:
        """Open the pool on `url` (once; later calls do nothing)."""
        if self.pool is not None:
            return
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs=dict(DB_CONNECTION_OPTIONS),
            name="fsp-service",
        )
        pool.open(wait=False)
        self.pool = pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one unit of work; DatabaseUnavailable when none."""
        self.health.require()
        if self.pool is None:
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE)
        try:
            with self.pool.connection(timeout=POOL_TIMEOUT_SECONDS) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self.health.failed(exc)
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE) from exc

    def renew(self) -> None:
        """After an outage: the pooled connections are dead and the pool may be waiting
        out its reconnection backoff, so requests would still time out. Check them now
        (the broken ones are replaced) before requests are let through again."""
        if self.pool is None:
            return
        try:
            self.pool.check()
        except Exception as exc:  # the next health check decides; requests still answer 503
            log.warning("pool check after the outage skipped: %s", first_line(exc))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
