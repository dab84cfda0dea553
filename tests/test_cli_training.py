"""`fsp` as a user runs it (a real subprocess): success paths print results, every
expected failure is one line on stderr with a non-zero exit, and a failed training
leaves the registry untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import DEMO_NOW

pytestmark = pytest.mark.services
FSP = str(Path(sys.executable).with_name("fsp"))


def _prefect_api() -> dict[str, str]:
    """Let subprocesses use the session's Prefect test API instead of starting their own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return {"PREFECT_API_URL": url} if url else {}


def run_fsp(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **_prefect_api(), **env}
    return subprocess.run(
        [FSP, *args], env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _env(database_url: str, state: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "FSP_STATE_DIR": str(state),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
    }


def assert_one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _registered(state: Path) -> list:
    uri = f"sqlite:///{state / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_registered_models()


def test_schema_demo_data_and_refusal(empty_db, tmp_path):
    env = _env(empty_db, tmp_path)
    assert "applied 001" in run_fsp("db", "upgrade", env=env).stdout
    again = run_fsp("db", "upgrade", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout
    made = run_fsp(
        "demo-data",
        "--json",
        "--tutors",
        "30",
        "--days",
        "40",
        "--now",
        DEMO_NOW.isoformat(),
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert '"tutors": 30' in made.stdout
    refused = run_fsp("demo-data", "--tutors", "30", env=env)
    assert_one_line_failure(refused, "already hold data")


def test_malformed_as_of_is_named(empty_db, tmp_path):
    result = run_fsp("train", "--as-of", "yesterday-ish", env=_env(empty_db, tmp_path))
    assert_one_line_failure(result, "--as-of", "ISO 8601")
    naive = run_fsp("train", "--as-of", "2026-11-01T12:00:00", env=_env(empty_db, tmp_path))
    assert_one_line_failure(naive, "--as-of", "offset")


def test_empty_platform_is_refused_and_registers_nothing(empty_db, tmp_path):
    env = _env(empty_db, tmp_path)
    run_fsp("db", "upgrade", env=env)
    from fsp.db import connect, ensure_platform_schema

    with connect(empty_db) as conn:
        ensure_platform_schema(conn)
    result = run_fsp("train", "--as-of", DEMO_NOW.isoformat(), env=env)
    assert_one_line_failure(result, "no labelled first sessions")
    assert _registered(tmp_path) == []


def test_too_early_cutoff_is_refused_and_leaves_the_registry_untouched(trained_world, tmp_path):
    env = _env(trained_world["database_url"], tmp_path)
    result = run_fsp("train", "--as-of", "2026-07-10T00:00:00+00:00", env=env)
    assert_one_line_failure(result, "too few labelled first sessions")
    assert _registered(tmp_path) == []


def test_unreachable_database_and_mlflow_are_one_line(tmp_path):
    no_db = _env("postgresql://postgres@127.0.0.1:1/none", tmp_path)
    assert_one_line_failure(run_fsp("db", "upgrade", env=no_db), "cannot reach the database")
    no_mlflow = {**no_db, "MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}
    assert_one_line_failure(
        run_fsp("promote", "1", env=no_mlflow, timeout=120), "cannot reach MLflow"
    )


def test_promote_refuses_unknown_and_malformed_versions(trained_world):
    env = _env(trained_world["database_url"], trained_world["state_dir"])
    assert_one_line_failure(run_fsp("promote", "99", env=env), "no version '99'")
    assert_one_line_failure(run_fsp("promote", "latest", env=env), "VERSION")
    listing = run_fsp("models", "--json", env=env)
    assert listing.returncode == 0 and '"champion"' in listing.stdout
