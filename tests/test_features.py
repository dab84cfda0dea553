"""Point-in-time features: no peeking, engagement in force, local time across DST,
shrinkage. Pure tests on frames, plus one against a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
import pytz

from fsp.calendar import known_zone, local_calendar, zone, zone_names
from fsp.constants import RECENT_HALF_LIFE_SESSIONS
from fsp.errors import InvalidInput, UnknownTutor
from fsp.features import (
    K_FIRST_SUCCESS,
    K_MATCHED,
    PRIOR_FIRST_SUCCESS,
    TutorHistory,
    build_model_input,
    local_time_features,
)
from tests.conftest import DEMO_NOW, seed_demo
from training.dataset import build_training_set

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


FEEDBACK = ["tutor_id", "is_first_session", "rating", "submitted_at"]
MATCHED = ["subject", "student_age"]


def _history(sessions=(), feedback=(), engagement=(), known_until=None) -> TutorHistory:
    """Feedback rows of 4 fields, or 6 with the rated session's subject and student age."""
    tutors = pd.DataFrame({"tutor_id": ["A", "B"], "onboarded_at": [T0, T0]})
    s = pd.DataFrame(
        list(sessions),
        columns=["tutor_id", "scheduled_start", "duration_minutes", "status", "is_first_session"],
    )
    feedback = list(feedback)
    wide = bool(feedback) and len(feedback[0]) == len(FEEDBACK) + len(MATCHED)
    f = pd.DataFrame(feedback, columns=FEEDBACK + MATCHED if wide else FEEDBACK)
    e = pd.DataFrame(list(engagement), columns=["tutor_id", "as_of", "score"])
    return TutorHistory.from_frames(tutors, s, f, e, known_until)


def test_rating_submitted_after_the_moment_is_invisible():
    moment = T0 + timedelta(days=10)
    before = _history(feedback=[("A", True, 1, moment - timedelta(seconds=1))])
    after = _history(feedback=[("A", True, 1, moment + timedelta(seconds=1))])
    same_second = _history(feedback=[("A", True, 1, moment)])
    seen = before.features(["A"], [moment])
    assert seen.loc[0, "n_rated_first_sessions"] == 1
    for history in (after, same_second):
        unseen = history.features(["A"], [moment])
        assert unseen.loc[0, "n_rated_first_sessions"] == 0
        assert unseen.loc[0, "first_session_success_rate"] == pytest.approx(PRIOR_FIRST_SUCCESS)


def test_session_status_counts_only_once_the_session_has_ended():
    start = T0 + timedelta(days=5)
    history = _history(sessions=[("A", start, 60, "no_show", False)])
    during = history.features(["A"], [start + timedelta(minutes=30)])
    after = history.features(["A"], [start + timedelta(minutes=61)])
    assert during.loc[0, "no_show_rate"] < after.loc[0, "no_show_rate"]


def test_engagement_in_force_is_the_latest_at_or_before_the_moment():
    e1, e2 = T0 + timedelta(days=7), T0 + timedelta(days=14)
    history = _history(engagement=[("A", e1, 0.3), ("A", e2, 0.9), ("B", e1, 0.1)])
    moments = [e1 - timedelta(seconds=1), e1, e2 - timedelta(hours=1), e2, e2 + timedelta(days=30)]
    got = history.features(["A"] * 5, moments)["engagement_score"].tolist()
    assert got == [0.5, 0.3, 0.3, 0.9, 0.9]  # 0.5: the prior before any score exists


def test_recent_engagement_mean_averages_the_window_and_never_a_later_score():
    """The mean of the scores published in the last weeks before the moment: a score
    published after the moment (or another tutor's) never moves it; with no score in
    the window it is the score in force."""
    e1, e2 = T0 + timedelta(days=7), T0 + timedelta(days=14)
    scores = [("A", e1, 0.3), ("A", e2, 0.9), ("B", e2, 0.0)]
    history = _history(engagement=scores)
    later = _history(engagement=[*scores, ("A", e2 + timedelta(seconds=1), 0.0)])
    moments = [e1 - timedelta(seconds=1), e1, e2, e2 + timedelta(days=100)]
    got = history.features(["A"] * 4, moments)["engagement_recent_mean"].tolist()
    assert got == pytest.approx([0.5, 0.3, 0.6, 0.9])  # 0.9: window empty, score in force
    same = later.features(["A"] * 3, moments[:3])["engagement_recent_mean"].tolist()
    assert same == pytest.approx(got[:3])


