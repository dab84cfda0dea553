"""What outcomes say about the alerts: the poor-session rate of alerted vs holdout
high-risk sessions (an A/B comparison: does an email help?), shared by the monitor flow and the API."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

import psycopg

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
