"""Scoring throughput: 100k upcoming first sessions featurised (as of now, from the
tutors' full history), scored with reasons and stored (COPY + idempotent upsert).

Target (issue 4): <= 10 s on this machine. Runs against a throwaway database on
DATABASE_URL's server, or on the embedded PostgreSQL when DATABASE_URL is unset.
The model is a calibrated logistic regression fitted here on the same data (the
champion's model family), so the benchmark needs no MLflow store.

    .venv/bin/python benchmarks/bench_scoring.py [--sessions 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows.score import read_upcoming
from fsp import demo_data
from fsp.db import connect, database_url, upgrade
from fsp.predictions import model_input_as_of, prediction_rows, upsert_predictions
from fsp.scoring import ScoringModel, score
from fsp.settings import get_settings
from training.dataset import build_training_set
from training.model import CANDIDATES, calibrated

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TUTORS = 5000
HISTORY_DAYS = 60
BOOKED_DAYS_AHEAD = 100
"""5000 tutors booking ~0.22 new students a day for 100 days: ~110k upcoming first
sessions, on top of 60 days of history (~70k first sessions, ~300k sessions)."""


def throwaway_database(server: str) -> str:
    name = f"fsp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    return make_conninfo("", **params)


def drop_database(server: str, url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def hours_for(conn: psycopg.Connection, sessions: int) -> float:
    """The lookahead (hours) that covers `sessions` upcoming first sessions."""
    row = conn.execute(
        "SELECT scheduled_start FROM platform.sessions WHERE is_first_session"
        " AND status = 'scheduled' AND scheduled_start > %s AND created_at <= %s"
        " ORDER BY scheduled_start OFFSET %s LIMIT 1",
        (NOW, NOW, sessions - 1),
    ).fetchone()
    if row is None:
        raise SystemExit(f"the generated data holds fewer than {sessions} upcoming sessions")
    return (row[0] - NOW).total_seconds() / 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    server = database_url(get_settings())
    url = throwaway_database(server)
    try:
        with connect(url) as conn:
            t = time.perf_counter()
            upgrade(conn)
            spec = demo_data.DemoSpec(
                TUTORS, HISTORY_DAYS, 11, NOW, lookahead_days=BOOKED_DAYS_AHEAD
            )
            demo_data.write(conn, demo_data.generate(spec))
            setup = time.perf_counter() - t
            ts = build_training_set(conn, NOW)
            model = ScoringModel(
                model=calibrated(CANDIDATES[0], 0).fit(ts.X, ts.y), version="bench", threshold=0.5
            )
            hours = hours_for(conn, args.sessions)
            conn.commit()
            print(f"setup (demo data, model): {setup:.1f} s; lookahead {hours:.0f} h")
            for attempt in ("first run", "rerun (no-op)"):
                timings = {}
                t0 = time.perf_counter()
                upcoming = read_upcoming(conn, NOW, hours)
                timings["read"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                X = model_input_as_of(upcoming.history, upcoming.sessions, NOW)  # type: ignore[arg-type]
                timings["featurise"] = time.perf_counter() - t1
                t2 = time.perf_counter()
                scored = score(model, X)
                rows = prediction_rows(upcoming.sessions, X, scored, NOW, model.threshold)
                timings["score"] = time.perf_counter() - t2
                t3 = time.perf_counter()
                changed = upsert_predictions(conn, rows)
                conn.commit()
                timings["store"] = time.perf_counter() - t3
                total = time.perf_counter() - t0
                n = len(rows)
                parts = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
                print(
                    f"{attempt}: {n} upcoming first sessions featurised, scored and stored"
                    f" in {total:.2f} s ({n / total:,.0f} sessions/s; {parts}; {changed} rows"
                    f" written)"
                )
    finally:
        drop_database(server, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
