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

from alerting import queue
from alerting.delivery import OutboxMailer
from flows.alerts import render_batch, run_alerts
from fsp.db import connect, ensure_platform_schema, upgrade
from fsp.predictions import STORED_COLUMNS, upsert_predictions
from fsp.settings import get_settings
from service.store import store_predictions

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


# -- What the API may write, and what the alerts flow acts on ---------------------------
WALL = NOW + timedelta(minutes=5)
SESSIONS = {
    # session_id: (tutor, student, subject, hours after NOW, status, first session)
    "F1": ("T1", "S1", "algebra", 24, "scheduled", True),
    "F2": ("T2", "S2", "physics", 48, "scheduled", True),
    "F3": ("T1", "S2", "chemistry", 30, "scheduled", True),
    "CANCELLED": ("T1", "S2", "algebra", 72, "cancelled", True),
    "NOT-FIRST": ("T1", "S1", "algebra", 96, "scheduled", False),
}


@pytest.fixture
def platform(db: str, tmp_path, monkeypatch) -> str:
    """Two tutors, two students and their booked sessions; settings pointed at the
    database (no holdout, emails to an outbox folder)."""
    from tests.conftest import configure_env

    configure_env(monkeypatch, db, tmp_path / "state")
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0")
    monkeypatch.delenv("SMTP_HOST", raising=False)
    get_settings.cache_clear()
    seed_platform(db)
    yield db
    get_settings.cache_clear()


def seed_platform(db: str) -> None:
    """Tutors T1 (Ann) and T2 (Bob), students S1 and S2, and SESSIONS."""
    with connect(db) as conn, conn.transaction():
        for tutor, name in (("T1", "Ann"), ("T2", "Bob")):
            conn.execute(
                "INSERT INTO platform.tutors VALUES (%s, %s, %s, %s)",
                (tutor, name, f"{name.lower()}@tutors.example", NOW - timedelta(days=400)),
            )
        for student in ("S1", "S2"):
            conn.execute(
                "INSERT INTO platform.students VALUES (%s, %s, '2012-05-01', 'America/New_York')",
                (student, f"student {student}"),
            )
        for sid, (tutor, student, subject, hours, status, first) in SESSIONS.items():
            conn.execute(
                "INSERT INTO platform.sessions VALUES (%s, %s, %s, %s, %s, 60, %s, %s, %s)",
                (
                    sid,
                    tutor,
                    student,
                    subject,
                    NOW + timedelta(hours=hours),
                    status,
                    first,
                    NOW - timedelta(days=1),
                ),
            )


def _request(session_id: str, **change) -> dict:
    """An API request for a platform session (its own identity unless changed)."""
    tutor, student, subject, hours, _, _ = SESSIONS.get(
        session_id, ("T1", "S1", "algebra", 24, "scheduled", True)
    )
    request = {
        "session_id": session_id,
        "tutor_id": tutor,
        "student_id": student,
        "subject": subject,
        "scheduled_start": NOW + timedelta(hours=hours),
    }
    request.update(change)
    return request


def api_store(conn: psycopg.Connection, *requests: dict, risk: float = 0.9) -> dict[str, str]:
    """What service.logic does with /predict requests that carry a session_id."""
    sessions = pd.DataFrame(list(requests))
    n = len(sessions)
    X = pd.DataFrame({"student_age": [14.0] * n, "subject": sessions["subject"]})
    scored = pd.DataFrame(
        {
            "risk_probability": [risk] * n,
            "risk_score": [round(risk * 100)] * n,
            "risk_level": ["CRITICAL" if risk >= 0.5 else "LOW"] * n,
            "risk_prediction": [int(risk >= 0.4)] * n,
            "model_version": ["api"] * n,
            "top_risk_factors": [[{"feature": "subject", "value": 1, "contribution": 0.3}]] * n,
        }
    )
    return store_predictions(conn, sessions, X, scored, NOW, 0.4)


def flow_store(conn: psycopg.Connection, *session_ids: str, risk: float = 0.9, **change) -> None:
    """Predictions as the scoring flow (or an older version) wrote them."""
    rows = _rows(len(session_ids), "x")
    for i, sid in enumerate(session_ids):
        for column, value in _request(sid).items():
            rows.loc[i, column] = value
        rows.loc[i, "model_version"] = "flow"
        rows.loc[i, "risk_probability"] = risk
        rows.loc[i, "features"] = json.dumps({"student_age": 14, "subject": "algebra"})
        rows.loc[i, "top_risk_factors"] = "[]"
    for column, value in change.items():
        rows[column] = value
    rows["scheduled_start"] = pd.to_datetime(rows["scheduled_start"], utc=True)
    upsert_predictions(conn, rows)


