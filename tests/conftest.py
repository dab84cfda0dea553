"""Shared fixtures: real PostgreSQL databases, a real MLflow store in a temp folder,
Prefect's test harness. Nothing here is mocked.

PostgreSQL: with `DATABASE_URL` set (CI: the machine's server at 127.0.0.1:5432)
every test database is created on that server; otherwise on an embedded
PostgreSQL (pgserver) kept under `.fsp/test-pg`."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

# One OpenMP thread per process: test processes share two cores with each other and
# with the servers they start, and OpenMP's spinning threads (gradient boosting) turn a
# 4 s fit into more than a minute there. Set before numpy or scikit-learn loads it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Library loggers called outside a flow run log locally, as in the CLI.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_PREFECT_HOME = tempfile.mkdtemp(prefix="fsp-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

from flows.cli import ephemeral_prefect_defaults  # noqa: E402
from fsp.settings import PROJECT_ROOT, get_settings  # noqa: E402

ephemeral_prefect_defaults()

SERVICES_ONLY = re.compile(
    r"^pytestmark = (pytest\.mark\.services|\[pytest\.mark\.services\b.*\])$", re.MULTILINE
)
"""How a module says every one of its tests needs real services."""


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m "not services"` (make test-fast) a module whose every test needs real
    services is not even imported: importing MLflow, BentoML and Prefect for tests
    that are then deselected took most of the fast run."""
    if config.option.markexpr.strip() != "not services" or collection_path.suffix != ".py":
        return None
    return True if SERVICES_ONLY.search(collection_path.read_text()) else None


SERVER_URL = os.environ.get("DATABASE_URL")
DEMO_NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SCREENSHOTS = PROJECT_ROOT / ".fsp" / "screenshots"
"""Where the browser tests leave their screenshots (kept after the run, git-ignored)."""


@pytest.fixture(scope="session")
def server_url() -> str:
    """A URL of a PostgreSQL server on which tests may create databases."""
    if SERVER_URL:
        return SERVER_URL
    from fsp.db import _embedded_url

    return _embedded_url(PROJECT_ROOT / ".fsp" / "test-pg")


def _with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def create_database(server: str) -> str:
    """A new empty database on the server; returns its URL."""
    name = f"fsp_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_dbname(server, name)


def drop_database(server: str, url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    url = create_database(server_url)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test API for the whole session (starting one costs seconds), for the
    tests that need services only: the pure tests never pay for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test marked `services` runs inside the session's Prefect harness."""
    for item in items:
        if item.get_closest_marker("services") is not None:
            item.fixturenames.insert(0, "prefect_harness")


def configure_env(mp: pytest.MonkeyPatch, database_url: str, state_dir: Path) -> None:
    """Point the settings object at a test database and a temporary MLflow store."""
    state_dir.mkdir(parents=True, exist_ok=True)
    mp.setenv("DATABASE_URL", database_url)
    mp.setenv("FSP_STATE_DIR", str(state_dir))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state_dir / 'mlflow.db'}")
    mp.setenv("FSP_MIN_TRAINING_SESSIONS", "200")
    mp.setenv("FSP_MIN_HOLDOUT_SESSIONS", "50")
    get_settings.cache_clear()


@pytest.fixture
def fsp_env(empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Settings pointed at a fresh database and a fresh MLflow store; yields the DB URL."""
    configure_env(monkeypatch, empty_db, tmp_path / "state")
    yield empty_db
    get_settings.cache_clear()


def seed_demo(url: str, tutors: int = 150, days: int = 120, seed: int = 3) -> dict[str, int]:
    """Schema + demo history ending at DEMO_NOW in the database at `url`."""
    from fsp import demo_data
    from fsp.db import connect, upgrade

    with connect(url) as conn:
        upgrade(conn)
        frames = demo_data.generate(demo_data.DemoSpec(tutors, days, seed, DEMO_NOW))
        return demo_data.write(conn, frames)


@pytest.fixture(scope="session")
def trained_world(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A seeded database with a trained champion, shared read-only by many tests.

    Yields {'database_url', 'state_dir', 'train' (the training flow's summary),
    'train_run_id' (its Prefect flow run)}; tests that use it must not write to it
    (use `world_env` to point the settings at it)."""
    url = create_database(server_url)
    state = tmp_path_factory.mktemp("world-state")
    seed_demo(url)
    mp = pytest.MonkeyPatch()
    configure_env(mp, url, state)
    from flows.train import train_flow

    state_of_run = train_flow(as_of=DEMO_NOW.isoformat(), return_state=True)
    summary = state_of_run.result()
    mp.undo()
    get_settings.cache_clear()
    run_id = state_of_run.state_details.flow_run_id
    yield {"database_url": url, "state_dir": state, "train": summary, "train_run_id": run_id}
    drop_database(server_url, url)


@pytest.fixture
def world_env(trained_world: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """Settings pointed at the shared trained world."""
    configure_env(monkeypatch, trained_world["database_url"], trained_world["state_dir"])
    yield trained_world
    get_settings.cache_clear()
