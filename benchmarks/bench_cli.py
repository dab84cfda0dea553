"""Benchmark: how fast the reading commands answer (`fsp --help`, `fsp --version`,
`fsp models` against a store holding a trained champion), each a real subprocess as a
user runs it; they must not start Prefect or import the flows.

Run: `.venv/bin/python benchmarks/bench_cli.py [RUNS] [STATE_DIR]` (uses DATABASE_URL's
server when set, else the embedded PostgreSQL). Sets up a fresh database and MLflow store
in a temp folder (small demo history, one `fsp train`), or reads the store of an existing
state folder (e.g. one `fsp demo` filled), then prints the median of RUNS runs (5 by
default) per command. Asserts nothing."""

from __future__ import annotations

import os
import statistics
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
COMMANDS = (["--help"], ["--version"], ["models"], ["models", "--json"])
THROUGH_MLFLOW = "?timeout=20"
"""Appended to the store's SQLite URI, it makes `fsp models` read through MLflow's
client (fsp.registry_read leaves URIs with options to it; this option only sets
SQLite's lock wait): the side-by-side figure for the reader that skips MLflow's import."""


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


def _fsp(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one `fsp` run; a failure stops the benchmark with its stderr."""
    start = time.perf_counter()
    out = subprocess.run([FSP, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"fsp {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def _store_with_a_champion() -> dict[str, str]:
    """A fresh database with a small demo history and an MLflow store holding a champion."""
    state = Path(tempfile.mkdtemp(prefix="fsp-bench-cli-"))
    env = {
        **os.environ,
        "DATABASE_URL": _fresh_database(_server_url()),
        "FSP_STATE_DIR": str(state),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
    }
    _fsp(["db", "upgrade"], env)
    _fsp(["demo-data", "--tutors", "150", "--days", "120", "--now", NOW.isoformat()], env)
    _fsp(["train", "--as-of", NOW.isoformat()], env)
    return env


def _existing_store(state: Path) -> dict[str, str]:
    """The MLflow store a state folder already holds (no training)."""
    if not (state / "mlflow.db").is_file():
        raise SystemExit(f"{state} holds no mlflow.db")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "FSP_STATE_DIR": str(state)}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    env = _existing_store(Path(sys.argv[2])) if len(sys.argv) > 2 else _store_with_a_champion()
    rows = [(" ".join(args), args, env) for args in COMMANDS]
    state = Path(env["FSP_STATE_DIR"]).resolve()
    store = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state / 'mlflow.db'}"
    option = THROUGH_MLFLOW if "?" not in store else "&" + THROUGH_MLFLOW[1:]
    client_env = {**env, "MLFLOW_TRACKING_URI": store + option}
    rows.append(("models (MLflow client)", ["models"], client_env))
    for label, args, row_env in rows:
        seconds = [_fsp(args, row_env) for _ in range(runs)]
        print(
            f"fsp {label:<23} median {statistics.median(seconds):5.2f} s"
            f"  (min {min(seconds):.2f}, max {max(seconds):.2f}, {runs} runs)"
        )


if __name__ == "__main__":
    main()