def test_recent_poor_rate_weighs_the_latest_first_sessions_most():
    """Same record, other order: the tutor whose poor first sessions are the latest has
    the higher recent rate; the exact value follows the half-life; a rating submitted
    after the moment never counts."""
    moment = T0 + timedelta(days=100)
    at = [T0 + timedelta(days=1 + i) for i in range(20)]
    improving = [("A", True, 1 if i < 10 else 5, t) for i, t in enumerate(at)]
    slipping = [("B", True, 5 if i < 10 else 1, t) for i, t in enumerate(at)]
    late = [("A", True, 1, moment), ("B", True, 5, moment + timedelta(days=1))]
    for extra in ([], late):
        got = _history(feedback=improving + slipping + extra).features(["A", "B"], [moment] * 2)
        rate, success = got["recent_poor_rate"].tolist(), got["first_session_success_rate"]
        assert success[0] == success[1]  # same record overall
        assert rate[0] < 1 - success[0] < rate[1]
    one_poor_then_good = _history(feedback=[("A", True, 1, at[0]), ("A", True, 5, at[1])])
    d = 0.5 ** (1 / RECENT_HALF_LIFE_SESSIONS)
    expected = (d + K_FIRST_SUCCESS * (1 - PRIOR_FIRST_SUCCESS)) / (1 + d + K_FIRST_SUCCESS)
    got = one_poor_then_good.features(["A"], [moment])["recent_poor_rate"][0]
    assert got == pytest.approx(expected, rel=1e-12)


def test_engagement_trend_is_recent_minus_older_mean_and_never_sees_a_later_score():
    moment = T0 + timedelta(days=100)
    scores = [
        ("A", moment - timedelta(days=40), 0.2),
        ("A", moment - timedelta(days=35), 0.4),
        ("A", moment - timedelta(days=10), 0.8),
        ("B", moment - timedelta(days=10), 0.8),  # no older span: no trend known
    ]
    later = [("A", moment + timedelta(seconds=1), 0.0), ("B", moment + timedelta(days=3), 0.0)]
    for extra in ([], later):
        trend = _history(engagement=scores + extra).features(["A", "B"], [moment] * 2)
        assert trend["engagement_trend"].tolist() == pytest.approx([0.5, 0.0])


def _rated(tutor, rating, when, subject="Chess", age=12):
    return (tutor, True, rating, when, subject, age)


def test_subject_and_age_band_history_count_only_matching_first_sessions():
    """A's record: two poor Chess first sessions with 12- and 13-year-olds (one band),
    one good Algebra one with a 16-year-old; B's poor Chess ones are B's alone; a
    returning session's rating and a rating after the moment never count."""
    moment = T0 + timedelta(days=50)
    day = [T0 + timedelta(days=i) for i in range(1, 6)]
    feedback = [
        _rated("A", 1, day[0], "Chess", 12),
        _rated("A", 2, day[1], "Chess", 13),
        _rated("A", 5, day[2], "Algebra", 16),
        ("A", False, 1, day[3], "Chess", 12),
        _rated("B", 1, day[4], "Chess", 12),
    ]
    late = [_rated("A", 1, moment, "Algebra", 16), _rated("A", 1, moment, "Chess", 12)]
    queries = (["A"] * 4, ["Chess", "Algebra", "Robotics", "Chess"], [11.0, 17.0, 30.0, 16.0])
    for extra in ([], late):
        history = _history(feedback=feedback + extra)
        got = history.matched_features(*queries, [moment] * 4)
        overall = 1 - history.features(["A"], [moment])["first_session_success_rate"][0]
        assert got["n_first_sessions_in_subject"].tolist() == [2, 1, 0, 2]
        assert got["n_first_sessions_in_age_band"].tolist() == [2, 1, 0, 1]
        assert got.loc[2, "poor_rate_in_subject"] == pytest.approx(overall)  # no evidence
        chess = (2 + K_MATCHED * overall) / (2 + K_MATCHED)
        assert got.loc[0, "poor_rate_in_subject"] == pytest.approx(chess)
        assert got.loc[1, "poor_rate_in_age_band"] < overall < got.loc[0, "poor_rate_in_age_band"]


