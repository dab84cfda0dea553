"""What the API reads from and writes to the fsp tables. Connections are passed in."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import psycopg

from fsp.constants import EARLIEST_START, LATEST_START, RISK_BANDS
from fsp.predictions import STORED_COLUMNS, prediction_rows, stage_incoming

LEVELS = tuple(name for name, _ in RISK_BANDS)
HIGH_RISK_LEVELS = LEVELS[LEVELS.index("HIGH") :]
"""Bands counted as high risk in the summary (HIGH and CRITICAL)."""


_KEPT = ", ".join(f"s.{c}" if c == "student_id" else f"i.{c}" for c in STORED_COLUMNS)
STORE_FOR_SCHEDULED_FIRST_SESSIONS = f"""
INSERT INTO fsp.first_session_predictions ({", ".join(STORED_COLUMNS)})
SELECT {_KEPT}
FROM incoming_predictions i
JOIN platform.sessions s ON s.session_id = i.session_id
WHERE s.is_first_session AND s.status = 'scheduled'
  AND s.tutor_id = i.tutor_id AND s.subject = i.subject
  AND s.scheduled_start = i.scheduled_start
  AND (i.student_id IS NULL OR i.student_id = s.student_id)
ON CONFLICT (session_id) DO NOTHING
RETURNING session_id, prediction_id::text
"""  # noqa: S608  (SQL text from our own constants; values bound as parameters)
"""What the API may write: a prediction of a session the platform
holds as a scheduled first session of the same tutor, subject, start (and student, when
the request names one); never over an existing prediction (the scoring flow's or an
earlier request's). The student stored is the platform's."""


def store_predictions(
    conn: psycopg.Connection,
    sessions: pd.DataFrame,
    X: pd.DataFrame,
    scored: pd.DataFrame,
    now: datetime,
    threshold: float,
) -> dict[str, str]:
    """Store the predictions of sessions that carry a session_id, where the contract
    allows it (STORE_FOR_SCHEDULED_FIRST_SESSIONS); returns {session_id: prediction_id}
    of the rows this call stored: a session_id missing from it was not stored (unknown
    to the platform, not a scheduled first session of that tutor, or already predicted).
    When several rows share a session_id (merged batches) the last one is the candidate."""
    rows = prediction_rows(sessions, X, scored, now, threshold)
    rows = rows.drop_duplicates("session_id", keep="last")
    if rows.empty:
        return {}
    with conn.transaction():
        stage_incoming(conn, rows)
        stored = conn.execute(STORE_FOR_SCHEDULED_FIRST_SESSIONS).fetchall()
        conn.execute("DROP TABLE incoming_predictions")
    return dict(stored)  # type: ignore[arg-type]


def tutor_exists(conn: psycopg.Connection, tutor_id: str) -> bool:
    """True when the platform knows the tutor (the snapshot may be minutes old)."""
    row = conn.execute("SELECT 1 FROM platform.tutors WHERE tutor_id = %s", (tutor_id,))
    return row.fetchone() is not None


def _records(cur: psycopg.Cursor) -> list[dict[str, Any]]:
    columns = [d.name for d in cur.description or []]
    return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


REPRESENTABLE_START = (
    f"scheduled_start >= '{EARLIEST_START.isoformat()}'"
    f" AND scheduled_start < '{LATEST_START.isoformat()}'"
)
"""A start Python and pandas can hold (fsp.constants). A row outside it is left
out of the read endpoints rather than failing every call for that tutor."""


def tutor_predictions(
    conn: psycopg.Connection, tutor_id: str, now: datetime, days: int
) -> list[dict[str, Any]]:
    """The tutor's stored first-session predictions made in (now - days, now], newest first."""
    cur = conn.execute(
        "SELECT prediction_id::text, session_id, student_id, scheduled_start, subject,"  # noqa: S608  (SQL text from our own constants; values bound as parameters)
        " prediction_date, risk_probability, risk_score, risk_level, model_version,"
        " top_risk_factors, alert_sent, alert_sent_at, actual_rating, actual_poor_session,"
        " prediction_correct"
        " FROM fsp.first_session_predictions"
        " WHERE tutor_id = %s AND prediction_date > %s AND prediction_date <= %s"
        f" AND {REPRESENTABLE_START}"
        " ORDER BY prediction_date DESC, session_id",
        (tutor_id, now - timedelta(days=days), now),
    )
    return _records(cur)


def performance_logs(conn: psycopg.Connection, now: datetime, days: int) -> list[dict[str, Any]]:
    """Evaluations logged in (now - days, now], newest first."""
    cur = conn.execute(
        "SELECT model_type, model_version, evaluation_date, accuracy, precision, recall,"
        " f1_score, auc_roc, sample_size, time_window_days, metrics_detail"
        " FROM fsp.model_performance_logs"
        " WHERE evaluation_date > %s AND evaluation_date <= %s"
        " ORDER BY evaluation_date DESC, model_version",
        (now - timedelta(days=days), now),
    )
    return _records(cur)


def prediction_summary(conn: psycopg.Connection, now: datetime, days: int) -> dict[str, Any]:
    """Totals over predictions made in (now - days, now]: volume, high-risk and alert
    rates, and accuracy where outcomes have been reconciled."""
    window = {"since": now - timedelta(days=days), "now": now}
    rows = conn.execute(
        "SELECT risk_level, count(*), count(*) FILTER (WHERE alert_sent),"
        " count(prediction_correct), sum(prediction_correct::int), sum(risk_probability)"
        " FROM fsp.first_session_predictions"
        " WHERE prediction_date > %(since)s AND prediction_date <= %(now)s GROUP BY 1",
        window,
    ).fetchall()
    by_level = dict.fromkeys(LEVELS, 0)
    total = alerts = judged = correct = 0
    risk_sum = 0.0
    for level, n, n_alerts, n_judged, n_correct, p_sum in rows:
        by_level[level] = n
        total, alerts, judged = total + n, alerts + n_alerts, judged + n_judged
        correct += n_correct or 0
        risk_sum += p_sum or 0.0
    high = sum(by_level[level] for level in HIGH_RISK_LEVELS)
    return {
        "total_predictions": total,
        "high_risk_predictions": high,
        "high_risk_rate": high / total if total else None,
        "alerts_sent": alerts,
        "alert_rate": alerts / total if total else None,
        "predictions_with_outcome": judged,
        "accuracy": correct / judged if judged else None,
        "mean_risk_probability": risk_sum / total if total else None,
        "by_risk_level": by_level,
    }


def as_json(value: Any) -> Any:
    """Values of a database row in JSON-ready form (jsonb arrives as Python already)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:  # text that only looks like JSON: it is answered as the text
            return value
    return value
