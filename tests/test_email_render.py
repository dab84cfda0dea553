"""The tutor email, rendered from a stored prediction row (pure: no services)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from alerting.render import BADGE_COLOURS, choose_tips, compose, message_id_for, session_facts

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
START = datetime(2026, 11, 2, 2, 30, tzinfo=UTC)  # 21:30 the day before in New York


def row(**overrides):
    base = {
        "session_id": "S0000042",
        "message_id": message_id_for("S0000042", "alerts@tutoring.example"),
        "recipient": "tutor42@tutors.example",
        "tutor_name": "Ada <b>Lovelace</b>",
        "scheduled_start": START,
        "subject": "sat_prep",
        "timezone": "America/New_York",
        "risk_level": "CRITICAL",
        "risk_score": 71,
        "model_version": "3",
        "features": {
            "tutor_tenure_days": 12.5,
            "session_count": 4,
            "n_rated_first_sessions": 2,
            "first_session_success_rate": 0.5,
            "n_ratings": 0,
            "avg_rating": 4.2,
            "student_age": 15,
            "subject": "sat_prep",
            "local_hour": 21.5,
        },
        "top_risk_factors": [
            {"feature": "local_hour", "contribution": 0.9},
            {"feature": "tutor_tenure_days", "contribution": 0.5},
            {"feature": "engagement_score", "contribution": -0.4},
            {"feature": "session_count", "contribution": 0.3},
            {"feature": "student_age", "contribution": 0.2},
        ],
    }
    base.update(overrides)
    return base


def test_tips_follow_the_sessions_own_risk_raising_factors():
    facts = session_facts(row(), NOW)
    tips = choose_tips(facts)
    assert [t["feature"] for t in tips] == ["local_hour", "tutor_tenure_days", "student_age"]
    assert "late evening" in tips[0]["text"] and "9:30 PM EST" in tips[0]["text"]
    assert "joined 12 days ago" in tips[1]["text"]  # session_count shares the same advice
    assert all(t["feature"] != "engagement_score" for t in tips)  # lowers risk: no tip


def test_email_parts_time_badge_and_escaping():
    facts, message = compose(row(), NOW, "alerts@tutoring.example")
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert facts.local_date == "Sunday 1 November" and facts.local_time == "9:30 PM EST"
    assert "Sunday 1 November, 9:30 PM EST" in html and "02:30 UTC" in text
    assert BADGE_COLOURS["CRITICAL"][0] in html and "Very high (71/100)" in text
    assert "sat prep" in text and "15 years old" in html
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in html and "<b>Lovelace" not in html
    assert "Hi Ada <b>Lovelace</b>," in text
    assert message["Message-ID"] == facts.message_id
    assert re.fullmatch(r"<fsp-alert\.S0000042\.[0-9a-f]{12}@tutoring\.example>", facts.message_id)
    assert 'name="viewport"' in html and "max-width:600px" in html


@pytest.mark.parametrize("level", ["LOW", "MEDIUM", "HIGH", "CRITICAL"])
def test_every_level_has_its_own_badge_colour(level):
    _, message = compose(row(risk_level=level), NOW, "alerts@tutoring.example")
    html = message.get_body(("html",)).get_content()
    others = {c for name, (c, _) in BADGE_COLOURS.items() if name != level}
    assert BADGE_COLOURS[level][0] in html and not any(c in html for c in others)


def test_control_characters_never_reach_headers_or_text():
    _, message = compose(row(tutor_name="Eve\r\nBcc: x@evil.example"), NOW, "a@b.example")
    sent = message_from_bytes(message.as_bytes(), policy=default_policy)
    assert sent["Bcc"] is None and len(sent.get_all("To")) == 1
    assert [a.addr_spec for a in sent["To"].addresses] == [row()["recipient"]]
    assert "Eve  Bcc" in message.get_body(("plain",)).get_content()
