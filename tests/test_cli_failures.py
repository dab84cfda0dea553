"""One line on failure, everywhere: a damaged, missing or unreachable MLflow store and a
champion whose files are gone each end `fsp` (a real subprocess, as a user runs it) with
exit 1 and ONE stderr line naming the store (no password) and the cause; a SQLite path
that does not exist is refused, not created, except by the commands that create a store.

The classification itself (which exception means what, how a URI is masked) is tested
without services at the end."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from fsp.errors import ModelStoreBroken, RegistryUnavailable
from fsp.model_store import mlflow_failure, store_failure
from fsp.store_uri import local_store_path, masked_uri
from tests.conftest import DEMO_NOW
from tests.service_fixtures import free_port
from tests.test_cli_training import FSP, _prefect_api

MODEL = "first-session-risk"
NOW = DEMO_NOW.isoformat()


def _env(state: Path, uri: str, database_url: str = "postgresql://postgres@127.0.0.1:1/none"):
    return {"DATABASE_URL": database_url, "FSP_STATE_DIR": str(state), "MLFLOW_TRACKING_URI": uri}


def run_fsp(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`fsp` in a subprocess, with MLflow's HTTP settings left to the code's defaults."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    return subprocess.run(
        [FSP, *args],
        env={**inherited, **_prefect_api(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 1 and exactly one non-empty stderr line, holding every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    return lines[0]


# --- a damaged store ---------------------------------------------------------------------


@pytest.fixture
def corrupt_store(tmp_path: Path) -> Path:
    """A 'store' of garbage bytes, as a disk error or a wrong file leaves one."""
    path = tmp_path / "mlflow.db"
    path.write_bytes(os.urandom(8192))
    return path


@pytest.mark.services
@pytest.mark.parametrize(
    "command", [("models",), ("promote", "1"), ("score", "--now", NOW)], ids=lambda c: c[0]
)
def test_a_corrupt_sqlite_store_is_one_line(corrupt_store: Path, tmp_path: Path, command):
    before = corrupt_store.read_bytes()
    result = run_fsp(*command, env=_env(tmp_path / "state", f"sqlite:///{corrupt_store}"))
    one_line_failure(
        result, f"fsp {command[0]}:", f"MLflow store sqlite:///{corrupt_store}", "not a database"
    )
    assert corrupt_store.read_bytes() == before  # nothing written into it


# --- a store that does not exist ---------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("command", [("models",), ("score", "--now", NOW)], ids=lambda c: c[0])
def test_a_missing_sqlite_store_is_refused_not_created(tmp_path: Path, command):
    typo = tmp_path / "mlfow" / "mlflow.db"  # a mistyped folder
    result = run_fsp(*command, env=_env(tmp_path / "state", f"sqlite:///{typo}"))
    one_line_failure(result, "no MLflow store at", str(typo), "does not exist", "fsp train")
    assert not typo.exists() and not typo.parent.exists()


@pytest.mark.services
def test_train_creates_the_store_it_is_pointed_at(empty_db: str, tmp_path: Path):
    """`fsp train` may create a store (every other command refuses a missing one): on an
    empty platform pointed at a new store it fails for want of data, not for the store."""
    from fsp.db import connect, ensure_platform_schema, upgrade

    with connect(empty_db) as conn:
        upgrade(conn)
        ensure_platform_schema(conn)
    store = tmp_path / "new" / "mlflow.db"
    store.parent.mkdir()
    env = _env(tmp_path / "state", f"sqlite:///{store}", empty_db)
    failed = run_fsp("train", "--as-of", NOW, env=env)
    one_line_failure(failed, "no labelled first sessions")
    assert "does not exist" not in failed.stderr


# --- a server that is down or silent -----------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("command", [("models",), ("score", "--now", NOW)], ids=lambda c: c[0])
def test_an_unreachable_server_is_one_line_without_its_password(tmp_path: Path, command):
    port = free_port()
    uri = f"http://alice:s3cret-pw@127.0.0.1:{port}"
    # MLflow's own defaults (7 retries, growing back-off) would take minutes longer
    # than this bound; ours answer after one retry.
    result = run_fsp(*command, env=_env(tmp_path / "state", uri), timeout=300)
    line = one_line_failure(
        result, f"cannot reach MLflow at http://***@127.0.0.1:{port}", "Connection refused"
    )
    assert "s3cret" not in result.stderr + result.stdout and "alice" not in line


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.services
def test_a_silent_server_is_one_line_within_seconds(tmp_path: Path, silent_server: int):
    # 2 attempts of 5 s each end well inside the bound; MLflow's 7 x 120 s would not
    env = _env(tmp_path / "state", f"http://127.0.0.1:{silent_server}")
    result = run_fsp("models", env=env, timeout=300)
    one_line_failure(
        result, f"cannot reach MLflow at http://127.0.0.1:{silent_server}", "timed out"
    )


# --- a champion whose files are gone ------------------------------------------------------


def _register_champion(store: Path, artifacts: Path) -> None:
    """A tiny registered model holding the champion alias, its files under `artifacts`."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{store}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.create_experiment("tiny", artifact_location=artifacts.as_uri())
        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name=MODEL,
                pip_requirements=["scikit-learn"],
                serialization_format="skops",
            )
        client.set_registered_model_alias(MODEL, "champion", "1")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