def _stored(conn: psycopg.Connection) -> dict[str, tuple]:
    return {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT session_id, tutor_id, student_id, risk_probability, model_version,"
            " updated_at FROM fsp.first_session_predictions"
        ).fetchall()
    }


def test_api_stores_only_a_scheduled_first_session_of_the_same_tutor(platform: str) -> None:
    with connect(platform) as conn:
        refused = [
            _request("MADE-UP"),  # not on the platform
            _request("F1", tutor_id="T2"),  # another tutor's session
            _request("F1", subject="physics"),
            _request("F1", scheduled_start=NOW + timedelta(hours=25)),
            _request("F1", student_id="S2"),
            _request("CANCELLED"),
            _request("NOT-FIRST"),
            _request("tab\tnew\nline"),
        ]
        for request in refused:
            assert api_store(conn, request) == {}, request
        assert _stored(conn) == {}

        ids = api_store(conn, _request("F1"), _request("F3", student_id=None), _request("NOPE"))
        assert set(ids) == {"F1", "F3"}
        stored = _stored(conn)
        assert set(stored) == {"F1", "F3"}
        assert stored["F3"][:2] == ("T1", "S2")  # the platform's student, not a NULL
        got = conn.execute(
            "SELECT prediction_id::text FROM fsp.first_session_predictions WHERE session_id = 'F1'"
        ).fetchone()
        assert got == (ids["F1"],)


def test_api_never_overwrites_an_existing_prediction(platform: str) -> None:
    with connect(platform) as conn:
        flow_store(conn, "F2", risk=0.1)
        before = _stored(conn)
        assert before["F2"][:4] == ("T2", "S2", 0.1, "flow")
        # Another tutor naming F2, and F2's own tutor: neither replaces the flow's row.
        assert api_store(conn, _request("F2", tutor_id="T1"), risk=0.99) == {}
        assert api_store(conn, _request("F2"), risk=0.99) == {}
        # An earlier API prediction is not replaced either.
        first = api_store(conn, _request("F1"), risk=0.2)
        assert set(first) == {"F1"}
        assert api_store(conn, _request("F1"), risk=0.99) == {}
        after = _stored(conn)
    assert after["F2"] == before["F2"]
    assert after["F1"][2] == 0.2


def _outbox_ids(folder) -> list[str]:
    from email import message_from_bytes
    from email.policy import default

    return sorted(
        str(message_from_bytes(f.read_bytes(), policy=default)["X-FSP-Session-Id"])
        for f in folder.glob("*.eml")
    )


def test_alerts_email_only_sessions_the_platform_holds(platform: str, tmp_path) -> None:
    outbox = tmp_path / "outbox"
    with connect(platform, autocommit=True) as conn:
        assert api_store(conn, _request("MADE-UP")) == {}  # the API stores nothing
        # Rows an older version let in: a made-up session, another tutor's session,
        # a cancelled and a repeat session, beside a real one.
        flow_store(conn, "GHOST", "CANCELLED", "NOT-FIRST", "F1")
        flow_store(conn, "F2", tutor_id="T1")  # F2 is T2's on the platform
        summary = run_alerts(conn, OutboxMailer(outbox), get_settings(), NOW, WALL)
        assert summary["sent"] == 1 and summary["enqueued"] == 1
        assert summary["skipped_not_on_platform"] == 3  # GHOST, NOT-FIRST, F2 as T1's
        assert summary["skipped_not_scheduled"] == 1  # CANCELLED
        assert _outbox_ids(outbox) == ["F1"]
        again = run_alerts(conn, OutboxMailer(outbox), get_settings(), NOW, WALL)
        assert again["sent"] == 0 and _outbox_ids(outbox) == ["F1"]


def test_a_session_cancelled_after_enqueueing_is_not_emailed(platform: str, tmp_path) -> None:
    from flows.alerts import deliver

    mailer = OutboxMailer(tmp_path / "outbox")
    settings = get_settings()
    with connect(platform, autocommit=True) as conn:
        flow_store(conn, "F1", "F3")
        queue.enqueue(conn, NOW, WALL, 0.0, settings.smtp_from_email)
        batch = render_batch(queue.due_alerts(conn, WALL), NOW, settings.smtp_from_email)
        assert sorted(batch.messages) == ["F1", "F3"]
        # Between rendering and sending: the platform cancels F1, F3 starts.
        conn.execute("UPDATE platform.sessions SET status = 'cancelled' WHERE session_id = 'F1'")
        assert queue.claim_next(conn, WALL, ["F3"], now=NOW + timedelta(hours=31)) is None
        assert deliver(conn, mailer, batch, settings, WALL)["sent"] == 1
        assert _outbox_ids(tmp_path / "outbox") == ["F3"]
        assert queue.cancel_stale(conn, NOW) == 1
        reason = conn.execute(
            "SELECT status, last_error FROM fsp.alert_deliveries WHERE session_id = 'F1'"
        ).fetchone()
    assert reason == ("cancelled", "session no longer scheduled on the platform: cancelled")


