"""Alerts against real services: PostgreSQL, a real SMTP server on loopback (aiosmtpd),
the outbox folder. Exactly once under reruns, crashes and concurrent runs, with one
email per tutor listing all of the tutor's due sessions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest

from alerting import queue
from alerting.delivery import OutboxMailer, SmtpMailer
from alerting.render import letter_message_id
from flows.alerts import alerts_flow, run_alerts
from flows.score import score_flow
from fsp.db import connect
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW, create_database, drop_database, seed_demo
from tests.flow_fixtures import SmtpServer, one, point_at, running_smtp_server

pytestmark = pytest.mark.services

WALL = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
LOWERED_THRESHOLD = 0.25
"""The tests lower the stored threshold of their own predictions to get a batch of
a few dozen alerts out of one week of demo sessions."""


@pytest.fixture
def smtp_server():
    yield from running_smtp_server()


@pytest.fixture
def loop_db(server_url: str) -> str:
    url = create_database(server_url)
    seed_demo(url)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def loop_env(loop_db, trained_world, tmp_path, monkeypatch) -> str:
    """Our own seeded DB, scored by the world's champion, with a lowered threshold."""
    point_at(monkeypatch, loop_db, tmp_path / "state", trained_world["state_dir"])
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0")
    get_settings.cache_clear()
    score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=24 * 7)
    with connect(loop_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE fsp.first_session_predictions SET alert_threshold = %s",
            (LOWERED_THRESHOLD,),
        )
    yield loop_db
    get_settings.cache_clear()


def high_risk_ids(url: str) -> list[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT session_id FROM fsp.first_session_predictions"
            " WHERE risk_probability >= alert_threshold AND scheduled_start > %s"
            " ORDER BY session_id",
            (DEMO_NOW,),
        ).fetchall()
    return [r[0] for r in rows]


def sessions_in(messages) -> list[str]:
    """Every session id the emails carry (a letter lists several), sorted."""
    return sorted(sid.strip() for m in messages for sid in str(m["X-FSP-Session-Id"]).split(","))


def use_smtp(monkeypatch, server: SmtpServer) -> None:
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(server.port))
    get_settings.cache_clear()


