"""One email per tutor, exactly once, against real services and without a model:
PostgreSQL seeded with demo history, predictions stored from the real feature code
with hand-set risks, a real SMTP server (aiosmtpd), the outbox folder and real
Prefect flow runs. Also: the tutor's record against the feature code's counts,
open/click tracking, the tracking summary and the preview."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pandas as pd
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from alerting import queue, tracking
from alerting.delivery import OutboxMailer, SmtpMailer
from alerting.dispatch import run_alerts
from alerting.preview import UnknownSession, preview_html
from alerting.record import tutor_records
from flows.alerts import ARTIFACT_KEY, alerts_flow
from fsp.db import connect
from fsp.features import (
    K_FIRST_SUCCESS,
    MODEL_INPUT_COLUMNS,
    PRIOR_FIRST_SUCCESS,
    load_history,
)
from fsp.predictions import (
    model_input_as_of,
    prediction_rows,
    upcoming_sessions,
    upsert_predictions,
)
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW, configure_env, create_database, drop_database, seed_demo
from tests.flow_fixtures import one, running_smtp_server

pytestmark = pytest.mark.services

WALL = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
WEEK = 24 * 7
THRESHOLD = 0.5


def _scored(sessions: pd.DataFrame) -> pd.DataFrame:
    """Hand-set scores: every session high-risk, its top factor cycling through the
    model's inputs (so the emails' tips differ by session)."""
    n = len(sessions)
    factors = [
        [
            {"feature": MODEL_INPUT_COLUMNS[i % len(MODEL_INPUT_COLUMNS)], "contribution": 0.6},
            {"feature": "local_hour", "contribution": 0.2},
        ]
        for i in range(n)
    ]
    return pd.DataFrame(
        {
            "risk_probability": [0.9] * n,
            "risk_score": [90] * n,
            "risk_level": ["CRITICAL"] * n,
            "risk_prediction": [1] * n,
            "model_version": ["hand-set"] * n,
            "top_risk_factors": factors,
        }
    )


def store_predictions(url: str, now: datetime) -> int:
    """Predictions of every upcoming first session in the next week, features from
    the real feature code as of `now`."""
    with connect(url) as conn:
        sessions = upcoming_sessions(conn, now, WEEK)
        X = model_input_as_of(load_history(conn, now), sessions, now)
        rows = prediction_rows(sessions, X, _scored(sessions), now, THRESHOLD)
        return upsert_predictions(conn, rows)


@pytest.fixture(scope="module")
def seeded(server_url: str):
    """Demo history and stored predictions, copied per test (CREATE DATABASE ... TEMPLATE)."""
    url = create_database(server_url)
    seed_demo(url)
    assert store_predictions(url, DEMO_NOW) > 20
    yield url
    drop_database(server_url, url)


def clone_database(server: str, template_url: str) -> str:
    """A new database copied from `template_url` (cheaper than seeding again)."""
    template = conninfo_to_dict(template_url)["dbname"]
    params = conninfo_to_dict(server)
    params["dbname"] = f"fsp_test_{uuid.uuid4().hex[:10]}"
    with connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{params["dbname"]}" TEMPLATE "{template}"')
    return make_conninfo("", **params)


@pytest.fixture
def letters_db(seeded: str, server_url: str, tmp_path, monkeypatch):
    url = clone_database(server_url, seeded)
    configure_env(monkeypatch, url, tmp_path / "state")
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0")
    monkeypatch.delenv("SMTP_HOST", raising=False)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()
    drop_database(server_url, url)


@pytest.fixture
def smtp_server():
    yield from running_smtp_server()


def sessions_by_tutor(url: str, held_share: float = 0.0) -> dict[str, set[str]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT tutor_id, session_id FROM fsp.first_session_predictions"
            " WHERE scheduled_start > %s",
            (DEMO_NOW,),
        ).fetchall()
    found: dict[str, set[str]] = defaultdict(set)
    for tutor, session in rows:
        if not queue.in_holdout(session, held_share):
            found[tutor].add(session)
    return dict(found)


def ids_of(message) -> set[str]:
    return {sid.strip() for sid in str(message["X-FSP-Session-Id"]).split(",")}


def use_smtp(monkeypatch, port: int, track: bool = False) -> None:
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(port))
    monkeypatch.setenv("FSP_TRACK_OPENS", "true" if track else "false")
    monkeypatch.setenv("FSP_PUBLIC_BASE_URL", "https://fsp.example")
    get_settings.cache_clear()


def test_one_email_per_tutor_lists_all_their_sessions(letters_db, smtp_server, monkeypatch):
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0.3")
    use_smtp(monkeypatch, smtp_server.port)
    expected = {t: s for t, s in sessions_by_tutor(letters_db, 0.3).items() if s}

    summary = alerts_flow(now=DEMO_NOW.isoformat())

    messages = smtp_server.received.messages
    assert summary["emails_sent"] == len(messages) == len(expected)
    assert summary["sent"] == sum(len(s) for s in expected.values())
    assert sorted(map(frozenset, expected.values()), key=sorted) == sorted(
        (frozenset(ids_of(m)) for m in messages), key=sorted
    )
    several = [m for m in messages if len(ids_of(m)) >= 3]
    assert several, "the demo week has tutors with three or more first sessions"
    text = several[0].get_body(("plain",)).get_content()
    assert f"You have {len(ids_of(several[0]))} first sessions" in text
    assert text.count("YOUR TRACK RECORD SO FAR") == 1
    assert text.count("TIPS FOR THIS SESSION") == len(ids_of(several[0]))
    with connect(letters_db) as conn:
        held = one(conn, "SELECT count(*) FROM fsp.alert_deliveries WHERE status = 'holdout'")
        assert held == summary["holdout"] > 0  # the holdout stays per session
    again = alerts_flow(now=DEMO_NOW.isoformat())
    assert again["emails_sent"] == 0 and len(smtp_server.received.envelopes) == len(expected)
    assert "| Emails sent | 0 |" in _artifact_markdown()


def _artifact_markdown() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
        )
    assert found, "the alerts flow publishes its summary artifact"
    latest = max(found, key=lambda a: a.created)
    return str(latest.data)


class SimulatedCrash(BaseException):
    """The process dies right after handing over the first email."""


class CrashAfterFirstSend:
    def __init__(self, inner):
        self.inner = inner

    def send(self, message):
        self.inner.send(message)
        raise SimulatedCrash()

    def was_delivered(self, message_id):
        return self.inner.was_delivered(message_id)

    def describe(self):
        return self.inner.describe()


def test_crash_mid_letter_settles_every_session_of_it_once(letters_db, tmp_path):
    settings = get_settings()
    mailer = OutboxMailer(tmp_path / "outbox")
    expected = sessions_by_tutor(letters_db)
    with connect(letters_db, autocommit=True) as conn:
        with pytest.raises(SimulatedCrash):
            run_alerts(conn, CrashAfterFirstSend(mailer), settings, DEMO_NOW, WALL)
        in_flight = queue.status_counts(conn)["sending"]
        later = WALL + timedelta(seconds=settings.alert_send_lease_seconds + 1)
        summary = run_alerts(conn, mailer, settings, DEMO_NOW, later)
        assert summary["recovered_sent"] == in_flight
        assert queue.status_counts(conn) == {"sent": sum(len(s) for s in expected.values())}
        assert queue.letters_sent(conn) == len(expected)
    files = list((tmp_path / "outbox").glob("*.eml"))
    emailed = [ids_of(message_from_bytes(f.read_bytes(), policy=default_policy)) for f in files]
    assert sorted(map(sorted, emailed)) == sorted(map(sorted, expected.values()))


def test_concurrent_runs_never_send_a_session_twice(letters_db, smtp_server):
    settings = get_settings()
    smtp_server.handler.delay = 0.02
    total = sum(len(s) for s in sessions_by_tutor(letters_db).values())
    results, errors = [], []
    start = threading.Barrier(3)

    def one_run():
        try:
            with connect(letters_db, autocommit=True) as conn:
                start.wait()
                mailer = SmtpMailer("127.0.0.1", smtp_server.port)
                results.append(run_alerts(conn, mailer, settings, DEMO_NOW, WALL))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    emailed = [sid for m in smtp_server.received.messages for sid in ids_of(m)]
    assert len(emailed) == len(set(emailed)) == total == sum(r["sent"] for r in results)


def test_the_record_counts_agree_with_the_feature_code(letters_db):
    with connect(letters_db) as conn:
        rows = conn.execute(
            "SELECT tutor_id, prediction_date, features FROM fsp.first_session_predictions"
        ).fetchall()
        records = tutor_records(conn, [(t, d) for t, d, _ in rows])
    assert len(records) == len({(t, d) for t, d, _ in rows})
    for tutor, moment, features in rows:
        record, f = records[(tutor, moment)], features
        assert record.first_rated == f["n_rated_first_sessions"]
        assert record.later_rated == f["n_ratings"] and record.completed == f["session_count"]
        # The feature is the record shrunk toward the prior: undo it, get the count.
        good = f["first_session_success_rate"] * (record.first_rated + K_FIRST_SUCCESS)
        assert round(good - PRIOR_FIRST_SUCCESS * K_FIRST_SUCCESS, 6) == record.first_good


def _tokens(html: str) -> tuple[str, list[str]]:
    pixel = re.search(r"/api/first-session/t/([A-Za-z0-9_-]+)\.gif", html)
    assert pixel is not None
    return pixel.group(1), re.findall(r"/api/first-session/r/([A-Za-z0-9_-]+)", html)


def _tracking_state(url: str) -> list[tuple]:
    with connect(url) as conn:
        return conn.execute(
            "SELECT session_id, first_opened_at, first_clicked_at FROM fsp.alert_deliveries"
            " ORDER BY session_id"
        ).fetchall()


def test_opens_and_clicks_are_recorded_once_and_forged_tokens_change_nothing(
    letters_db, smtp_server, monkeypatch
):
    use_smtp(monkeypatch, smtp_server.port, track=True)
    alerts_flow(now=DEMO_NOW.isoformat())
    message = next(m for m in smtp_server.received.messages if len(ids_of(m)) >= 2)
    html = message.get_body(("html",)).get_content()
    pixel, links = _tokens(html)
    assert len(links) == len(ids_of(message)) and pixel in links
    assert not any(sid in token for sid in ids_of(message) for token in links)
    before = _tracking_state(letters_db)
    t1, t2 = WALL + timedelta(hours=1), WALL + timedelta(hours=2)
    with connect(letters_db) as conn:
        for forged in ("x" * 32, "../../etc/passwd", "", "a" * 500, pixel[:-1] + "!"):
            assert tracking.record_open(conn, forged, t1) is False
            assert tracking.record_click(conn, forged, t1) == tracking.SAFE_LANDING_PAGE
        assert _tracking_state(letters_db) == before
        assert tracking.record_open(conn, pixel, t1) is True
        assert tracking.record_open(conn, pixel, t2) is True  # repeated: nothing changes
        target = tracking.record_click(conn, links[-1], t2)
        pages = {f"https://tutoring.example/sessions/{sid}" for sid in ids_of(message)}
        assert target in pages
        tracking.record_click(conn, links[-1], t2 + timedelta(hours=1))
        opened = conn.execute(
            "SELECT session_id, first_opened_at, first_clicked_at FROM fsp.alert_deliveries"
            " WHERE first_opened_at IS NOT NULL ORDER BY session_id"
        ).fetchall()
        clock = datetime.now(UTC)  # the flow records sent_at by the wall clock
        summary = tracking.tracking_summary(
            conn, clock - timedelta(days=1), clock + timedelta(days=1)
        )
    assert {r[0] for r in opened} == ids_of(message)
    assert {r[1] for r in opened} == {t1}
    assert [r[2] for r in opened if r[2] is not None] == [t2]
    assert summary["emails_opened"] == 1 and summary["emails_clicked"] == 1
    assert summary["open_rate"] == round(1 / summary["emails_sent"], 4)


def test_tracking_summary_splits_outcomes_by_opened(letters_db, tmp_path, monkeypatch):
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0.3")
    monkeypatch.setenv("FSP_TRACK_OPENS", "true")
    get_settings.cache_clear()
    with connect(letters_db, autocommit=True) as conn:
        run_alerts(conn, OutboxMailer(tmp_path / "outbox"), get_settings(), DEMO_NOW, WALL)
        sent = [
            r[0]
            for r in conn.execute(
                "SELECT tracking_token FROM fsp.alert_deliveries WHERE status = 'sent'"
                " ORDER BY session_id"
            )
        ]
        for token in sent[: len(sent) // 2]:
            tracking.record_open(conn, token, WALL)
        conn.execute(
            "UPDATE fsp.first_session_predictions SET actual_rating = 2,"
            " actual_poor_session = (hashtext(session_id) % 3 = 0)"
        )
        summary = tracking.tracking_summary(conn, DEMO_NOW - timedelta(days=1), WALL)
        opened = one(
            conn, "SELECT count(*) FROM fsp.alert_deliveries WHERE first_opened_at IS NOT NULL"
        )
    arms = summary["outcomes"]
    assert arms["alerted_opened"]["sessions"] == opened > 0
    assert arms["alerted_opened"]["sessions"] + arms["alerted_not_opened"]["sessions"] == len(sent)
    assert arms["holdout"]["sessions"] > 0
    assert summary["opened_vs_holdout"]["ci95"] is not None
    print("\ntracking summary:", json.dumps(summary, indent=1))


def test_preview_renders_the_stored_prediction_and_names_an_unknown_session(letters_db):
    settings = get_settings()
    with connect(letters_db) as conn:
        session_id, subject = conn.execute(
            "SELECT session_id, subject FROM fsp.first_session_predictions ORDER BY session_id"
        ).fetchone()
        html = preview_html(conn, session_id, settings, now=DEMO_NOW)
        with pytest.raises(UnknownSession) as raised:
            preview_html(conn, "NO-SUCH-SESSION", settings)
        assert one(conn, "SELECT count(*) FROM fsp.alert_deliveries") == 0  # read only
    assert html.startswith("<!DOCTYPE html>") and session_id in html
    assert subject.replace("_", " ").split()[0].capitalize() in html
    assert "rated first session" in html or "none rated yet" in html
    assert "/api/first-session/" not in html  # a preview never tracks
    assert str(raised.value).count("\n") == 0 and "'NO-SUCH-SESSION'" in str(raised.value)
