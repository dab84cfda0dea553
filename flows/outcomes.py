"""Outcomes: joining predictions with the ratings that arrived (reconciliation), and
what the outcomes say about the alerts (alerted vs holdout poor-session rates)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from training.constants import POOR_RATING_BELOW
from training.outcomes import holdout_comparison

__all__ = ["holdout_comparison", "reconcile"]

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
