"""Header injection: values built from data (the tutor's name and address, the subject,
the session id, the model version) can never add a header or a recipient, however
they are encoded. Each message is checked as bytes, parsed back by the email package."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy

import pytest

from alerting.delivery import DeliveryFailed, OutboxMailer, SmtpMailer, _wire_bytes
from alerting.dispatch import render_batch, run_alerts
from alerting.render import InvalidRecipient, compose, header_text, message_id_for
from fsp.db import connect
from fsp.settings import get_settings
from tests.flow_fixtures import running_smtp_server

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SENDER = "risk-alerts@tutoring.example"
TUTOR = "ann@tutors.example"
PAYLOAD = "=?utf-8?q?=0D=0ABcc:_x@example.com?="
"""An RFC 2047 encoded CRLF followed by a Bcc header: the reported attack."""

NESTED = "=?utf-8?b?" + base64.b64encode(PAYLOAD.encode()).decode() + "?="
"""The payload encoded once more: decodes to the payload, which decodes to CRLF."""

ATTACKS = [
    PAYLOAD,
    f"Ann {PAYLOAD}",
    f"José {PAYLOAD}",  # raw non-ASCII beside the encoded word
    NESTED,
    "=?utf-8?q?Ann=0D=0AReply-To:_evil@example.com?=",
    "=?utf-8?b?DQpCY2M6IHhAZXhhbXBsZS5jb20=?=",  # base64 CRLF Bcc
    "=?bogus-charset?q?=0D=0ABcc:_x@example.com?=",
    '"quoted =?utf-8?q?=0A?= name"',
    "Ann\r\nBcc: x@example.com",
    "Ann\u2028Bcc: x@example.com",
    "Ann\x85Bcc: x@example.com",
]
EXPECTED_HEADERS = [
    "Subject",
    "From",
    "To",
    "Message-ID",
    "Date",
    "X-FSP-Session-Id",
    "X-FSP-Model-Version",
    "Auto-Submitted",
    "Content-Type",
    "MIME-Version",
]


def _row(**change) -> dict:
    row = {
        "session_id": "F1",
        "message_id": message_id_for("F1", SENDER),
        "recipient": TUTOR,
        "tutor_id": "T1",
        "tutor_name": "Ann",
        "scheduled_start": NOW + timedelta(hours=24),
        "subject": "algebra",
        "risk_level": "HIGH",
        "risk_score": 80,
        "risk_probability": 0.8,
        "model_version": "7",
        "top_risk_factors": [],
        "features": json.dumps({"student_age": 14}),
        "timezone": "America/New_York",
    }
    row.update(change)
    return row


def _read_back(message: EmailMessage) -> EmailMessage:
    """The message as it leaves (outbox bytes and SMTP wire bytes agree), parsed."""
    outbox = message_from_bytes(message.as_bytes(), policy=default_policy)
    wire = message_from_bytes(_wire_bytes(message), policy=default_policy)
    assert list(outbox.keys()) == list(wire.keys())
    return wire  # type: ignore[return-value]


def _assert_one_recipient_no_extra_header(message: EmailMessage) -> EmailMessage:
    parsed = _read_back(message)
    assert sorted(parsed.keys()) == sorted(EXPECTED_HEADERS)
    for name in ("Bcc", "Cc", "Reply-To", "Resent-To", "Resent-Bcc"):
        assert parsed[name] is None, name
    assert [a.addr_spec for a in parsed["To"].addresses] == [TUTOR]
    for name in EXPECTED_HEADERS:
        value = str(parsed[name])
        assert "\r" not in value and "\n" not in value, (name, value)
    return parsed


@pytest.mark.parametrize("name", ATTACKS)
def test_tutor_name_cannot_add_a_header_or_recipient(name: str) -> None:
    _, message = compose(_row(tutor_name=name), NOW, SENDER)
    parsed = _assert_one_recipient_no_extra_header(message)
    display = parsed["To"].addresses[0].display_name
    assert "\r" not in display and "\n" not in display


def test_the_reported_payload_reads_as_a_harmless_name() -> None:
    _, message = compose(_row(tutor_name=PAYLOAD), NOW, SENDER)
    parsed = _assert_one_recipient_no_extra_header(message)
    assert parsed["To"].addresses[0].display_name == "Bcc: x@example.com"
    head = _wire_bytes(message).split(b"\r\n\r\n")[0]
    assert not [line for line in head.split(b"\r\n") if line.lower().startswith(b"bcc")]


@pytest.mark.parametrize("field", ["subject", "session_id", "model_version"])
@pytest.mark.parametrize("value", [PAYLOAD, NESTED, "x\u2028Bcc: x@example.com"])
def test_other_header_values_cannot_add_a_header(field: str, value: str) -> None:
    _, message = compose(_row(**{field: f"a {value}"}), NOW, SENDER)
    _assert_one_recipient_no_extra_header(message)


@pytest.mark.parametrize(
    "address",
    [
        f"{PAYLOAD}@tutors.example",
        f"ann@{PAYLOAD}",
        "ann@tutors.example, x@example.com",
        "ann@tutors.example\r\nBcc: x@example.com",
        "Ann <ann@tutors.example>",
        "",
    ],
)
def test_an_unusable_address_is_refused(address: str) -> None:
    with pytest.raises(InvalidRecipient):
        compose(_row(recipient=address), NOW, SENDER)


def test_a_bad_row_is_set_aside_and_the_rest_rendered() -> None:
    import pandas as pd

    due = pd.DataFrame(
        [
            _row(session_id="A", tutor_name=PAYLOAD),
            _row(session_id="B", recipient=f"{PAYLOAD}@x.example"),
            _row(session_id="C", subject="x\u2028Bcc: x@example.com"),
        ]
    )
    batch = render_batch(due, NOW, SENDER)
    assert sorted(batch.messages) == ["A", "C"] and list(batch.undeliverable) == ["B"]
    for message in batch.messages.values():
        _assert_one_recipient_no_extra_header(message)


def test_header_text_keeps_ordinary_names() -> None:
    for name in ("Ann O'Neil", "José Núñez", "<script>alert('x')</script> & Co", "李 小龙"):
        assert header_text(name) == name


def test_mailers_refuse_a_message_with_another_recipient(tmp_path) -> None:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = TUTOR
    message["Bcc"] = "x@example.com"
    message["Message-ID"] = "<m1@tutoring.example>"
    message.set_content("hello")
    outbox = OutboxMailer(tmp_path / "outbox")
    with pytest.raises(DeliveryFailed):
        outbox.send(message)
    assert not list((tmp_path / "outbox").glob("*"))
    server = next(smtp := running_smtp_server())
    try:
        with pytest.raises(DeliveryFailed):
            SmtpMailer("127.0.0.1", server.port).send(message)
        assert server.received.envelopes == []
    finally:
        next(smtp, None)


@pytest.mark.services
def test_alerts_flow_over_smtp_sends_one_recipient_and_no_bcc(platform_email_db, monkeypatch):
    """The reported attack end to end: the tutor's name in platform.tutors."""
    db = platform_email_db
    server = next(smtp := running_smtp_server())
    try:
        monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SMTP_PORT", str(server.port))
        get_settings.cache_clear()
        with connect(db, autocommit=True) as conn:
            conn.execute("UPDATE platform.tutors SET name = %s WHERE tutor_id = 'T1'", (PAYLOAD,))
            summary = run_alerts(conn, make_smtp(server.port), get_settings(), NOW, NOW)
        assert summary["sent"] == 1
        [(_, rcpt_tos, data)] = server.received.envelopes
        assert rcpt_tos == [TUTOR]
        parsed = message_from_bytes(data, policy=default_policy)
        assert parsed["Bcc"] is None and parsed["Reply-To"] is None
        assert [a.addr_spec for a in parsed["To"].addresses] == [TUTOR]
        assert b"\nBcc:" not in data and not data.startswith(b"Bcc:")
    finally:
        next(smtp, None)


def make_smtp(port: int) -> SmtpMailer:
    return SmtpMailer("127.0.0.1", port)


@pytest.fixture
def platform_email_db(empty_db: str, tmp_path, monkeypatch):
    """The platform of tests/test_security_store.py with a high-risk prediction of F1."""
    from fsp.db import ensure_platform_schema, upgrade
    from tests.conftest import configure_env
    from tests.test_security_store import flow_store, seed_platform

    with connect(empty_db) as conn:
        ensure_platform_schema(conn)
        upgrade(conn)
    configure_env(monkeypatch, empty_db, tmp_path / "state")
    monkeypatch.setenv("FSP_ALERT_HOLDOUT_SHARE", "0")
    get_settings.cache_clear()
    seed_platform(empty_db)
    with connect(empty_db) as conn:
        flow_store(conn, "F1")
    yield empty_db
    get_settings.cache_clear()
