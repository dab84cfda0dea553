"""The synthetic platform behaves like a real one, and never mixes with real rows."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from tests.conftest import DEMO_NOW
from training import demo_data
from training.db import ensure_platform_schema, platform_is_empty
from training.errors import InvalidInput, PlatformNotEmpty

SPEC = demo_data.DemoSpec(tutors=300, days=120, seed=11, now=DEMO_NOW)


@pytest.fixture(scope="module")
def frames():
    return demo_data.generate(SPEC)


def test_poor_first_sessions_are_between_ten_and_twenty_percent(frames):
    assert 0.10 <= demo_data.summarize(frames, SPEC.now)["poor_rate"] <= 0.20


def test_students_span_ages_and_us_time_zones(frames):
    students = frames["students"]
    assert set(students["timezone"]) <= set(demo_data.TIMEZONES)
    assert students["timezone"].nunique() >= 5
    first = frames["sessions"].query("is_first_session").merge(students, on="student_id")
    age = (first["scheduled_start"] - first["birth_date"]).dt.days / 365.25
    assert age.min() >= 5.9 and age.max() < 51.1


def test_statuses_ratings_and_engagement_follow_time(frames):
    sessions, feedback = frames["sessions"], frames["feedback"]
    now = np.datetime64(SPEC.now.replace(tzinfo=None))
    past = sessions["scheduled_start"] < now
    assert (sessions.loc[~past, "status"] == "scheduled").all()
    assert set(sessions.loc[past, "status"]) == {"completed", "cancelled", "rescheduled", "no_show"}
    assert (sessions["created_at"] <= now).all()
    rated = feedback.merge(sessions, on="session_id")
    end = rated["scheduled_start"] + rated["duration_minutes"] * np.timedelta64(1, "m")
    assert (rated["submitted_at"] > end).all() and (rated["submitted_at"] < now).all()
    assert (rated["status"] == "completed").all()
    upcoming_first = sessions[~past & sessions["is_first_session"]]
    assert len(upcoming_first) > 0  # first sessions booked for the days after now
    assert (frames["tutor_engagement"]["score"].between(0, 1)).all()


def test_same_seed_same_history():
    a = demo_data.generate(demo_data.DemoSpec(30, 30, 5, DEMO_NOW))
    b = demo_data.generate(demo_data.DemoSpec(30, 30, 5, DEMO_NOW))
    assert a["sessions"].equals(b["sessions"]) and a["feedback"].equals(b["feedback"])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"tutors": 0}, "--tutors"),
        ({"days": 2}, "--days"),
        ({"now": datetime(2026, 1, 1)}, "--now"),
    ],
)
def test_bad_parameters_are_named(kwargs, field):
    args = {"tutors": 10, "days": 30, "seed": 1, "now": DEMO_NOW} | kwargs
    with pytest.raises(InvalidInput, match=field):
        demo_data.DemoSpec(**args)


@pytest.mark.services
def test_refuses_a_platform_that_holds_data_and_writes_nothing(empty_db):
    small = demo_data.generate(demo_data.DemoSpec(20, 30, 1, DEMO_NOW))
    with psycopg.connect(empty_db) as conn:
        ensure_platform_schema(conn)
        assert platform_is_empty(conn)
        conn.execute(
            "INSERT INTO platform.tutors VALUES ('REAL', 'Real Tutor', 'r@x.example', %s)",
            (datetime(2025, 1, 1, tzinfo=UTC),),
        )
        conn.commit()
        with pytest.raises(PlatformNotEmpty, match="already hold data"):
            demo_data.write(conn, small)
        conn.rollback()
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM platform.tutors), (SELECT count(*) FROM platform.sessions)"
        ).fetchone()
    assert counts == (1, 0)
