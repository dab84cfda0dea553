"""Security of what reaches fsp.first_session_predictions: the COPY path writes exactly
the values it is given (no field or row of a caller's choosing), and the API stores a
prediction only for a real scheduled first session of the platform, never over an
existing one. Against a real PostgreSQL; nothing is mocked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import pytest

from training.db import connect, ensure_platform_schema, upgrade
from training.predictions import STORED_COLUMNS, upsert_predictions

pytestmark = pytest.mark.services

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NASTY = "tab\there, new\nline, cr\rret, back\\slash \\N \\. 'single' \"double\" é 日本 🙂"
"""Every character that COPY's text format or SQL gives a meaning to, and non-ASCII."""


@pytest.fixture
def db(empty_db: str) -> str:
    """A fresh database with the platform tables and the fsp schema."""
    with connect(empty_db) as conn:
        ensure_platform_schema(conn)
        upgrade(conn)
    return empty_db


def _rows(n: int, text: str) -> pd.DataFrame:
    """`n` prediction rows whose every stored text column carries `text`."""
    records = []
    for i in range(n):
        factors = [{"feature": f"{text} {i}", "value": text, "contribution": 0.5}]
        records.append(
            {
                "session_id": f"{text} session {i}",
                "tutor_id": f"{text} tutor {i}",
                "student_id": f"{text} student {i}",
                "scheduled_start": NOW + timedelta(hours=i + 1),
                "subject": f"{text} subject {i}",
                "prediction_date": NOW,
                "risk_probability": 0.5,
                "risk_score": 50,
                "risk_level": "HIGH",
                "risk_prediction": 1,
                "alert_threshold": 0.4,
                "model_version": f"{text} v{i}",
                "top_risk_factors": json.dumps(factors),
                "features": json.dumps({"subject": text, "n": i}),
            }
        )
    frame = pd.DataFrame(records)
    frame["scheduled_start"] = pd.to_datetime(frame["scheduled_start"], utc=True)
    frame["prediction_date"] = pd.to_datetime(frame["prediction_date"], utc=True)
    return frame[list(STORED_COLUMNS)]


TEXT_COLUMNS = ("session_id", "tutor_id", "student_id", "subject", "model_version")


def test_copy_round_trips_every_text_column_one_row_per_input(db: str) -> None:
    rows = _rows(3, NASTY)
    # A session_id shaped like a whole extra COPY row (the injection of the old writer).
    injected = "evil\tT9\tS9\t2026-11-02 10:00:00+00\tmath\n" + "\t".join(["x"] * 14)
    rows.loc[len(rows)] = rows.iloc[0].copy()
    rows.loc[len(rows) - 1, "session_id"] = injected
    with connect(db) as conn:
        assert upsert_predictions(conn, rows) == len(rows)
        stored = conn.execute(
            "SELECT session_id, tutor_id, student_id, subject, model_version,"
            " top_risk_factors, features, scheduled_start"
            " FROM fsp.first_session_predictions ORDER BY scheduled_start, session_id"
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM fsp.first_session_predictions").fetchone() == (
            len(rows),
        )
    expected = rows.sort_values(["scheduled_start", "session_id"]).to_dict("records")
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected, strict=True):
        for column, value in zip(TEXT_COLUMNS, got[:5], strict=True):
            assert value == want[column], column
        assert got[5] == json.loads(want["top_risk_factors"])
        assert got[6] == json.loads(want["features"])
        assert got[7] == want["scheduled_start"].to_pydatetime()
    assert {r[0] for r in stored} == set(rows["session_id"])


def test_a_session_id_shaped_like_copy_rows_is_one_session_id(db: str) -> None:
    """What the old hand-made COPY text turned into two rows, one of them the caller's."""
    identity = ["victim-tutor", "s", "2026-11-02 10:00:00+00", "math", "2026-11-01 12:00:00+00"]
    forged = "\t".join([*identity, "0.99", "99", "CRITICAL", "1", "0.1", "forged", "[]", "{}"])
    rows = _rows(1, "plain")
    rows["session_id"] = [f"forged-session\t{forged}\nreal-session"]
    with connect(db) as conn:
        upsert_predictions(conn, rows)
        stored = conn.execute(
            "SELECT session_id, tutor_id, risk_level FROM fsp.first_session_predictions"
        ).fetchall()
    assert stored == [(rows["session_id"][0], rows["tutor_id"][0], "HIGH")]


def test_copy_writes_null_for_missing_values(db: str) -> None:
    rows = _rows(1, "plain")
    rows["student_id"] = [None]
    rows["alert_threshold"] = [float("nan")]
    rows["features"] = [None]
    with connect(db) as conn:
        upsert_predictions(conn, rows)
        got = conn.execute(
            "SELECT student_id, alert_threshold, features FROM fsp.first_session_predictions"
        ).fetchone()
    assert got == (None, None, None)


def test_rescoring_with_nasty_text_updates_in_place(db: str) -> None:
    rows = _rows(2, NASTY)
    with connect(db) as conn:
        upsert_predictions(conn, rows)
        assert upsert_predictions(conn, rows) == 0  # same values: nothing changes
        rows["risk_probability"] = 0.7
        assert upsert_predictions(conn, rows) == 2
        assert conn.execute(
            "SELECT count(*), min(risk_probability) FROM fsp.first_session_predictions"
        ).fetchone() == (2, 0.7)


def _count(conn: psycopg.Connection, sql: str, params=None) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0
