"""The tutor email, rendered from a stored prediction row and the tutor's record
(pure: no services)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from alerting.record import TutorRecord
from alerting.render import (
    BADGE_COLOURS,
    LinkPolicy,
    choose_tips,
    compose,
    compose_letter,
    message_id_for,
    session_facts,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
START = datetime(2026, 11, 2, 2, 30, tzinfo=UTC)  # 21:30 the day before in New York
RECORD = TutorRecord(
    tenure_days=12,
    completed=4,
    rescheduled=1,
    no_show=0,
    first_rated=3,
    first_good=1,
    later_rated=12,
    later_sum=45.6,
    engagement=0.31,
)
"""1 of 3 rated first sessions good; returning students' average 3.8 from 12 ratings."""


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
        "record": RECORD,
        "tracking_token": "tok-S42",
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
    assert [t.feature for t in tips] == ["local_hour", "tutor_tenure_days", "student_age"]
    assert "late evening" in tips[0].reason and "9:30 PM EST" in tips[0].reason
    assert (
        tips[1].reason
        == "You joined the platform 12 days ago, so each first session builds your reputation."
    )
    assert tips[2].reason == "Your student is 15 years old."
    assert all(t.feature != "engagement_score" for t in tips)  # lowers risk: no tip
    assert all("\n" not in t.reason for t in tips)


def test_the_record_is_stated_as_counts_never_as_a_smoothed_feature():
    _, message = compose(row(), NOW, "alerts@tutoring.example")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for part in (text, html):
        assert "1 of 3 rated first sessions at 3 stars or more" in part
        assert "average 3.8 from 12 ratings" in part
        assert "1 of 5 past sessions" in part  # rescheduled or missed
        assert "50%" not in part and "about" not in part.split("Sessions taught")[1]


def test_first_session_factor_names_its_reason_with_the_record():
    factors = [{"feature": "first_session_success_rate", "contribution": 0.7}]
    tips = choose_tips(session_facts(row(top_risk_factors=factors), NOW))
    assert tips[0].reason == (
        "Your last first sessions were rated lower than usual:"
        " 1 of 3 rated first sessions at 3 stars or more."
    )
    assert tips[0].title == "First impressions"


def test_an_unknown_factor_gets_the_fallback_tip_naming_it():
    factors = [{"feature": "brand_new_feature", "label": "the new thing", "contribution": 0.9}]
    tips = choose_tips(session_facts(row(top_risk_factors=factors), NOW))
    assert tips[0].feature == "brand_new_feature"
    assert tips[0].reason == "What weighed most on this session's priority: the new thing."


def test_tutor_zone_shown_when_the_platform_knows_it():
    record = TutorRecord(12, 4, 0, 0, 0, 0, 0, 0.0, tutor_zone="Europe/Berlin")
    facts, message = compose(row(record=record), NOW, "alerts@tutoring.example")
    assert facts.tutor_time == "3:30 AM CET"
    assert "3:30 AM CET your time" in message.get_body(("plain",)).get_content()
    same = TutorRecord(12, 4, 0, 0, 0, 0, 0, 0.0, tutor_zone="America/New_York")
    assert session_facts(row(record=same), NOW).tutor_time is None


def test_one_letter_lists_every_session_of_the_tutor():
    later = START.replace(day=3)
    second = row(
        session_id="S0000043",
        scheduled_start=later,
        subject="chemistry",
        tracking_token="tok-S43",
        top_risk_factors=[{"feature": "reschedule_rate", "contribution": 0.4}],
    )
    letter, message = compose_letter([second, row()], NOW, "alerts@tutoring.example")
    assert letter.session_ids == ("S0000042", "S0000043")  # earliest first
    assert message["X-FSP-Session-Id"] == "S0000042, S0000043"
    assert str(message["Subject"]) == "Preparing for your 2 first sessions from Sunday 1 November"
    text = message.get_body(("plain",)).get_content()
    assert "SESSION 1: SAT PREP" in text and "SESSION 2: CHEMISTRY" in text
    assert "You rescheduled 1 of your 5 past sessions." in text
    assert text.count("YOUR TRACK RECORD SO FAR") == 1


def test_tracking_pixel_and_links_carry_only_the_token():
    links = LinkPolicy(track=True, base_url="https://fsp.example/")
    _, message = compose(row(), NOW, "alerts@tutoring.example", links=links)
    html = message.get_body(("html",)).get_content()
    assert 'src="https://fsp.example/api/first-session/t/tok-S42.gif"' in html
    assert 'href="https://fsp.example/api/first-session/r/tok-S42"' in html
    assert "tutoring.example/sessions" not in html
    _, untracked = compose(row(), NOW, "alerts@tutoring.example")
    plain_html = untracked.get_body(("html",)).get_content()
    assert "/api/first-session/" not in plain_html
    assert 'href="https://tutoring.example/sessions/S0000042"' in plain_html


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
