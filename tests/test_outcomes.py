"""Alerted vs holdout poor-session rates with a 95 % interval (pure arithmetic on a
real database's rows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fsp.db import upgrade
from fsp.outcomes import holdout_comparison

pytestmark = pytest.mark.services
T = datetime(2026, 11, 1, tzinfo=UTC)


def _insert(conn, session_id: str, status: str, poor: bool) -> None:
    conn.execute(
        "INSERT INTO fsp.first_session_predictions (session_id, tutor_id, scheduled_start,"
        " prediction_date, risk_probability, risk_score, risk_level, risk_prediction,"
        " model_version, actual_poor_session) VALUES (%s, 'T1', %s, %s, 0.7, 70, 'CRITICAL', 1,"
        " '1', %s)",
        (session_id, T, T - timedelta(hours=3), poor),
    )
    conn.execute(
        "INSERT INTO fsp.alert_deliveries (session_id, tutor_id, message_id, status,"
        " risk_probability, alert_threshold, model_version, enqueued_for)"
        " VALUES (%s, 'T1', %s, %s, 0.7, 0.5, '1', %s)",
        (session_id, f"<{session_id}@test>", status, T - timedelta(hours=3)),
    )


def test_rates_and_interval_of_alerted_versus_holdout(empty_db):
    with psycopg.connect(empty_db) as conn:
        upgrade(conn)
        for i in range(40):
            _insert(conn, f"A{i}", "sent", poor=i < 8)  # 20 % poor after an email
        for i in range(20):
            _insert(conn, f"H{i}", "holdout", poor=i < 8)  # 40 % poor without one
        result = holdout_comparison(conn, T - timedelta(days=1), T + timedelta(days=1))
    assert result["alerted"] == {"sessions": 40, "poor": 8, "poor_rate": 0.2}
    assert result["holdout"] == {"sessions": 20, "poor": 8, "poor_rate": 0.4}
    assert result["difference"] == -0.2
    low, high = result["ci95"]
    assert low < -0.2 < high and high - low == pytest.approx(2 * 1.959964 * 0.1265, abs=2e-3)
