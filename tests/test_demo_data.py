"""The synthetic platform behaves like a real one, and never mixes with real rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fsp import demo_data
from fsp.db import ensure_platform_schema, platform_is_empty
from fsp.errors import InvalidInput, PlatformNotEmpty
from tests.conftest import DEMO_NOW

SPEC = demo_data.DemoSpec(tutors=300, days=120, seed=11, now=DEMO_NOW)
WORLD = demo_data.DemoSpec(tutors=300, days=120, seed=11, now=DEMO_NOW, platform="international")
SHIFTED = demo_data.DemoSpec(tutors=300, days=120, seed=11, now=DEMO_NOW, shift=True)
SHIFT_START = np.datetime64(DEMO_NOW.replace(tzinfo=None)) - np.timedelta64(30, "D")


@pytest.fixture(scope="module")
def frames():
    return demo_data.generate(SPEC)


@pytest.fixture(scope="module")
def world():
    return demo_data.generate(WORLD)


@pytest.fixture(scope="module")
def shifted():
    return demo_data.generate(SHIFTED)


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
    ("kwargs", "field"),
    [
        ({"tutors": 0}, "--tutors"),
        ({"days": 2}, "--days"),
        ({"now": datetime(2026, 1, 1)}, "--now"),
        ({"platform": "mars"}, "--platform must be one of default, international"),
        ({"shift": True, "days": 30}, "--shift"),
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


def test_international_platform_shares_no_subject_or_zone_with_the_default(world):
    default = demo_data.PLATFORMS["default"]
    subjects = set(world["sessions"]["subject"])
    assert subjects == set(demo_data.INTERNATIONAL_SUBJECT_EFFECTS)
    assert not {s.lower() for s in subjects} & {s.lower() for s in default.subjects}
    assert any(" " in s for s in subjects) and any(not s.isascii() for s in subjects)
    zones = set(world["students"]["timezone"])
    assert zones == set(demo_data.INTERNATIONAL_TIMEZONES)
    assert not zones & set(demo_data.TIMEZONES)
    shares = world["sessions"]["subject"].value_counts(normalize=True)
    assert shares.max() > 2.5 * shares.min()  # a real mix, not a uniform draw


def _utc_offset_hours(zone: str, moment: datetime) -> float:
    offset = moment.astimezone(ZoneInfo(zone)).utcoffset()
    assert offset is not None
    return offset.total_seconds() / 3600


def test_international_zones_have_odd_offsets_and_southern_summer_time():
    january, july = datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC)
    zones = demo_data.INTERNATIONAL_TIMEZONES
    odd = {z for z in zones if _utc_offset_hours(z, january) % 1}
    southern_dst = {z for z in zones if _utc_offset_hours(z, january) > _utc_offset_hours(z, july)}
    assert {"Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Australia/Adelaide"} <= odd
    assert {"Australia/Sydney", "Australia/Adelaide", "Pacific/Auckland"} <= southern_dst


def test_international_ids_and_names_take_other_shapes(world):
    tutor_ids = world["tutors"]["tutor_id"]
    hexed = tutor_ids.str.fullmatch(r"tutor-[0-9a-f]{8}")
    odd = tutor_ids[~hexed]
    assert hexed.any() and odd.str.contains(" ").any() and odd.str.contains("'").any()
    assert not all(i.isascii() for i in odd)
    assert world["students"]["student_id"].str.fullmatch(r"stu_[0-9a-f]{32}").all()
    assert all(uuid.UUID(s).version == 4 for s in world["sessions"]["session_id"])
    every_id = pd.concat(
        [tutor_ids, world["students"]["student_id"], world["sessions"]["session_id"]]
    )
    assert every_id.is_unique and every_id.str.len().max() <= 64
    assert not every_id.str.contains(r"[\x00-\x1f\x7f]").any()
    names = pd.concat([world["tutors"]["name"], world["students"]["name"]])
    assert names.str.contains("'").any() and not all(n.isascii() for n in names)


def test_international_subject_effects_are_exported_and_drive_the_outcome(world):
    effects = demo_data.INTERNATIONAL_SUBJECT_EFFECTS
    assert effects["AP Physics"] >= 0.8 and effects["Chess"] <= -0.6
    assert demo_data.PLATFORMS["international"].effects() == effects
    truth = demo_data.truth_frame(world)
    mean_p = truth.groupby("subject")["p_poor"].mean()
    assert mean_p["AP Physics"] > mean_p.median() > mean_p["Chess"]


def test_same_seed_same_international_history_other_seed_other_ids():
    spec = demo_data.DemoSpec(30, 40, 5, DEMO_NOW, platform="international", shift=True)
    a, b = demo_data.generate(spec), demo_data.generate(spec)
    assert a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)
    other = demo_data.generate(demo_data.DemoSpec(30, 40, 6, DEMO_NOW, platform="international"))
    assert not set(a["sessions"]["session_id"]) & set(other["sessions"]["session_id"])


@pytest.mark.parametrize("fixture", ["frames", "world", "shifted"])
def test_truth_is_the_probability_each_first_session_was_drawn_from(fixture, request):
    generated = request.getfixturevalue(fixture)
    truth, sessions = generated["truth"], generated["sessions"]
    first = sessions[sessions["is_first_session"]]
    assert len(truth) == len(first) and set(truth["session_id"]) == set(first["session_id"])
    assert truth["p_poor"].between(0, 1, inclusive="neither").all()
    joined = demo_data.truth_frame(generated)
    assert (joined["status"] == "scheduled").sum() > 0  # future first sessions have a truth too
    rated = joined[joined["rating"].notna()]
    assert ((rated["rating"] < 3) == rated["poor"]).all()  # the rating follows the drawn outcome
    assert abs(rated["p_poor"].mean() - rated["poor"].mean()) < 0.02  # and p is its probability


def _poor_rate_before_and_after(generated: dict) -> tuple[float, float]:
    rated = demo_data.truth_frame(generated).dropna(subset=["rating"])
    late = rated["scheduled_start"] >= SHIFT_START
    return float((rated.loc[~late, "rating"] < 3).mean()), float(
        (rated.loc[late, "rating"] < 3).mean()
    )


def test_shift_raises_the_poor_rate_and_lowers_engagement_in_the_last_30_days(frames, shifted):
    before, after = _poor_rate_before_and_after(shifted)
    assert after > before + 0.02
    _, plain_after = _poor_rate_before_and_after(frames)
    assert after > plain_after + 0.02
    engagement = shifted["tutor_engagement"]
    late = engagement["as_of"] >= SHIFT_START
    assert engagement.loc[late, "score"].mean() < engagement.loc[~late, "score"].mean() - 0.1
    assert engagement["score"].between(0, 1).all()


def test_shift_makes_a_rare_subject_common(shifted):
    first = shifted["sessions"][shifted["sessions"]["is_first_session"]]
    late = first["scheduled_start"] >= SHIFT_START
    rising = demo_data.PLATFORMS["default"].shift.rising_subject
    assert (first.loc[~late, "subject"] == rising).mean() < 0.1
    assert (first.loc[late, "subject"] == rising).mean() > 0.25


def test_shift_leaves_the_first_sessions_before_it_as_they_were(frames, shifted):
    def before_shift(generated):
        s = generated["sessions"]
        s = s[s["is_first_session"] & (s["scheduled_start"] < SHIFT_START)]
        cols = ["tutor_id", "subject", "scheduled_start", "status"]
        return s[cols].sort_values(cols).reset_index(drop=True)

    assert before_shift(frames).equals(before_shift(shifted))
    assert frames["tutors"].equals(shifted["tutors"])


def _subject_model_auc(train: pd.DataFrame, test: pd.DataFrame) -> float:
    """AUC on `test` of a logistic model of poor first sessions on the subject alone."""
    x_train, x_test = (pd.get_dummies(f["subject"]).astype(float) for f in (train, test))
    x_test = x_test.reindex(columns=x_train.columns, fill_value=0.0)
    model = LogisticRegression(max_iter=1000).fit(x_train, train["rating"] < 3)
    return float(roc_auc_score(test["poor"], model.decision_function(x_test)))


def test_after_the_shift_a_retrained_model_ranks_better(shifted):
    truth = demo_data.truth_frame(shifted)
    rated = truth.dropna(subset=["rating"])
    late = rated["scheduled_start"] >= SHIFT_START
    upcoming = truth[truth["status"] == "scheduled"]  # judged on their drawn outcome
    old = _subject_model_auc(rated[~late], upcoming)
    new = _subject_model_auc(rated[late], upcoming)
    assert new > old + 0.03


@pytest.mark.services
def test_international_history_round_trips_through_postgres(empty_db, world):
    with psycopg.connect(empty_db) as conn:
        counts = demo_data.write(conn, world)  # "truth" is not a table: ignored
        assert set(counts) == set(demo_data.TABLE_ORDER)
        tutors = conn.execute("SELECT tutor_id, name, email FROM platform.tutors").fetchall()
        students = conn.execute(
            "SELECT student_id, name, timezone FROM platform.students"
        ).fetchall()
        sessions = conn.execute(
            "SELECT session_id, tutor_id, student_id, subject, scheduled_start"
            " FROM platform.sessions"
        ).fetchall()
        quoted = conn.execute(
            "SELECT count(*) FROM platform.sessions WHERE tutor_id LIKE %s", ("%'%",)
        ).fetchone()
    assert sorted(tutors) == sorted(
        world["tutors"][["tutor_id", "name", "email"]].itertuples(index=False, name=None)
    )
    assert sorted(students) == sorted(
        world["students"][["student_id", "name", "timezone"]].itertuples(index=False, name=None)
    )
    expected = world["sessions"][["session_id", "tutor_id", "student_id", "subject"]]
    assert sorted(row[:4] for row in sessions) == sorted(
        expected.itertuples(index=False, name=None)
    )
    starts = {row[0]: row[4] for row in sessions}
    first = world["sessions"].iloc[0]
    assert starts[first["session_id"]] == first["scheduled_start"].to_pydatetime().replace(
        tzinfo=UTC
    )
    assert quoted is not None and quoted[0] > 0