@pytest.fixture
def champion_without_artifacts(tmp_path: Path) -> dict[str, str]:
    store, artifacts = tmp_path / "mlflow.db", tmp_path / "artifacts"
    _register_champion(store, artifacts)
    assert any(artifacts.rglob("MLmodel"))
    shutil.rmtree(artifacts)
    return _env(tmp_path / "state", f"sqlite:///{store}")


@pytest.mark.services
@pytest.mark.parametrize("command", [("score", "--now", NOW), ("package",)], ids=lambda c: c[0])
def test_a_champion_without_artifacts_is_one_line(champion_without_artifacts, command):
    result = run_fsp(*command, env=champion_without_artifacts)
    one_line_failure(
        result, f"fsp {command[0]}:", f"cannot load models:/{MODEL}/1", "artifacts are missing"
    )


# --- the classification, without services -----------------------------------------------


def test_uris_are_masked_but_otherwise_unchanged():
    assert masked_uri("sqlite:////tmp/a/mlflow.db") == "sqlite:////tmp/a/mlflow.db"
    assert masked_uri("http://u:p%40ss@host:5000/x") == "http://***@host:5000/x"
    assert (
        masked_uri("postgresql://me:pw@db/mlflow?sslmode=require&password=zz")
        == "postgresql://***@db/mlflow?sslmode=require&password=***"
    )
    assert masked_uri("https://token@mlflow.example/") == "https://***@mlflow.example/"


def test_local_store_paths():
    assert local_store_path("sqlite:////tmp/x/mlflow.db") == Path("/tmp/x/mlflow.db")
    assert local_store_path("sqlite:///rel/mlflow.db") == Path("rel/mlflow.db")
    assert local_store_path("file:///tmp/mlruns") == Path("/tmp/mlruns")
    assert local_store_path("mlruns") == Path("mlruns")
    for remote in ("sqlite://", "sqlite:///:memory:", "http://h:5000", "postgresql://h/db"):
        assert local_store_path(remote) is None, remote


def test_store_failures_are_typed_one_line_and_secret_free():
    uri = "http://bob:hunter22@mlflow.internal:5000"
    refused = MlflowException(
        f"API request to {uri}/api/2.0/mlflow/experiments/search failed with exception"
        " HTTPConnectionPool(host='mlflow.internal', port=5000): Max retries exceeded"
        " (Caused by NewConnectionError('...: Failed to establish a new connection:"
        " [Errno 111] Connection refused'))"
    )
    cases = {
        refused: (RegistryUnavailable, "[Errno 111] Connection refused"),
        requests.ConnectionError("boom\nmore"): (RegistryUnavailable, "boom"),
        sqlalchemy.exc.DatabaseError(
            "SELECT 1", {}, sqlite3.DatabaseError("file is not a database")
        ): (
            ModelStoreBroken,
            "file is not a database",
        ),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("locked")): (
            RegistryUnavailable,
            "locked",
        ),
        MlflowException("No such artifact: 'MLmodel'", error_code=RESOURCE_DOES_NOT_EXIST): (
            ModelStoreBroken,
            "No such artifact",
        ),
    }
    for exc, (kind, needle) in cases.items():
        failure = store_failure(exc, uri)
        assert isinstance(failure, kind), (exc, failure)
        text = str(failure)
        assert "\n" not in text and needle in text and "mlflow.internal:5000" in text, text
        assert "hunter22" not in text and "bob" not in text, text
    assert store_failure(ValueError("a bug"), uri) is None  # a bug keeps its traceback
    assert mlflow_failure(OSError("not MLflow's"), uri) is None


def test_a_model_that_cannot_be_loaded_names_it():
    gone = FileNotFoundError(2, "No such file or directory", "/a/artifacts/model.skops")
    failure = store_failure(gone, "sqlite:////s/mlflow.db", model_uri=f"models:/{MODEL}/3")
    assert isinstance(failure, ModelStoreBroken)
    assert str(failure) == (
        f"cannot load models:/{MODEL}/3 from MLflow store sqlite:////s/mlflow.db: its artifacts"
        " are missing or unreadable: No such file or directory: /a/artifacts/model.skops"
    )