def test_more_poor_first_sessions_in_the_subject_never_lower_its_rate():
    """Monotone in the evidence: turning any good first session in the subject into a
    poor one raises the subject's rate (and the tutor's overall rate it is shrunk to)."""
    moment = T0 + timedelta(days=60)
    rates = []
    for k in range(11):
        record = [_rated("A", 1 if i < k else 5, T0 + timedelta(days=i)) for i in range(10)]
        record.append(_rated("A", 5, T0 + timedelta(days=20), "Algebra"))
        history = _history(feedback=record)
        got = history.matched_features(["A"], ["Chess"], [12.0], [moment])
        rates.append(got["poor_rate_in_subject"][0])
    assert np.all(np.diff(rates) > 0), rates


def test_a_tutor_with_one_session_is_not_judged_like_one_with_three_hundred():
    moment = T0 + timedelta(days=400)
    bad_once = [("A", True, 1, T0 + timedelta(days=1))]
    bad_often = [("B", True, 1, T0 + timedelta(days=1, minutes=i)) for i in range(300)]
    history = _history(feedback=bad_once + bad_often)
    rates = history.features(["A", "B"], [moment, moment])["first_session_success_rate"]
    assert rates[0] > 0.6  # one poor first session barely moves the prior
    assert rates[1] < 0.05  # three hundred do


def test_local_hour_follows_the_student_zone_across_a_dst_change():
    # 2026-03-08: US clocks spring forward. 23:00 UTC is 18:00 EST the day before,
    # 19:00 EDT the day after; Phoenix does not observe DST.
    starts = ["2026-03-07T23:00:00+00:00", "2026-03-09T23:00:00+00:00"] * 2
    zones = ["America/New_York"] * 2 + ["America/Phoenix"] * 2
    local = local_time_features(starts, zones)
    assert local["local_hour"].tolist() == [18.0, 19.0, 16.0, 16.0]
    assert local["local_dow"].tolist() == [5.0, 0.0, 5.0, 0.0]


def test_local_calendar_equals_zoneinfo_in_every_zone():
    """The vectorised calendar (one pandas conversion per zone) gives the wall clock
    zoneinfo gives for each instant alone (same pinned tables), to the minute, in every IANA zone, across
    seven decades of daylight-saving rule changes; so does the one-instant path."""
    rng = np.random.default_rng(3)
    zones = sorted(zone_names())
    seconds = rng.integers(-(10**9), 2_300_000_000, 40_000)
    seconds[:5_000] = seconds[:5_000] // 900 * 900  # quarter hours: transitions fall there
    chosen = [zones[i] for i in rng.integers(0, len(zones), len(seconds))]
    ours = local_calendar(seconds, chosen)
    for i, (second, name) in enumerate(zip(seconds, chosen, strict=True)):
        local = datetime.fromtimestamp(int(second), zone(name))
        assert ours.hour[i] == local.hour + local.minute / 60.0, (name, second)
        assert ours.dow[i] == local.weekday(), (name, second)
        assert ours.month_day[i] == local.month * 100 + local.day, (name, second)
        assert ours.year[i] == local.year, (name, second)
        if i < 500:
            alone = local_calendar([second], [name])
            assert (alone.hour[0], alone.dow[0]) == (ours.hour[i], ours.dow[i]), (name, second)


