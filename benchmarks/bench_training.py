"""Benchmark (issue: foundation): demo data, training-set build and the whole `fsp train`
on `--tutors 1000 --days 180`, in a fresh database and a fresh MLflow store.

Run: `.venv/bin/python benchmarks/bench_training.py` (uses DATABASE_URL's server when
set, else the embedded PostgreSQL). Prints the figures; asserts nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
FSP = str(Path(sys.executable).with_name("fsp"))
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _server_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    sys.path.insert(0, str(ROOT))
    from fsp.db import _embedded_url

    return _embedded_url(ROOT / ".fsp" / "bench-pg")


def _fresh_database(server: str) -> str:
    name = f"fsp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo("", **(conninfo_to_dict(server) | {"dbname": name}))


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([FSP, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"fsp {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return time.perf_counter() - start, out.stdout


def main() -> None:
    server = _server_url()
    url = _fresh_database(server)
    state = Path(tempfile.mkdtemp(prefix="fsp-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "FSP_STATE_DIR": str(state),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
    }
    _timed(["db", "upgrade"], env)
    demo_s, demo_out = _timed(
        ["demo-data", "--json", "--tutors", "1000", "--days", "180", "--now", NOW.isoformat()], env
    )
    sys.path.insert(0, str(ROOT))
    from training.dataset import build_training_set

    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        ts = build_training_set(conn, NOW)
        build_s = time.perf_counter() - start
    train_s, train_out = _timed(["train", "--json", "--as-of", NOW.isoformat()], env)
    summary = json.loads(train_out)
    sessions = json.loads(demo_out)["sessions"]
    print(
        f"demo-data --tutors 1000 --days 180: {demo_s:6.1f} s  ({sessions} sessions, CLI wall time)"
    )
    print(
        f"build training set:                 {build_s:6.1f} s  ({len(ts.y)} labelled first sessions)"
    )
    print(f"fsp train (whole CLI, wall time):   {train_s:6.1f} s")
    print(f"candidates (holdout AUC):           {summary['candidates']}")
    print(f"inside the flow (seconds):          {summary['seconds']}")
    print(
        f"chosen: {summary['model']} v{summary['version']}  holdout AUC {summary['holdout_auc']:.4f}"
        f"  precision {summary['precision']:.3f}  recall {summary['recall']:.3f}"
        f"  at threshold {summary['threshold']:.3f} ({summary['threshold_rule']})"
    )
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{conninfo_to_dict(url)["dbname"]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
