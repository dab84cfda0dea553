"""prefect.yaml for real: a `prefect server` and a process worker on loopback, every
deployment created with its schedules and triggers, and one run that completes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from fsp.db import connect, ensure_platform_schema, upgrade
from fsp.settings import PROJECT_ROOT
from tests.conftest import DEMO_NOW
from tests.service_fixtures import free_port

pytestmark = pytest.mark.services

BIN = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin"
SERVER_READY_SECONDS = 120
RUN_DONE_SECONDS = 180
EXPECTED = {"fsp-score", "fsp-alerts", "fsp-reconcile", "fsp-monitor", "fsp-train", "fsp-retrain"}


def prefect_bin() -> str:
    candidate = BIN / "prefect"
    return str(candidate) if candidate.exists() else str(PROJECT_ROOT / ".venv" / "bin" / "prefect")


@pytest.fixture
def prefect_env(tmp_path: Path, empty_db: str) -> dict[str, str]:
    """Environment of a separate Prefect installation pointed at a loopback server."""
    with connect(empty_db) as conn:
        upgrade(conn)
        ensure_platform_schema(conn)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PWD=str(PROJECT_ROOT),
        DATABASE_URL=empty_db,
        FSP_STATE_DIR=str(tmp_path / "state"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}",
    )
    env["FSP_TEST_PREFECT_PORT"] = str(port)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started, and its children (its own session), by its id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def prefect_server(prefect_env, tmp_path) -> Iterator[str]:
    api = prefect_env["PREFECT_API_URL"]
    port = prefect_env["FSP_TEST_PREFECT_PORT"]
    server = start(
        [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", port],
        prefect_env,
        tmp_path / "server.log",
    )
    try:
        deadline = time.monotonic() + SERVER_READY_SECONDS
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prefect server did not become healthy"
            time.sleep(0.5)
        yield api
    finally:
        stop(server)


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [prefect_bin(), "--no-prompt", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_prefect_yaml_declares_every_flow_with_schedules_and_triggers():
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == EXPECTED
    assert by_name["fsp-score"]["schedules"][0]["cron"] == "0 * * * *"
    assert by_name["fsp-reconcile"]["schedules"][0]["cron"].endswith("* * *")
    assert by_name["fsp-monitor"]["schedules"][0]["cron"].endswith("* * 1")
    assert by_name["fsp-alerts"]["triggers"][0]["expect"] == ["prefect.flow-run.Completed"]
    assert by_name["fsp-retrain"]["triggers"][0]["expect"] == ["fsp.model.retrain-requested"]
    assert by_name["fsp-monitor"]["parameters"]["retrain"] is False
    for deployment in spec["deployments"]:
        module, _, function = deployment["entrypoint"].partition(":")
        assert (PROJECT_ROOT / module).exists() and function


def test_deploy_and_run_on_a_real_server_and_worker(prefect_server, prefect_env, tmp_path):
    cli(prefect_env, "work-pool", "create", "fsp-process", "--type", "process")
    cli(prefect_env, "deploy", "--all")
    deployments = httpx.post(f"{prefect_server}/deployments/filter", json={}, timeout=10).json()
    assert {d["name"] for d in deployments} == EXPECTED
    scheduled = {d["name"] for d in deployments if d.get("schedules")}
    assert {"fsp-score", "fsp-alerts", "fsp-reconcile", "fsp-monitor"} <= scheduled
    automations = httpx.post(f"{prefect_server}/automations/filter", json={}, timeout=10).json()
    assert len(automations) == 2  # alerts after scoring, retrain on the event

    worker = start(
        [prefect_bin(), "worker", "start", "--pool", "fsp-process"],
        prefect_env,
        tmp_path / "worker.log",
    )
    try:
        out = cli(
            prefect_env,
            "deployment",
            "run",
            "fsp-reconcile/fsp-reconcile",
            "--param",
            f"now={DEMO_NOW.isoformat()}",
        )
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + RUN_DONE_SECONDS
        state = None
        while time.monotonic() < deadline:
            run = httpx.get(f"{prefect_server}/flow_runs/{run_id}", timeout=10).json()
            state = run["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
        assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    finally:
        stop(worker)

    # The monitoring flow's event starts the retrain deployment with the event's moment.
    as_of = DEMO_NOW.isoformat()
    cli(
        prefect_env,
        "event",
        "emit",
        "fsp.model.retrain-requested",
        "--resource-id",
        "fsp.model.first-session-risk",
        "--payload",
        json.dumps({"as_of": as_of, "reasons": ["test"]}),
    )
    retrain = next(d for d in deployments if d["name"] == "fsp-retrain")
    deadline = time.monotonic() + RUN_DONE_SECONDS
    runs: list = []
    while time.monotonic() < deadline and not runs:
        runs = httpx.post(
            f"{prefect_server}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [retrain["id"]]}}},
            timeout=10,
        ).json()
        time.sleep(1)
    assert runs, "the retrain trigger did not create a flow run"
    assert runs[0]["parameters"] == {"as_of": as_of}
