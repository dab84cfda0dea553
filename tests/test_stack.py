"""The team stack end to end in Docker (docker-compose.yml; `make stack-test`).

Builds every image on the local Debian base (`make stack-images`, offline), starts the
stack with `make stack-up` under a project name, settings and free ports of its own,
waits for health, and checks through the published ports (127.0.0.1 only): MLflow
shows the champion alias; the Prefect server lists every deployment of prefect.yaml
with its schedule; score and alerts runs complete through the worker; the alert emails
arrive in the mail catcher (read through its API); the Bento answers POST /predict with
the champion's version; a PostgreSQL outage makes the Bento answer 503 with a reason,
and it and the flows recover by themselves; `docker-compose down -v` leaves nothing.

Runs only where a Docker engine answers (`docker/with-dockerd.sh` starts one);
otherwise skipped with the reason. Figures (build and wall times, container memory)
are printed and written to .fsp/stack/figures.json."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".fsp" / "stack"
PROJECT = "fsp-stack-test"
LONG_RUNNING = ("postgres", "mlflow", "prefect-server", "worker", "bento", "mail")


def _engine_problem() -> str | None:
    """Why no stack can run here, or None when the Docker engine answers."""
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if done.returncode != 0:
        return "no Docker engine answers (make stack-test starts one)"
    return None


_PROBLEM = _engine_problem()
pytestmark = [
    pytest.mark.stack,
    pytest.mark.services,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(_PROBLEM is not None, reason=f"stack: {_PROBLEM}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_file() -> tuple[Path, dict[str, str]]:
    """.env.example with fresh secrets, free ports and the offline images."""
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    values.update(
        COMPOSE_PROJECT_NAME=PROJECT,
        FSP_API_KEY=secrets.token_hex(24),
        POSTGRES_PASSWORD=secrets.token_hex(16),
        FSP_BASE_IMAGE="fsp-base:bookworm-py3.11",
        FSP_POSTGRES_IMAGE="fsp-postgres:15",
        FSP_MAIL_IMAGE="fsp-maildev:2.2.1",
        FSP_BENTO_IMAGE="fsp-bento:stack-test",
        FSP_WAIT_SECONDS="240",
    )
    for key in (
        "FSP_POSTGRES_PORT",
        "FSP_MLFLOW_PORT",
        "FSP_PREFECT_PORT",
        "FSP_BENTO_PORT",
        "FSP_MAIL_WEB_PORT",
        "FSP_MAIL_SMTP_PORT",
    ):
        values[key] = str(_free_port())
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / "stack-test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path, values


def _run(cmd: list[str], timeout: float = 1800, check: bool = True) -> str:
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


def _http(
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Stack:
    def __init__(self, env_file: Path, values: dict[str, str]) -> None:
        self.env_file = env_file
        self.values = values
        self.figures: dict[str, Any] = {}

    def url(self, port_key: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.values[port_key]}{path}"

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        return _run(
            ["docker-compose", "--env-file", str(self.env_file), *args],
            timeout=timeout,
            check=check,
        )

    def make(self, target: str, timeout: float = 1800) -> str:
        return _run(
            ["make", "--no-print-directory", target, f"STACK_ENV={self.env_file}"],
            timeout=timeout,
        )

    def health(self) -> dict[str, str]:
        states = {}
        for service in LONG_RUNNING:
            cid = self.compose("ps", "-q", service, check=False).strip()
            if not cid:
                states[service] = "absent"
                continue
            states[service] = _run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", cid], check=False
            ).strip()
        return states

    def wait_healthy(self, timeout: float = 600) -> float:
        started = time.monotonic()
        while True:
            states = self.health()
            if all(s == "healthy" for s in states.values()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                logs = self.compose("logs", "--tail=40", check=False)
                raise AssertionError(f"not healthy after {timeout} s: {states}\n{logs[-6000:]}")
            time.sleep(3)

    def pg(self) -> psycopg.Connection:
        v = self.values
        return psycopg.connect(
            host="127.0.0.1",
            port=int(v["FSP_POSTGRES_PORT"]),
            user=v["POSTGRES_USER"],
            password=v["POSTGRES_PASSWORD"],
            dbname=v["POSTGRES_DB"],
            connect_timeout=10,
        )

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env_file, values = _env_file()
    s = Stack(env_file, values)
    s.down()  # a previous interrupted run
    test_started = time.monotonic()
    t0 = time.monotonic()
    print("\n" + s.make("stack-images").strip())
    s.figures["images_build_seconds"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    try:
        up = s.make("stack-up", timeout=2400).strip()
        print(up[-2000:])
        s.figures["stack_up_seconds"] = round(time.monotonic() - t0, 1)
        s.figures["bento_image"] = [li for li in up.splitlines() if li.startswith("stack-bento:")]
        s.figures["healthy_after_up_seconds"] = round(s.wait_healthy(), 1)
        yield s
    finally:
        if "memory" not in s.figures:
            s.figures["memory"] = _memory()
        s.down()
        s.figures["test_wall_seconds"] = round(time.monotonic() - test_started, 1)
        (STATE / "figures.json").write_text(json.dumps(s.figures, indent=2))
        print("\nstack figures:\n" + json.dumps(s.figures, indent=2))


def _champion(stack: Stack) -> str:
    query = urllib.parse.urlencode({"name": stack.values["FSP_MODEL_NAME"], "alias": "champion"})
    status, body = _http(
        stack.url("FSP_MLFLOW_PORT", f"/api/2.0/mlflow/registered-models/alias?{query}")
    )
    assert status == 200, body
    return str(body["model_version"]["version"])


def _prefect(stack: Stack, path: str, body: Any = None) -> Any:
    """Prefect's API; a busy server's empty answer, 5xx or timeout is retried a few times."""
    for attempt in range(6):
        try:
            status, answer = _http(stack.url("FSP_PREFECT_PORT", f"/api{path}"), body)
        except OSError as exc:
            status, answer = 0, str(exc)
        if status < 300 and not isinstance(answer, str):
            return answer
        if 0 < status < 500 or attempt == 5:
            raise AssertionError((path, status, answer))
        time.sleep(2)
    raise AssertionError(path)  # not reached


def _deployments(stack: Stack) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _prefect(stack, "/deployments/filter", {})}


def _run_deployment(stack: Stack, name: str, timeout: float = 600) -> dict[str, Any]:
    deployment = _deployments(stack)[name]
    run = _prefect(stack, f"/deployments/{deployment['id']}/create_flow_run", {})
    deadline = time.monotonic() + timeout
    while True:
        state = _prefect(stack, f"/flow_runs/{run['id']}")["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert state["type"] == "COMPLETED", (name, state)
            return state
        assert time.monotonic() < deadline, f"{name} still {state['type']} after {timeout} s"
        time.sleep(3)


def _mail(stack: Stack) -> list[dict[str, Any]]:
    """Every message the catcher holds: Mailpit's API, else MailDev's."""
    status, body = _http(stack.url("FSP_MAIL_WEB_PORT", "/api/v1/messages?limit=1000"))
    if status == 200 and isinstance(body, dict):
        return list(body["messages"])
    status, body = _http(stack.url("FSP_MAIL_WEB_PORT", "/email"))
    assert status == 200, (status, body)
    return list(body)


def test_mlflow_shows_the_champion(stack: Stack) -> None:
    version = _champion(stack)
    assert version.isdigit()
    stack.figures["champion_version"] = version


def test_prefect_lists_every_deployment_with_its_schedule(stack: Stack) -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    served = _deployments(stack)
    assert set(served) == {d["name"] for d in spec["deployments"]}
    for wanted in spec["deployments"]:
        got = served[wanted["name"]]
        crons = sorted(s["schedule"]["cron"] for s in got.get("schedules") or [])
        assert crons == sorted(s["cron"] for s in wanted.get("schedules") or []), wanted["name"]
        assert got["work_pool_name"] == "fsp-process"


def test_score_and_alerts_run_through_the_worker_and_emails_arrive(stack: Stack) -> None:
    t0 = time.monotonic()
    _run_deployment(stack, "fsp-score")
    _run_deployment(stack, "fsp-alerts")
    stack.figures["score_and_alerts_seconds"] = round(time.monotonic() - t0, 1)
    # The alerts run the score run triggered may still be sending: wait until they agree.
    deadline = time.monotonic() + 120
    while True:
        with stack.pg() as conn:
            sent = conn.execute(  # one email per tutor and run: a letter lists sessions
                "SELECT count(DISTINCT coalesce(letter_message_id, session_id))"
                " FROM fsp.alert_deliveries WHERE status = 'sent'"
            ).fetchone()
            scored = conn.execute("SELECT count(*) FROM fsp.first_session_predictions").fetchone()
        messages = _mail(stack)
        if (sent and len(messages) == sent[0]) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert scored and scored[0] > 0
    assert sent and sent[0] > 0, "no alert was sent (no high-risk session in the next 24 h?)"
    assert len(messages) == sent[0]
    stack.figures["predictions_stored"] = scored[0]
    stack.figures["alert_emails"] = len(messages)


def test_bento_answers_with_the_champions_version(stack: Stack) -> None:
    with stack.pg() as conn:
        row = conn.execute("SELECT tutor_id FROM platform.tutors ORDER BY tutor_id LIMIT 1")
        tutor = row.fetchone()
    assert tutor
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0, minute=0)
    body = {
        "tutor_id": tutor[0],
        "subject": "Algebra II",
        "scheduled_start": start.isoformat(),
        "student_age": 15,
        "timezone": "America/New_York",
    }
    key = {"authorization": f"Bearer {stack.values['FSP_API_KEY']}"}
    status, answer = _http(stack.url("FSP_BENTO_PORT", "/predict"), body, key)
    assert status == 200, answer
    assert str(answer["model_version"]) == _champion(stack)
    assert 0 <= answer["risk_probability"] <= 1
    status, _ = _http(stack.url("FSP_BENTO_PORT", "/predict"), body)
    assert status == 401


def test_postgres_outage_503_then_recovery(stack: Stack) -> None:
    ready = stack.url("FSP_BENTO_PORT", "/readyz")
    stack.compose("stop", "-t", "10", "postgres")
    try:
        deadline = time.monotonic() + 60
        while True:
            status, reason = _http(ready, timeout=10)
            if status == 503:
                break
            assert time.monotonic() < deadline, f"/readyz still {status} with PostgreSQL down"
            time.sleep(1)
        assert "database" in str(reason)
    finally:
        stack.compose("start", "postgres")
    t0 = time.monotonic()
    while _http(ready, timeout=10)[0] != 200:
        assert time.monotonic() - t0 < 180, "the Bento did not recover"
        time.sleep(2)
    stack.figures["bento_recovered_after_postgres_start_seconds"] = round(time.monotonic() - t0, 1)
    stack.wait_healthy(timeout=300)
    _run_deployment(stack, "fsp-score")


def test_waits_are_bounded_and_name_the_service(stack: Stack) -> None:
    image = stack.values["FSP_WORKER_IMAGE"]
    for command, env, wanted in (
        (
            "bootstrap",
            {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
            "MLflow is not up at http://mlflow:5000/health",
        ),
        (
            "worker",
            {"PREFECT_API_URL": "http://prefect-server:4200/api"},
            "Prefect is not up at http://prefect-server:4200/api/health",
        ),
    ):
        flags = [f"-e{k}={v}" for k, v in {**env, "FSP_WAIT_SECONDS": "4"}.items()]
        done = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", *flags, image, command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0
        assert wanted in done.stderr, done.stderr


def _memory() -> list[str]:
    stats = _run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}"], check=False
    )
    return sorted(line for line in stats.splitlines() if PROJECT in line)


def test_down_leaves_nothing_running(stack: Stack) -> None:
    stack.figures["memory"] = _memory()  # every container as the checks left it
    stack.down()
    label = f"label=com.docker.compose.project={PROJECT}"
    assert _run(["docker", "ps", "-aq", "--filter", label]).strip() == ""
    assert _run(["docker", "volume", "ls", "-q", "--filter", label]).strip() == ""
    assert _run(["docker", "network", "ls", "-q", "--filter", label]).strip() == ""
