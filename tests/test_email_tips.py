"""The tip catalogue (templates/tips.yaml): every feature the model may name as a top
factor has a tip whose reason is one line of facts; an unknown factor gets the
fallback tip naming it; different top factors lead to different first tips."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerting.record import TutorRecord
from alerting.render import TEMPLATES_DIR, TIPS_FILE, compose, session_facts
from alerting.tips import TipCatalogueError, load_catalogue, write_tip
from fsp.features import MODEL_INPUT_COLUMNS

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SENDER = "alerts@tutoring.example"
RECORDS = {
    "none": None,
    "new": TutorRecord(3, 0, 0, 0, 0, 0, 0, 0.0),
    "seasoned": TutorRecord(400, 120, 6, 2, 3, 1, 12, 45.6, engagement=0.31),
}


def _row(factor: str, record: TutorRecord | None = None, **change) -> dict:
    row = {
        "session_id": "S1",
        "message_id": "<m@tutoring.example>",
        "recipient": "ann@tutors.example",
        "tutor_name": "Ann",
        "scheduled_start": datetime(2026, 11, 2, 23, 0, tzinfo=UTC),
        "subject": "algebra",
        "timezone": "America/Chicago",
        "risk_level": "HIGH",
        "risk_score": 70,
        "model_version": "1",
        "features": {"student_age": 9, "tutor_tenure_days": 3},
        "record": record,
        "top_risk_factors": [{"feature": factor, "contribution": 0.5}],
    }
    row.update(change)
    return row


def catalogue():
    return load_catalogue(TEMPLATES_DIR / TIPS_FILE)


def test_every_model_feature_has_its_own_tip() -> None:
    missing = [f for f in MODEL_INPUT_COLUMNS if f not in catalogue().tips]
    assert missing == [], f"add a tip to templates/tips.yaml for {missing}"


@pytest.mark.parametrize("record", list(RECORDS), ids=list(RECORDS))
@pytest.mark.parametrize("feature", [*MODEL_INPUT_COLUMNS, "a_feature_added_later"])
def test_each_tip_renders_one_line_of_reason_for_any_record(feature: str, record: str) -> None:
    facts = session_facts(_row(feature, RECORDS[record]), NOW)
    first = facts.tips[0]
    assert first.feature == feature  # the session's top factor always gets the first tip
    assert first.reason and "\n" not in first.reason and "{" not in first.reason
    assert first.advice and "{" not in first.advice and "%" not in first.advice.replace("%)", "")


def test_the_fallback_names_the_unknown_factor() -> None:
    facts = session_facts(_row("a_feature_added_later"), NOW)
    assert facts.tips[0].title == "Preparing well"
    assert facts.tips[0].reason == (
        "What weighed most on this session's priority: a feature added later."
    )


def test_reasons_state_counts_from_the_record() -> None:
    seasoned = RECORDS["seasoned"]
    entry = catalogue().tips
    context = {"s": session_facts(_row("avg_rating"), NOW), "r": seasoned}
    assert write_tip(entry["avg_rating"], {"feature": "avg_rating"}, context).reason == (
        "Returning students rate you 3.8 on average, from 12 ratings."
    )
    assert write_tip(entry["no_show_rate"], {"feature": "no_show_rate"}, context).reason == (
        "You missed 2 of your 128 past sessions."
    )
    assert write_tip(entry["engagement_score"], {"feature": "x"}, context).reason == (
        "Your platform engagement score (messages, logins, profile) is 31%."
    )


def test_two_top_factors_two_different_emails() -> None:
    record = RECORDS["seasoned"]
    _, first = compose(_row("first_session_success_rate", record), NOW, SENDER)
    _, late = compose(_row("local_hour", record), NOW, SENDER)
    a = first.get_body(("plain",)).get_content()
    b = late.get_body(("plain",)).get_content()
    print("\n--- top factor first_session_success_rate ---\n" + a.split("TIPS FOR")[1][:400])
    print("\n--- top factor local_hour ---\n" + b.split("TIPS FOR")[1][:400])
    assert "Why: Your last first sessions were rated lower than usual: 1 of 3" in a
    assert "Why: The session is in the evening for your student (5 PM CST)." in b
    assert a.split("TIPS FOR")[1] != b.split("TIPS FOR")[1]


def test_a_malformed_catalogue_is_refused_naming_the_entry(tmp_path) -> None:
    bad = tmp_path / "tips.yaml"
    bad.write_text("fallback: {title: x, reason: y, advice: z}\ntips:\n  local_hour: {title: x}\n")
    with pytest.raises(TipCatalogueError, match="local_hour"):
        load_catalogue(bad)
