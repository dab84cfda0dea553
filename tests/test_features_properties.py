"""No peeking, as a property: on random histories, changing, adding or removing any row
dated after the as-of moment (a session that ends after it, a rating submitted after
it, an engagement score published after it) never changes a feature of any tutor: its
own history (recency-weighted rate and engagement trend included) nor its history
matched to a session's subject and age band.

Times are drawn to the microsecond, often within a second or two of the moment, so
the rounding rules of `fsp.features` (events up, moments down) are exercised at
their edges: a session ending, or a rating submitted, exactly at the moment is not yet
known ("strictly before"); an engagement score is in force from its own instant on,
so only one published strictly after the moment is late."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsp.features import MATCHED_HISTORY_COLUMNS, TUTOR_HISTORY_COLUMNS, TutorHistory

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
MICROSECOND = 1
SECOND = 1_000_000 * MICROSECOND
DAY = 86_400 * SECOND
STATUSES = ("completed", "rescheduled", "no_show", "cancelled", "scheduled")
SESSION_COLUMNS = ["tutor_id", "scheduled_start", "duration_minutes", "status", "is_first_session"]
FEEDBACK_COLUMNS = [
    "tutor_id",
    "is_first_session",
    "rating",
    "submitted_at",
    "subject",
    "student_age",
]
SUBJECTS = ("S1", "S2")
subjects = st.sampled_from(SUBJECTS)
ages = st.integers(5, 40)
QUERIES = [(subject, age) for subject in (*SUBJECTS, "S3") for age in (8.0, 12.0, 20.0)]
"""(subject, student age) of the sessions whose matched history is checked per tutor."""
ENGAGEMENT_COLUMNS = ["tutor_id", "as_of", "score"]


def _at(microseconds: int) -> datetime:
    return T0 + timedelta(microseconds=microseconds)


# An offset from a reference instant: mostly within a couple of seconds (the rounding
# edges), else anywhere within a few months.
near = st.integers(-2 * SECOND, 2 * SECOND)
far = st.integers(-120 * DAY, 120 * DAY)
offsets = st.one_of(near, far)
# How long after the moment a late event happens: 0 or more, often by a microsecond.
late_by = st.one_of(st.integers(0, 2 * SECOND), st.integers(0, 90 * DAY))
durations = st.integers(1, 180)
ratings = st.integers(1, 5)
scores = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def moments(draw) -> int:
    """The as-of moment (µs after T0), sometimes on a whole second."""
    moment = draw(st.integers(0, 100 * DAY))
    return moment // SECOND * SECOND if draw(st.booleans()) else moment


@st.composite
def any_rows(draw, tutors: list[str], moment: int):
    """Sessions, ratings and engagement scores at any time around the moment."""
    tutor = st.sampled_from(tutors)
    sessions = draw(
        st.lists(
            st.tuples(
                tutor,
                offsets.map(lambda d: _at(moment + d)),
                durations,
                st.sampled_from(STATUSES),
                st.booleans(),
            ),
            max_size=12,
        )
    )
    feedback = draw(
        st.lists(
            st.tuples(
                tutor,
                st.booleans(),
                ratings,
                offsets.map(lambda d: _at(moment + d)),
                subjects,
                ages,
            ),
            max_size=12,
        )
    )
    engagement = draw(
        st.lists(
            st.tuples(tutor, offsets.map(lambda d: _at(moment + d)), scores),
            max_size=8,
        )
    )
    return sessions, feedback, engagement


@st.composite
def late_rows(draw, tutors: list[str], moment: int):
    """Rows dated after the moment: sessions ending at or after it (often started
    before it), ratings submitted at or after it, scores published strictly after it."""
    tutor = st.sampled_from(tutors)

    @st.composite
    def session(draw_session):
        minutes = draw_session(durations)
        end = moment + draw_session(late_by)
        start = end - minutes * 60 * SECOND
        return (
            draw_session(tutor),
            _at(start),
            minutes,
            draw_session(st.sampled_from(STATUSES)),
            draw_session(st.booleans()),
        )

    sessions = draw(st.lists(session(), max_size=6))
    feedback = draw(
        st.lists(
            st.tuples(
                tutor,
                st.booleans(),
                ratings,
                late_by.map(lambda d: _at(moment + d)),
                subjects,
                ages,
            ),
            max_size=6,
        )
    )
    engagement = draw(
        st.lists(
            st.tuples(tutor, late_by.map(lambda d: _at(moment + max(d, MICROSECOND))), scores),
            max_size=4,
        )
    )
    return sessions, feedback, engagement


@st.composite
def scenarios(draw):
    """A history, a moment, and two different sets of rows dated after the moment."""
    tutors = [f"T{i}" for i in range(draw(st.integers(1, 3)))]
    moment = draw(moments())
    onboarded = [_at(moment + draw(offsets)) for _ in tutors]
    known_until = draw(st.one_of(st.none(), moments().map(_at)))
    return {
        "tutors": tutors,
        "onboarded": onboarded,
        "moment": _at(moment),
        "known_until": known_until,
        "rows": draw(any_rows(tutors, moment)),
        "late_a": draw(late_rows(tutors, moment)),
        "late_b": draw(late_rows(tutors, moment)),
    }


def _features(case: dict, late) -> pd.DataFrame:
    sessions, feedback, engagement = (
        list(rows) + list(extra) for rows, extra in zip(case["rows"], late, strict=True)
    )
    history = TutorHistory.from_frames(
        pd.DataFrame({"tutor_id": case["tutors"], "onboarded_at": case["onboarded"]}),
        pd.DataFrame(sessions, columns=SESSION_COLUMNS),
        pd.DataFrame(feedback, columns=FEEDBACK_COLUMNS),
        pd.DataFrame(engagement, columns=ENGAGEMENT_COLUMNS),
        case["known_until"],
    )
    tutors = case["tutors"]
    own = history.features(tutors, [case["moment"]] * len(tutors))
    pairs = [(t, subject, age) for t in tutors for subject, age in QUERIES]
    tutor_ids, subject_of, age_of = (list(column) for column in zip(*pairs, strict=True))
    matched = history.matched_features(tutor_ids, subject_of, age_of, [case["moment"]] * len(pairs))
    return own, matched


PROPERTY_EXAMPLES = int(os.environ.get("FSP_PROPERTY_EXAMPLES", "200"))
"""Cases drawn per run: 200 in `make test`; `make test-fast` draws 50 (the quick loop)."""


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its case
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_rows_dated_after_the_moment_never_change_a_feature(case):
    without, matched = _features(case, ([], [], []))
    assert list(without.columns) == list(TUTOR_HISTORY_COLUMNS)
    assert list(matched.columns) == list(MATCHED_HISTORY_COLUMNS)
    for late in (case["late_a"], case["late_b"]):
        # Exact up to float summation order: another tutor's late rows shift where this
        # tutor's running sums start, which can move the last bit of a sum of scores.
        for changed, before in zip(_features(case, late), (without, matched), strict=True):
            np.testing.assert_allclose(
                changed.to_numpy(), before.to_numpy(), rtol=1e-12, atol=1e-12, err_msg=str(case)
            )