def test_smtp_delivery_both_parts_headers_and_escaping(loop_env, smtp_server, monkeypatch):
    ids = high_risk_ids(loop_env)
    assert len(ids) >= 10
    with connect(loop_env, autocommit=True) as conn:
        tutor = one(
            conn,
            "SELECT tutor_id FROM fsp.first_session_predictions WHERE session_id = %s",
            (ids[0],),
        )
        conn.execute(
            "UPDATE platform.tutors SET name = %s WHERE tutor_id = %s",
            ("<script>alert('x')</script> & Co", tutor),
        )
    use_smtp(monkeypatch, smtp_server)

    summary = alerts_flow(now=DEMO_NOW.isoformat())

    assert summary["sent"] == len(ids) and summary["enqueued"] == len(ids)
    messages = smtp_server.received.messages
    assert sessions_in(messages) == ids
    assert len(messages) == summary["emails_sent"] < len(ids)  # some tutors have several
    settings = get_settings()
    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        assert message["Message-ID"] == letter_message_id(
            [sid.strip() for sid in str(message["X-FSP-Session-Id"]).split(",")],
            settings.smtp_from_email,
        )
        assert message["From"].addresses[0].addr_spec == settings.smtp_from_email
        assert message["To"].addresses[0].addr_spec.endswith("@tutors.example")
        assert str(message["Subject"]).strip().startswith("Preparing for your ")
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert "TIPS FOR THIS SESSION" in text and "Tips for this session" in html
        assert "FIRST-SESSION BEST PRACTICES" in text
        assert "Preparation priority" in html and "max-width:600px" in html
    evil = next(m for m in messages if ids[0] in sessions_in([m]))
    html = evil.get_body(("html",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Co" in html
    assert "<script>alert('x')</script> & Co" in evil.get_body(("plain",)).get_content()
    assert evil["To"].addresses[0].display_name == "<script>alert('x')</script> & Co"

    with connect(loop_env) as conn:
        assert one(
            conn,
            "SELECT count(*) FROM fsp.first_session_predictions WHERE alert_sent AND alert_sent_at IS NOT NULL",
        ) == len(ids)

    again = alerts_flow(now=DEMO_NOW.isoformat())
    assert again["sent"] == 0 and again["enqueued"] == 0
    # Re-scoring the same sessions an hour later never re-alerts them.
    score_flow(now=(DEMO_NOW + timedelta(hours=1)).isoformat(), lookahead_hours=24 * 7)
    alerts_flow(now=(DEMO_NOW + timedelta(hours=1)).isoformat())
    received = sessions_in(smtp_server.received.messages)
    assert len(received) == len(set(received)) == len(ids) + _new_since_rescore(loop_env, ids)


def _new_since_rescore(url: str, before: list[str]) -> int:
    """Sessions that became high-risk only after re-scoring (a new alert is right for them)."""
    with connect(url) as conn:
        sent = one(conn, "SELECT count(*) FROM fsp.alert_deliveries WHERE status = 'sent'")
    return int(sent) - len(before)


def test_relay_down_then_back_sends_each_once(loop_env, monkeypatch):
    server = SmtpServer()  # not started: connections are refused
    settings = get_settings()
    mailer = SmtpMailer("127.0.0.1", server.port, timeout=2)
    ids = high_risk_ids(loop_env)
    with connect(loop_env, autocommit=True) as conn:
        first = run_alerts(conn, mailer, settings, DEMO_NOW, WALL)
        waiting = first["retry_later"]  # the sessions of the first letter
        assert first["sent"] == 0 and 1 <= waiting < len(ids)  # the batch stops at once
        assert queue.status_counts(conn) == {"pending": len(ids)}

        server.start()
        try:
            too_soon = run_alerts(conn, mailer, settings, DEMO_NOW, WALL + timedelta(seconds=1))
            back = run_alerts(conn, mailer, settings, DEMO_NOW, WALL + timedelta(minutes=5))
        finally:
            server.stop()
        assert too_soon["sent"] == len(ids) - waiting  # the failed letter waits out its back-off
        assert back["sent"] == waiting
        assert queue.status_counts(conn) == {"sent": len(ids)}
    assert sessions_in(server.received.messages) == ids


def test_refusing_relay_gives_up_visibly_after_max_attempts(loop_env, smtp_server, monkeypatch):
    monkeypatch.setenv("FSP_ALERT_MAX_ATTEMPTS", "3")
    get_settings.cache_clear()
    settings = get_settings()
    smtp_server.handler.reject_data = "554 5.7.1 Message rejected"
    mailer = SmtpMailer("127.0.0.1", smtp_server.port)
    ids = high_risk_ids(loop_env)
    wall = WALL
    with connect(loop_env, autocommit=True) as conn:
        for _ in range(settings.alert_max_attempts):
            run_alerts(conn, mailer, settings, DEMO_NOW, wall)
            wall += timedelta(hours=1)
        assert queue.status_counts(conn) == {"failed": len(ids)}
        errors = {r[0] for r in conn.execute("SELECT last_error FROM fsp.alert_deliveries")}
        attempts = {r[0] for r in conn.execute("SELECT attempts FROM fsp.alert_deliveries")}
    assert attempts == {3}
    assert all(e.startswith("gave up after 3 attempts") and "554" in e for e in errors)
    assert smtp_server.received.envelopes == []


class SimulatedCrash(BaseException):
    """The process dies: nothing after the send runs."""


class CrashAfterFirstSend:
    """A mailer that really delivers, then 'crashes' before the result is recorded."""

    def __init__(self, inner):
        self.inner = inner

    def send(self, message):
        self.inner.send(message)
        raise SimulatedCrash()

    def was_delivered(self, message_id):
        return self.inner.was_delivered(message_id)

    def describe(self):
        return self.inner.describe()


def test_crash_between_smtp_send_and_record_never_sends_twice(loop_env, smtp_server):
    settings = get_settings()
    mailer = SmtpMailer("127.0.0.1", smtp_server.port)
    ids = high_risk_ids(loop_env)
    with connect(loop_env, autocommit=True) as conn:
        with pytest.raises(SimulatedCrash):
            run_alerts(conn, CrashAfterFirstSend(mailer), settings, DEMO_NOW, WALL)
        in_flight = queue.status_counts(conn)["sending"]  # the first letter's sessions
        assert queue.status_counts(conn) == {"pending": len(ids) - in_flight, "sending": in_flight}
        # A run inside the lease leaves the in-flight rows alone ...
        run_alerts(conn, mailer, settings, DEMO_NOW, WALL + timedelta(seconds=5))
        assert queue.status_counts(conn) == {"sending": in_flight, "sent": len(ids) - in_flight}
        # ... and once the lease has expired they are settled without resending.
        later = WALL + timedelta(seconds=settings.alert_send_lease_seconds + 1)
        summary = run_alerts(conn, mailer, settings, DEMO_NOW, later)
        assert summary["recovered_uncertain"] == in_flight and summary["sent"] == 0
        failed = conn.execute(
            "SELECT status, last_error FROM fsp.alert_deliveries WHERE status = 'failed'"
        ).fetchall()
    assert len(failed) == in_flight and all("not resent" in error for _, error in failed)
    received = smtp_server.received.message_ids()
    assert len(received) == len(set(received))
    sessions = sessions_in(smtp_server.received.messages)
    assert len(sessions) == len(set(sessions)) == len(ids)


def test_crash_between_outbox_write_and_record_is_settled_as_sent(loop_env, tmp_path):
    settings = get_settings()
    mailer = OutboxMailer(tmp_path / "outbox")
    ids = high_risk_ids(loop_env)
    with connect(loop_env, autocommit=True) as conn:
        with pytest.raises(SimulatedCrash):
            run_alerts(conn, CrashAfterFirstSend(mailer), settings, DEMO_NOW, WALL)
        later = WALL + timedelta(seconds=settings.alert_send_lease_seconds + 1)
        summary = run_alerts(conn, mailer, settings, DEMO_NOW, later)
        assert summary["recovered_sent"] >= 1
        assert queue.status_counts(conn) == {"sent": len(ids)}
        assert one(
            conn, "SELECT count(*) FROM fsp.first_session_predictions WHERE alert_sent"
        ) == len(ids)
        letters = queue.letters_sent(conn)
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == letters < len(ids)


def test_concurrent_runs_send_one_email_per_session(loop_env, smtp_server):
    settings = get_settings()
    smtp_server.handler.delay = 0.02  # widen the window in which runs overlap
    ids = high_risk_ids(loop_env)
    results: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def one_run():
        try:
            with connect(loop_env, autocommit=True) as conn:
                start.wait()
                results.append(
                    run_alerts(
                        conn, SmtpMailer("127.0.0.1", smtp_server.port), settings, DEMO_NOW, WALL
                    )
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sum(r["sent"] for r in results) == len(ids)
    received = smtp_server.received.message_ids()
    assert len(received) == len(set(received))
    sessions = sessions_in(smtp_server.received.messages)
    assert len(sessions) == len(set(sessions)) == len(ids)


def test_template_error_fails_before_any_email_is_marked_sent(
    loop_env, smtp_server, monkeypatch, tmp_path
):
    broken = tmp_path / "templates"
    broken.mkdir()
    source = Path(__file__).resolve().parent.parent / "templates"
    for name in ("alert_email.txt.j2", "tips.yaml"):
        (broken / name).write_text((source / name).read_text())
    (broken / "alert_email.html.j2").write_text("<p>{{ letter.no_such_field }}</p>")
    monkeypatch.setattr("alerting.render.TEMPLATES_DIR", broken)
    use_smtp(monkeypatch, smtp_server)

    with pytest.raises(Exception, match="no_such_field"):
        alerts_flow(now=DEMO_NOW.isoformat())

    assert smtp_server.received.envelopes == []
    with connect(loop_env) as conn:
        assert one(conn, "SELECT count(*) FROM fsp.alert_deliveries WHERE status <> 'pending'") == 0
        assert one(conn, "SELECT count(*) FROM fsp.first_session_predictions WHERE alert_sent") == 0


def test_holdout_share_is_deterministic_and_gets_no_email(loop_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0.5")
    get_settings.cache_clear()
    settings = get_settings()
    ids = high_risk_ids(loop_env)
    with connect(loop_env, autocommit=True) as conn:
        summary = run_alerts(conn, OutboxMailer(tmp_path / "outbox"), settings, DEMO_NOW, WALL)
        held = {
            r[0]
            for r in conn.execute(
                "SELECT session_id FROM fsp.first_session_predictions WHERE alert_holdout"
            )
        }
        sent = {
            r[0]
            for r in conn.execute(
                "SELECT session_id FROM fsp.first_session_predictions WHERE alert_sent"
            )
        }
    assert held == {s for s in ids if queue.in_holdout(s, 0.5)}
    assert 0 < len(held) < len(ids) and held.isdisjoint(sent) and held | sent == set(ids)
    assert summary["holdout"] == len(held) and summary["sent"] == len(sent)
    outbox = list((tmp_path / "outbox").glob("*.eml"))
    emailed = sessions_in(message_from_bytes(f.read_bytes(), policy=default_policy) for f in outbox)
    assert emailed == sorted(sent)
    assert [queue.in_holdout(s, 0.5) for s in ids] == [queue.in_holdout(s, 0.5) for s in ids]
    assert not any(queue.in_holdout(s, 0.0) for s in ids)
