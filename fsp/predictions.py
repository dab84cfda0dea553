"""Stored predictions (fsp.first_session_predictions): the upcoming sessions to score,
the idempotent bulk upsert of the scoring flow, and the COPY staging it shares with
the API's insert-only storage (service/store.py).

An upsert never touches the alert or outcome columns, so re-scoring a session
that was already alerted can never cause a second email; a re-run with the same
values changes nothing at all (not even updated_at)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pandas as pd
import psycopg

from fsp.features import TutorHistory, build_model_input, read_frame

UPCOMING_FIRST_SESSIONS = """
SELECT s.session_id, s.tutor_id, s.student_id, s.subject, s.scheduled_start,
       st.timezone, st.birth_date
FROM platform.sessions s JOIN platform.students st USING (student_id)
WHERE s.is_first_session AND s.status = 'scheduled'
  AND s.scheduled_start > %(now)s AND s.scheduled_start <= %(until)s
  AND s.created_at <= %(now)s
ORDER BY s.scheduled_start, s.session_id
"""

STORED_COLUMNS = (
    "session_id",
    "tutor_id",
    "student_id",
    "scheduled_start",
    "subject",
    "prediction_date",
    "risk_probability",
    "risk_score",
    "risk_level",
    "risk_prediction",
    "alert_threshold",
    "model_version",
    "top_risk_factors",
    "features",
)
_COMPARED = (
    "risk_probability",
    "risk_level",
    "risk_prediction",
    "model_version",
    "top_risk_factors",
)


def upcoming_sessions(conn: psycopg.Connection, now: datetime, hours: float) -> pd.DataFrame:
    """Scheduled first sessions starting in (now, now + hours], booked by `now`."""
    return read_frame(
        conn, UPCOMING_FIRST_SESSIONS, {"now": now, "until": now + timedelta(hours=hours)}
    )


def model_input_as_of(history: TutorHistory, sessions: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Model input for upcoming sessions, all as of `now` (the same feature code as training)."""
    return build_model_input(history, sessions, [now] * len(sessions))


def _compact_json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def prediction_rows(
    sessions: pd.DataFrame, X: pd.DataFrame, scored: pd.DataFrame, now: datetime, threshold: float
) -> pd.DataFrame:
    """The rows to store: session identity + scores + reasons + the features used."""
    rows = sessions.reset_index(drop=True)[
        ["session_id", "tutor_id", "student_id", "scheduled_start", "subject"]
    ].copy()
    rows["prediction_date"] = now
    for column in (
        "risk_probability",
        "risk_score",
        "risk_level",
        "risk_prediction",
        "model_version",
    ):
        rows[column] = scored[column].to_numpy()
    rows["alert_threshold"] = threshold
    rows["top_risk_factors"] = [_compact_json(f) for f in scored["top_risk_factors"]]
    features = X.to_json(orient="records", lines=True, double_precision=10)
    rows["features"] = features.splitlines() if len(X) else []
    return rows[list(STORED_COLUMNS)]


def _python_values(values: pd.Series) -> list:
    """A column as plain Python values for psycopg: None for NULL/NaN/NaT, datetimes as
    datetime, numpy scalars as int/float/str."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return [None if v is pd.NaT else v.to_pydatetime() for v in values]
    return [None if _is_null(v) else v for v in values.tolist()]


def _is_null(value) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and value != value)


def copy_rows(conn: psycopg.Connection, table: str, rows: pd.DataFrame) -> None:
    """COPY the STORED_COLUMNS of `rows` into `table` (a temp table of the caller).

    Each row goes through psycopg's `write_row`, which adapts and escapes every value
    itself: a tab, newline or backslash in any text (a session_id sent to the API)
    stays inside its own field and can never start another field or row."""
    columns = ", ".join(STORED_COLUMNS)
    values = [_python_values(rows[name]) for name in STORED_COLUMNS]
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
        for row in zip(*values, strict=True):
            cp.write_row(row)


def stage_incoming(conn: psycopg.Connection, rows: pd.DataFrame) -> None:
    """A temp table `incoming_predictions` holding `rows` (the caller, inside a
    transaction, moves what it keeps into fsp.first_session_predictions and drops it)."""
    conn.execute(
        "CREATE TEMP TABLE incoming_predictions (LIKE fsp.first_session_predictions"
        " INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    copy_rows(conn, "incoming_predictions", rows)


def upsert_predictions(conn: psycopg.Connection, rows: pd.DataFrame) -> int:
    """COPY into a temp table, then insert-or-update by session_id; returns rows changed."""
    if rows.empty:
        return 0
    columns = ", ".join(STORED_COLUMNS)
    changed_if = " OR ".join(f"p.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in _COMPARED)
    with conn.transaction():
        stage_incoming(conn, rows)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in STORED_COLUMNS if c != "session_id")
        result = conn.execute(
            f"INSERT INTO fsp.first_session_predictions AS p ({columns})"  # noqa: S608  (SQL text from our own constants; values bound as parameters)
            f" SELECT {columns} FROM incoming_predictions"
            f" ON CONFLICT (session_id) DO UPDATE SET {updates}, updated_at = now()"
            f" WHERE {changed_if}"
        )
        conn.execute("DROP TABLE incoming_predictions")
        return result.rowcount
