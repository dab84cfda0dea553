"""The process environment a command runs in: Prefect's home and quiet, fast defaults,
set before Prefect or MLflow is first imported, and the narrow warning filters that keep
a clean run's console free of noise the user cannot act on."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsp.settings import Settings

# Background services a one-shot ephemeral Prefect API does not need; skipping them
# halves its start-up (measured: 25 s → 12.7 s on a loaded 2-core machine).
EPHEMERAL_IDLE_SERVICES = (
    "CANCELLATION_CLEANUP",
    "DB_VACUUM",
    "EVENT_LOGGER",
    "FOREMAN",
    "LATE_RUNS",
    "SCHEDULER",
    "PAUSE_EXPIRATIONS",
    "REPOSSESSOR",
    "CLEANUP_RECONCILER",
    "TRIGGERS",
)


LIBRARY_LOGGERS = "fsp,training,alerting,monitoring"
"""Our packages' module loggers, which Prefect forwards to the run's log when named."""


def ephemeral_prefect_defaults() -> None:
    """Quiet, fast defaults for Prefect's ephemeral API (only when no server is configured).

    Analytics off unless the user turned it on: otherwise every ephemeral start prints
    Prefect's usage-data banner."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the packages' own loggers reach the flow run's log in the Prefect UI too
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", LIBRARY_LOGGERS)
    # ... and outside a flow run (fsp preview, a test) they log locally, without a warning
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    if os.environ.get("PREFECT_API_URL"):
        return
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    for service in EPHEMERAL_IDLE_SERVICES:
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")


def prepare_environment(settings: Settings) -> None:
    """Prefect's home and quiet defaults, set before Prefect is first imported."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str((settings.state_dir / "prefect").resolve()))
    # The ephemeral API can take longer than Prefect's 20 s default on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    ephemeral_prefect_defaults()
    # The CLI prints each flow's result; Prefect's own console chatter (e.g. the events
    # worker flushing at exit) stays in the flow-run logs unless it is an error.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # An unreachable or silent tracking server fails in seconds, not after minutes of
    # retries: fsp.model_store.MLFLOW_HTTP_DEFAULTS, applied when a client is made.
    quiet_library_warnings()


def quiet_library_warnings() -> None:
    """Warnings a clean run would print that say nothing the user can act on; each
    filter is as narrow as the message allows (Prefect's usage-data banner is turned
    off at its source: ephemeral_prefect_defaults)."""
    logging.getLogger("mlflow.utils.environment").addFilter(_no_pip_version_warning)


def _no_pip_version_warning(record: logging.LogRecord) -> bool:
    """MLflow warns on every logged model that it cannot find pip's version: the venv is
    built by uv and has no pip. The model's conda.yaml then lists pip unpinned, which
    nothing here uses (the Bento and requirements.txt pin every package from uv.lock)."""
    return not record.getMessage().startswith("Failed to resolve installed pip version")
