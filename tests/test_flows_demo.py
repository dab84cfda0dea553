"""`fsp demo` end to end, as a user runs it: a subprocess with nothing but a fresh state
folder (no DATABASE_URL, no MLFLOW_TRACKING_URI, no SMTP) — embedded PostgreSQL,
local MLflow store, outbox folder, Prefect's ephemeral API."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fsp.settings import PROJECT_ROOT

pytestmark = pytest.mark.services

DEMO_TIMEOUT_SECONDS = 900
FSP = PROJECT_ROOT / ".venv" / "bin" / "fsp"


def stop_embedded_postgres(pg_dir: Path) -> None:
    """Stop the embedded PostgreSQL the demo started (by the pid it recorded)."""
    pid_file = pg_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, signal.SIGINT)  # fast shutdown
    except ProcessLookupError:
        return
    for _ in range(100):
        if not pid_file.exists():
            return
        time.sleep(0.1)


def run_demo(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_API_URL")
        and not k.startswith("SMTP_")
    }
    env.update(
        FSP_STATE_DIR=str(state),
        FSP_DEMO_TUTORS="300",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",  # a busy CI machine
    )
    return subprocess.run(
        [str(FSP), *(args or ("demo",))],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
    )


def test_fsp_demo_runs_the_whole_loop_on_embedded_defaults(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    try:
        started = time.monotonic()
        first = run_demo(state)
        seconds = time.monotonic() - started
        assert first.returncode == 0, first.stderr[-4000:]
        assert "warning" not in first.stderr.lower(), first.stderr[-4000:]  # a clean run
        out = first.stdout
        print(out, f"\n(wall time {seconds:.0f} s)")
        assert "fsp demo: the whole loop" in out
        for label in (
            "platform",
            "champion",
            "bento",
            "scored",
            "emails",
            "reconciled",
            "live",
            "drift",
            "report",
            "MLflow UI",
            "Prefect UI",
        ):
            assert re.search(rf"^  {label}\b", out, re.M), label
        sent = int(re.search(r"^  emails\s+(\d+) sent", out, re.M).group(1))  # type: ignore[union-attr]
        assert len(list((state / "outbox").glob("*.eml"))) == sent > 0
        reports = list((state / "reports").rglob("*.html"))
        assert reports and all(r.stat().st_size > 100_000 for r in reports)
        assert (state / "mlflow.db").exists() and (state / "pg").exists()

        again = run_demo(state)  # a rerun reuses everything and sends nothing twice
        assert again.returncode == 0, again.stderr[-4000:]
        assert "(already there)" in again.stdout and "(trained earlier)" in again.stdout
        assert len(list((state / "outbox").glob("*.eml"))) == sent
        assert_previews_and_tracking(state)
    finally:
        stop_embedded_postgres(state / "pg")


def assert_previews_and_tracking(state: Path) -> None:
    """`fsp preview` writes the email a scored session would get; an unknown session is
    one line naming it. The demo's emails carry the open pixel and tracked links."""
    eml = next((state / "outbox").glob("*.eml")).read_bytes()
    letter = email.message_from_bytes(eml, policy=email.policy.default)
    session_id = str(letter["X-FSP-Session-Id"]).split(",")[0].strip()
    html = letter.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert re.search(r"/api/first-session/t/[\w-]{20,}\.gif", html)
    assert re.search(r"/api/first-session/r/[\w-]{20,}", html)
    shown = run_demo(state, "preview", session_id, "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    written = Path(json.loads(shown.stdout)["path"]).read_text()
    assert written.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "/api/first-session/t/" not in written  # a preview never tracks
    unknown = run_demo(state, "preview", "no-such-session")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "fsp preview: unknown session 'no-such-session': no stored prediction (score it first)"
    ]
