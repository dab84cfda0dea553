"""Outcomes: joining predictions with the ratings that arrived (reconciliation), and
what the outcomes say about the alerts: the poor-session rate of alerted vs holdout
high-risk sessions (an A/B comparison: does an email help?), shared by the flows and
the API."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

import psycopg

from fsp.constants import POOR_RATING_BELOW

Z_95: Final = 1.959964


def _rate(poor: int, n: int) -> dict[str, Any]:
    return {"sessions": n, "poor": poor, "poor_rate": round(poor / n, 4) if n else None}


def holdout_comparison(
    conn: psycopg.Connection, since: datetime, until: datetime
) -> dict[str, Any]:
    """Poor-session rate of alerted vs holdout high-risk sessions that started in
    (since, until] and were rated, with a 95 % (Wald) interval for the difference
    alerted - holdout (negative: alerts help)."""
    rows = conn.execute(
        "SELECT d.status, count(*), count(*) FILTER (WHERE p.actual_poor_session)"
        " FROM fsp.alert_deliveries d JOIN fsp.first_session_predictions p USING (session_id)"
        " WHERE d.status IN ('sent', 'holdout') AND p.actual_poor_session IS NOT NULL"
        " AND p.scheduled_start > %s AND p.scheduled_start <= %s GROUP BY d.status",
        (since, until),
    ).fetchall()
    found = {status: (int(n), int(poor)) for status, n, poor in rows}
    n_a, poor_a = found.get("sent", (0, 0))
    n_h, poor_h = found.get("holdout", (0, 0))
    result: dict[str, Any] = {
        "alerted": _rate(poor_a, n_a),
        "holdout": _rate(poor_h, n_h),
        "difference": None,
        "ci95": None,
    }
    if n_a and n_h:
        p_a, p_h = poor_a / n_a, poor_h / n_h
        se = math.sqrt(p_a * (1 - p_a) / n_a + p_h * (1 - p_h) / n_h)
        diff = p_a - p_h
        result["difference"] = round(diff, 4)
        result["ci95"] = [round(diff - Z_95 * se, 4), round(diff + Z_95 * se, 4)]
    return result


RECONCILE = """
UPDATE fsp.first_session_predictions p
SET actual_rating = f.rating,
    actual_poor_session = f.rating < %(poor_below)s,
    prediction_correct = ((f.rating < %(poor_below)s) = (p.risk_prediction = 1)),
    updated_at = now()
FROM platform.feedback f
WHERE f.session_id = p.session_id AND f.submitted_at <= %(now)s
  AND (p.actual_rating IS DISTINCT FROM f.rating
       OR p.actual_poor_session IS DISTINCT FROM (f.rating < %(poor_below)s)
       OR p.prediction_correct IS DISTINCT FROM ((f.rating < %(poor_below)s) = (p.risk_prediction = 1)))
"""


def reconcile(conn: psycopg.Connection, now: datetime) -> dict[str, Any]:
    """Write actual_rating, actual_poor_session and prediction_correct for every
    prediction whose rating was submitted by `now`. Idempotent: a rerun changes no row."""
    with conn.transaction():
        changed = conn.execute(RECONCILE, {"now": now, "poor_below": POOR_RATING_BELOW}).rowcount
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE actual_rating IS NOT NULL),"
            " count(*) FILTER (WHERE actual_poor_session),"
            " count(*) FILTER (WHERE prediction_correct), count(*)"
            " FROM fsp.first_session_predictions"
        ).fetchone()
    reconciled, poor, correct, total = (int(v or 0) for v in row or (0, 0, 0, 0))
    return {
        "now": now.isoformat(),
        "rows_changed": changed,
        "reconciled": reconciled,
        "awaiting_rating": total - reconciled,
        "poor_sessions": poor,
        "prediction_accuracy": round(correct / reconciled, 4) if reconciled else None,
    }