# -- Rows out of range --------------------------------------------------------------------
def test_alerts_skip_out_of_range_starts_and_send_the_rest(platform: str, tmp_path) -> None:
    outbox = tmp_path / "outbox"
    settings = get_settings()
    with connect(platform, autocommit=True) as conn:
        flow_store(conn, "F1", "F3", "FAR", "FARTHER")
        for sid, start in (("FAR", "2300-01-01 10:00+00"), ("FARTHER", "10000-01-01 10:00+00")):
            conn.execute(
                "UPDATE fsp.first_session_predictions SET scheduled_start = %s"
                " WHERE session_id = %s",
                (start, sid),
            )
        # F3 was taken on by an older version before its start went out of range.
        queue.enqueue(conn, NOW, WALL, 0.0, settings.smtp_from_email)
        conn.execute("DELETE FROM fsp.alert_deliveries WHERE session_id <> 'F3'")
        conn.execute(
            "UPDATE fsp.first_session_predictions SET scheduled_start = '12000-06-01 00:00+00'"
            " WHERE session_id = 'F3'"
        )
        summary = run_alerts(conn, OutboxMailer(outbox), settings, NOW, WALL)
        assert summary["skipped_start_out_of_range"] == 2  # FAR, FARTHER
        assert summary["cancelled"] == 1  # F3, pending with an impossible start
        assert summary["sent"] == 1 and _outbox_ids(outbox) == ["F1"]
        f3 = conn.execute(
            "SELECT status, last_error FROM fsp.alert_deliveries WHERE session_id = 'F3'"
        ).fetchone()
    assert f3 == ("cancelled", "scheduled_start out of range (not a real session start)")


def test_alerts_flow_command_path_survives_out_of_range_rows(platform: str) -> None:
    from flows.alerts import alerts_flow

    with connect(platform, autocommit=True) as conn:
        flow_store(conn, "F1", "FARTHER")
        conn.execute(
            "UPDATE fsp.first_session_predictions SET scheduled_start = '10000-01-01 10:00+00'"
            " WHERE session_id = 'FARTHER'"
        )
    summary = alerts_flow(now=NOW.isoformat())
    assert summary["sent"] == 1 and summary["skipped_start_out_of_range"] == 1


def test_a_start_outside_the_representable_range_does_not_break_the_history(platform) -> None:
    """A year-10000 row (an older version's) is left out of the tutor's history rather
    than failing every call for that tutor."""
    from service.store import tutor_predictions

    with psycopg.connect(platform) as conn:
        tutor = "T1"
        conn.execute(
            "INSERT INTO fsp.first_session_predictions (session_id, tutor_id, student_id,"
            " scheduled_start, subject, prediction_date, risk_probability, risk_score,"
            " risk_level, risk_prediction, model_version, top_risk_factors)"
            " VALUES ('far-future', %s, 's', '9999-12-31T23:59:59-12:00', 'x', %s, 0.9, 90,"
            " 'CRITICAL', 1, '1', '[]')",
            (tutor, NOW),
        )
        upsert_predictions(conn, _rows(1, "ok").assign(tutor_id=tutor, prediction_date=NOW))
        rows = tutor_predictions(conn, tutor, NOW + timedelta(days=1), 30)
    assert rows and all(r["session_id"] != "far-future" for r in rows)


def test_the_monitor_window_skips_and_counts_an_out_of_range_start(platform) -> None:
    """Any stored year outside pandas' range used to stop `fsp monitor`; now the row is
    left out and counted, and the rest of the window is read."""
    from monitoring.window import read_window

    with psycopg.connect(platform) as conn:
        upsert_predictions(conn, _rows(2, "ok").assign(prediction_date=NOW))
        conn.execute(
            "UPDATE fsp.first_session_predictions SET scheduled_start = '9999-12-31T23:00:00Z'"
            " WHERE session_id = (SELECT min(session_id) FROM fsp.first_session_predictions)"
        )
        window = read_window(conn, NOW + timedelta(days=1), 28)
    assert window.skipped_start_out_of_range == 1 and len(window.scored) == 1