def test_local_calendar_agrees_with_pandas_default_tables_before_2037():
    """pandas' own conversion of a zone name reads another copy of the IANA tables
    (pytz's); from 1970 (before it, pytz keeps history the tzdata package has merged
    away) to 2037 (where pytz's tables end), both give the same wall clock."""
    rng = np.random.default_rng(4)
    zones = [str(z) for z in pytz.common_timezones]
    seconds = rng.integers(0, 2_100_000_000, 20_000)
    chosen = pd.Series([zones[i] for i in rng.integers(0, len(zones), len(seconds))])
    ours = local_calendar(seconds, chosen)
    starts = pd.DatetimeIndex(pd.to_datetime(seconds, unit="s", utc=True))
    for name in chosen.unique():
        rows = (chosen == name).to_numpy()
        local = starts[rows].tz_convert(name)
        assert np.array_equal(ours.hour[rows], local.hour + local.minute / 60.0), name
        assert np.array_equal(ours.dow[rows], local.dayofweek), name


def test_unknown_zone_is_not_known():
    assert known_zone("America/Phoenix") and known_zone("UTC")
    assert not known_zone("Mars/Olympus_Mons") and not known_zone("")
    with pytest.raises(InvalidInput, match="'Mars/Olympus_Mons'"):
        local_time_features(["2026-06-01T20:30:00+00:00"] * 2, ["UTC", "Mars/Olympus_Mons"])


def test_unknown_tutor_is_named():
    with pytest.raises(UnknownTutor, match="'ZZZ'"):
        _history().features(["ZZZ"], [T0])


def test_model_input_has_every_documented_column():
    frame = pd.DataFrame(
        {
            "tutor_id": ["A"],
            "subject": ["quantum_knitting"],
            "scheduled_start": ["2026-06-01T20:30:00+00:00"],
            "timezone": ["America/Chicago"],
            "student_age": [12],
        }
    )
    X = build_model_input(_history(), frame, [T0 + timedelta(days=90)])
    assert X.loc[0, "local_hour"] == 15.5
    assert X.loc[0, "subject"] == "quantum_knitting"  # encoded as 'unknown' by the model


def _late_rating_case(conn) -> tuple[str, str, datetime]:
    """An unrated completed session U and a later training example E of the same tutor."""
    row = conn.execute(
        "SELECT u.session_id, e.session_id, e.scheduled_start"
        " FROM platform.sessions u"
        " JOIN platform.sessions e ON e.tutor_id = u.tutor_id"
        "  AND e.scheduled_start > u.scheduled_start + interval '2 hours'"
        " JOIN platform.feedback fe ON fe.session_id = e.session_id"
        " LEFT JOIN platform.feedback fu ON fu.session_id = u.session_id"
        " WHERE u.status = 'completed' AND fu.session_id IS NULL"
        "  AND e.is_first_session AND e.status = 'completed' AND fe.submitted_at < %s"
        " ORDER BY e.scheduled_start LIMIT 1",
        (DEMO_NOW,),
    ).fetchone()
    assert row, "the demo data should hold an unrated session before a rated first session"
    return row


@pytest.mark.services
def test_a_late_rating_never_changes_a_sessions_training_features(empty_db):
    seed_demo(empty_db, tutors=40, days=60)
    with psycopg.connect(empty_db) as conn:
        before = build_training_set(conn, DEMO_NOW)
        unrated_id, example_id, example_start = _late_rating_case(conn)
        # The rating of U arrives one minute after E started: E must not see it.
        conn.execute(
            "INSERT INTO platform.feedback VALUES (%s, 1, %s)",
            (unrated_id, example_start + timedelta(minutes=1)),
        )
        after = build_training_set(conn, DEMO_NOW)
        conn.rollback()
    row_before = list(before.session_ids).index(example_id)
    row_after = list(after.session_ids).index(example_id)
    pd.testing.assert_series_equal(
        before.X.iloc[row_before], after.X.iloc[row_after], check_names=False
    )
    assert not before.X.equals(after.X)  # later examples of that tutor do see it
