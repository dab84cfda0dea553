"""How the operating loop's tasks retry: transient faults (a database restart, a
dropped connection, an MLflow store that blinks) are retried with back-off;
expected failures with a clear reason (no champion, bad input) are not, because
trying again cannot change them."""

from __future__ import annotations

from typing import Any, Final

import psycopg

from fsp.errors import DatabaseUnavailable, FspError, RegistryUnavailable

TASK_RETRIES: Final = 3
TASK_RETRY_DELAYS: Final[list[float]] = [1.0, 3.0, 9.0]
"""Long enough for a restarted PostgreSQL to accept connections again."""

_TRANSIENT_FSP_ERRORS = (DatabaseUnavailable, RegistryUnavailable)


def is_transient(exc: BaseException | None) -> bool:
    """True for faults that may pass: connection loss, a restarting server, I/O errors.

    Anything else (a bug, a template error, an expected failure) fails at once:
    retrying cannot change it and would only delay the message."""
    if isinstance(exc, _TRANSIENT_FSP_ERRORS):
        return True
    if isinstance(exc, FspError):
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only for a transient fault."""
    data = getattr(state, "data", None)
    exc = data if isinstance(data, BaseException) else None
    return is_transient(exc)


RETRYING: Final[dict[str, Any]] = {
    "retries": TASK_RETRIES,
    "retry_delay_seconds": TASK_RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}
"""Keyword arguments for `@task(...)` of every task that touches a service."""
