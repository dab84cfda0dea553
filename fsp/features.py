"""Point-in-time features: the ONE definition used by training, batch scoring and the API.

A session's features are computed *as of* a moment `t` (its start for a training
example, `now` for an upcoming session) from rows that existed strictly before
`t`. Every event carries the time it became known:

| event                         | known at                          |
| ----------------------------- | --------------------------------- |
| a session's final status      | its end (start + duration)        |
| a rating                      | `feedback.submitted_at`           |
| an engagement score           | `tutor_engagement.as_of` (in force from then) |

Event times are rounded *up* to the second and moments *down*, so an event in
the same second as `t` is never counted: rounding can only hide, never leak.

The model's raw input (one row per session) is `MODEL_INPUT_COLUMNS`; what each
column means is in `FEATURE_DOCS`. Encoding (cyclical time, subject one-hot,
log counts, scaling) happens inside the logged model (`fsp.encoding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg

from fsp.calendar import local_calendar
from fsp.constants import (
    AGE_BAND_EDGES,
    ENGAGEMENT_TREND_DAYS,
    POOR_RATING_BELOW,
    RECENT_HALF_LIFE_SESSIONS,
)
from fsp.errors import UnknownTutor

# Shrinkage priors: a tutor with little evidence is pulled toward the platform's
# typical value; `k` is how many observations the prior is worth.
PRIOR_AVG_RATING, K_AVG_RATING = 4.2, 5.0
PRIOR_FIRST_SUCCESS, K_FIRST_SUCCESS = 0.83, 5.0
PRIOR_RESCHEDULE, K_RESCHEDULE = 0.06, 10.0
PRIOR_NO_SHOW, K_NO_SHOW = 0.02, 10.0
PRIOR_ENGAGEMENT = 0.5
ENGAGEMENT_WINDOW_DAYS = 56
"""The recent engagement mean averages the scores published over this many days:
one score is a noisy reading of how engaged a tutor is; several weeks of them
are a steadier one."""

K_MATCHED = 5.0
"""Weight of the tutor's overall poor rate in the subject and age-band rates: a tutor's
first few sessions in a subject say little about the subject beyond the tutor."""

FEATURE_DOCS: dict[str, str] = {
    "tutor_tenure_days": "days since the tutor onboarded, at the moment",
    "avg_rating": "mean rating of the tutor's non-first sessions submitted before the moment, "
    f"shrunk toward {PRIOR_AVG_RATING} with weight {K_AVG_RATING}",
    "n_ratings": "how many such ratings (the evidence behind avg_rating)",
    "first_session_success_rate": "share of the tutor's rated first sessions rated 3+ stars, "
    f"shrunk toward {PRIOR_FIRST_SUCCESS} with weight {K_FIRST_SUCCESS}",
    "n_rated_first_sessions": "how many rated first sessions (the evidence behind it)",
    "recent_poor_rate": "share of the tutor's rated first sessions rated below 3 stars, each "
    f"weighted 0.5^(how many rated first sessions came after it / {RECENT_HALF_LIFE_SESSIONS:g}),"
    f" shrunk toward {1 - PRIOR_FIRST_SUCCESS:.2f} with weight {K_FIRST_SUCCESS}",
    "engagement_score": "the platform's engagement score in force (latest as_of <= moment); "
    f"{PRIOR_ENGAGEMENT} when the tutor has none yet",
    "engagement_recent_mean": "mean of the engagement scores published in the last "
    f"{ENGAGEMENT_WINDOW_DAYS} days before the moment; the score in force when none was",
    "engagement_trend": f"mean engagement score published in the last {ENGAGEMENT_TREND_DAYS} "
    f"days minus the mean of the {ENGAGEMENT_TREND_DAYS} days before those; 0 when either "
    "span has none",
    "reschedule_rate": "share of the tutor's ended sessions the tutor rescheduled, "
    f"shrunk toward {PRIOR_RESCHEDULE} with weight {K_RESCHEDULE}",
    "no_show_rate": "share of the tutor's ended sessions the tutor missed, "
    f"shrunk toward {PRIOR_NO_SHOW} with weight {K_NO_SHOW}",
    "session_count": "the tutor's sessions completed (ended) before the moment",
    "local_hour": "start hour in the student's time zone, with minutes as a fraction",
    "local_dow": "start weekday in the student's time zone (Monday = 0)",
    "subject": "the session's subject as the platform spells it (the model learns its levels;"
    " a rare or unseen one scores as 'other')",
    "student_age": "the student's age in whole years on the session's local date",
    "n_first_sessions_in_subject": "the tutor's rated first sessions in this session's subject",
    "poor_rate_in_subject": "share of those rated below 3 stars, shrunk toward the tutor's "
    f"overall poor first-session rate (1 - first_session_success_rate) with weight {K_MATCHED}",
    "n_first_sessions_in_age_band": "the tutor's rated first sessions with students of this "
    f"student's age band (fixed bands, edges {AGE_BAND_EDGES}; age on each session's date)",
    "poor_rate_in_age_band": "share of those rated below 3 stars, shrunk like poor_rate_in_subject",
}
MODEL_INPUT_COLUMNS: tuple[str, ...] = tuple(FEATURE_DOCS)
TUTOR_HISTORY_COLUMNS: tuple[str, ...] = MODEL_INPUT_COLUMNS[
    : MODEL_INPUT_COLUMNS.index("local_hour")
]
"""The features that depend on the tutor and the moment only (the rest on the session)."""
MATCHED_HISTORY_COLUMNS: tuple[str, ...] = MODEL_INPUT_COLUMNS[
    MODEL_INPUT_COLUMNS.index("n_first_sessions_in_subject") :
]
"""The tutor's history matched to the session (its subject, its student's age band)."""
_KEY_SCALE = np.int64(10_000_000_000)  # tutor code * scale + epoch seconds


def _utc_index(values) -> pd.DatetimeIndex:
    """Any sequence of instants as a tz-aware UTC DatetimeIndex."""
    return pd.DatetimeIndex(pd.to_datetime(pd.Series(values).reset_index(drop=True), utc=True))


def _ceil_seconds(values) -> np.ndarray:
    """Epoch seconds, rounded up (an event counts only once its whole second has passed)."""
    ns = _utc_index(values).asi8  # type: ignore[attr-defined]
    return -((-ns) // 1_000_000_000)


def _floor_seconds(values) -> np.ndarray:
    """Epoch seconds, rounded down (a moment never reaches into its next second)."""
    return _utc_index(values).asi8 // 1_000_000_000  # type: ignore[attr-defined]


@dataclass
class _EventIndex:
    """Events of one kind, sorted by (tutor, time), with running sums of their values."""

    keys: np.ndarray
    sums: dict[str, np.ndarray]
    values: dict[str, np.ndarray]

    @classmethod
    def build(cls, codes: np.ndarray, seconds: np.ndarray, values: dict[str, np.ndarray]):
        keys = codes.astype(np.int64) * _KEY_SCALE + seconds.astype(np.int64)
        order = np.argsort(keys, kind="stable")
        ordered = {name: np.asarray(v, dtype=float)[order] for name, v in values.items()}
        sums = {name: np.concatenate([[0.0], np.cumsum(v)]) for name, v in ordered.items()}
        return cls(keys=keys[order], sums=sums, values=ordered)

    def totals_before(self, codes: np.ndarray, seconds: np.ndarray) -> dict[str, np.ndarray]:
        """Per query: sum of each value over the tutor's events strictly before the moment."""
        lo = np.searchsorted(self.keys, codes * _KEY_SCALE, side="left")
        hi = np.searchsorted(self.keys, codes * _KEY_SCALE + seconds, side="left")
        return {name: s[hi] - s[lo] for name, s in self.sums.items()}

    def totals_in(self, codes: np.ndarray, start: np.ndarray, end: np.ndarray):
        """Per query: sum of each value over the tutor's events in (start, end]."""
        lo = np.searchsorted(self.keys, codes * _KEY_SCALE + start, side="right")
        hi = np.searchsorted(self.keys, codes * _KEY_SCALE + end, side="right")
        return {name: s[hi] - s[lo] for name, s in self.sums.items()}

    def latest_at_or_before(self, codes: np.ndarray, seconds: np.ndarray, name: str):
        """Per query: the value of the tutor's latest event at or before the moment, or NaN."""
        lo = np.searchsorted(self.keys, codes * _KEY_SCALE, side="left")
        hi = np.searchsorted(self.keys, codes * _KEY_SCALE + seconds, side="right")
        found = hi > lo
        out = np.full(len(codes), np.nan)
        out[found] = self.values[name][hi[found] - 1]
        return out


@dataclass
class _DecayedIndex:
    """Events of one kind sorted by (tutor, time), with recency-weighted running sums:
    per tutor, the latest event before a moment weighs 1 and each earlier one `decay`
    times the one after it. Why running sums through a linear filter: the weighted sum
    over a tutor's first n events is then two lookups, however long the history."""

    keys: np.ndarray
    decay: float
    sums: dict[str, np.ndarray]  # [0, y_0, y_1, ...] with y_j = x_j + decay * y_(j-1)

    @classmethod
    def build(cls, events: _EventIndex, decay: float) -> _DecayedIndex:
        # scipy.signal costs about 2 s to import: only here, off the paths that import
        # this module for its readers (fsp preview, the service's start)
        from scipy.signal import lfilter

        sums = {
            name: np.concatenate([[0.0], lfilter([1.0], [1.0, -decay], v)])
            for name, v in events.values.items()
        }
        return cls(keys=events.keys, decay=decay, sums=sums)

    def totals_before(self, codes: np.ndarray, seconds: np.ndarray) -> dict[str, np.ndarray]:
        """Per query: the recency-weighted sum over the tutor's events strictly before the
        moment (the filter's carry from earlier tutors is taken back out)."""
        lo = np.searchsorted(self.keys, codes * _KEY_SCALE, side="left")
        hi = np.searchsorted(self.keys, codes * _KEY_SCALE + seconds, side="left")
        carried = self.decay ** (hi - lo).astype(float)
        return {name: s[hi] - carried * s[lo] for name, s in self.sums.items()}


@dataclass
class _MatchedIndex:
    """Events keyed by (tutor, a property of the session: its subject, its age band):
    each distinct pair gets its own code, so the pairs' histories never mix."""

    pair_codes: dict[tuple[int, object], int]
    events: _EventIndex

    @classmethod
    def build(cls, codes: np.ndarray, keys: list, seconds: np.ndarray, values: dict):
        pairs = list(zip(codes.tolist(), keys, strict=True))
        pair_codes: dict[tuple[int, object], int] = {}
        for pair in pairs:
            pair_codes.setdefault(pair, len(pair_codes))
        paired = np.fromiter((pair_codes[p] for p in pairs), np.int64, len(pairs))
        return cls(pair_codes, _EventIndex.build(paired, seconds, values))

    def totals_before(self, codes: np.ndarray, keys: list, seconds: np.ndarray):
        """Per query: sums over that tutor's events with that key strictly before the
        moment; zero for a pair never seen."""
        get = self.pair_codes.get
        paired = np.fromiter(
            (get(p, -1) for p in zip(codes.tolist(), keys, strict=True)), np.int64, len(keys)
        )
        totals = self.events.totals_before(np.maximum(paired, 0), seconds)
        return {name: np.where(paired >= 0, v, 0.0) for name, v in totals.items()}


def age_band(ages) -> list[int]:
    """Each age's band (index into the fixed AGE_BAND_EDGES), as plain ints (pair keys)."""
    return np.searchsorted(np.asarray(AGE_BAND_EDGES), np.asarray(ages, float), "right").tolist()


@dataclass
class TutorHistory:
    """Everything known about tutors up to `known_until`, indexed for point-in-time queries.

    Built once (from the database or from frames) and queried for many
    (tutor, moment) pairs at once; a moment after `known_until` sees only what
    was known at `known_until`."""

    tutor_codes: dict[str, int]
    onboarded_seconds: np.ndarray
    sessions: _EventIndex
    ratings: _EventIndex
    engagement: _EventIndex
    recent_firsts: _DecayedIndex
    by_subject: _MatchedIndex
    by_age_band: _MatchedIndex
    known_until: datetime | None = None

    @classmethod
    def from_frames(
        cls,
        tutors: pd.DataFrame,
        sessions: pd.DataFrame,
        feedback: pd.DataFrame,
        engagement: pd.DataFrame,
        known_until: datetime | None = None,
    ) -> TutorHistory:
        """`sessions`: tutor_id, scheduled_start, duration_minutes, status, is_first_session;
        `feedback`: tutor_id, is_first_session, rating, submitted_at, and the rated
        session's subject and student_age (when absent, no rating matches a session's
        subject or age band); `engagement`: tutor_id, as_of, score."""
        codes = {t: i for i, t in enumerate(tutors["tutor_id"].tolist())}
        firsts = _first_ratings(codes, feedback)
        timed = (firsts.seconds, firsts.values)
        return cls(
            tutor_codes=codes,
            onboarded_seconds=_floor_seconds(tutors["onboarded_at"]),
            sessions=_session_index(codes, sessions),
            ratings=_rating_index(codes, feedback),
            recent_firsts=_DecayedIndex.build(
                _EventIndex.build(firsts.codes, *timed), 0.5 ** (1.0 / RECENT_HALF_LIFE_SESSIONS)
            ),
            by_subject=_MatchedIndex.build(firsts.codes, firsts.subjects, *timed),
            by_age_band=_MatchedIndex.build(firsts.codes, firsts.bands, *timed),
            engagement=_EventIndex.build(
                _codes(codes, engagement["tutor_id"]),
                _ceil_seconds(engagement["as_of"]),
                {"score": engagement["score"].to_numpy(), "count": np.ones(len(engagement))},
            ),
            known_until=known_until,
        )

    def knows(self, tutor_id: str) -> bool:
        """True when the tutor exists in the platform data."""
        return tutor_id in self.tutor_codes

    def features(self, tutor_ids, moments) -> pd.DataFrame:
        """Tutor-history features (TUTOR_HISTORY_COLUMNS) for each (tutor, moment) pair."""
        codes, seconds = self._asked(tutor_ids, moments)
        return _history_columns(self, codes, seconds)

    def _asked(self, tutor_ids, moments) -> tuple[np.ndarray, np.ndarray]:
        """The tutors' codes (`UnknownTutor` naming the first one the data lacks) and the
        moments in whole seconds, none later than what the history knows."""
        codes = _codes(self.tutor_codes, pd.Series(tutor_ids))
        if (codes < 0).any():
            unknown = pd.Series(tutor_ids)[codes < 0].iloc[0]
            raise UnknownTutor(f"unknown tutor_id {unknown!r}")
        seconds = _floor_seconds(moments)
        if self.known_until is not None:
            seconds = np.minimum(seconds, _floor_seconds([self.known_until])[0])
        return codes, seconds

    def matched_features(self, tutor_ids, subjects, ages, moments) -> pd.DataFrame:
        """The tutor's history matched to each session (MATCHED_HISTORY_COLUMNS): its
        rated first sessions in the session's subject and with students of the
        session's student's age band, as of each moment."""
        codes, seconds = self._asked(tutor_ids, moments)
        matched = self.matched_at(codes, [str(s) for s in subjects], ages, seconds)
        return pd.DataFrame(matched, columns=list(MATCHED_HISTORY_COLUMNS))

    def matched_at(self, codes: np.ndarray, subjects: list, ages, seconds: np.ndarray):
        """`matched_features` on tutor codes and epoch seconds (already clamped to what
        the history knows), as a matrix in MATCHED_HISTORY_COLUMNS order: the service
        calls this with its snapshot's moment, so both compute alike."""
        r = self.ratings.totals_before(codes, seconds)
        overall = 1.0 - _shrunk(
            r["first_good"], r["first_count"], PRIOR_FIRST_SUCCESS, K_FIRST_SUCCESS
        )
        subject = self.by_subject.totals_before(codes, subjects, seconds)
        band = self.by_age_band.totals_before(codes, age_band(ages), seconds)
        return np.column_stack(
            [
                subject["count"],
                _shrunk(subject["poor"], subject["count"], overall, K_MATCHED),
                band["count"],
                _shrunk(band["poor"], band["count"], overall, K_MATCHED),
            ]
        )


def _codes(mapping: dict[str, int], tutor_ids) -> np.ndarray:
    return pd.Series(tutor_ids).map(mapping).fillna(-1).to_numpy(dtype=np.int64)


def _session_index(codes: dict[str, int], sessions: pd.DataFrame) -> _EventIndex:
    start = pd.to_datetime(sessions["scheduled_start"], utc=True)
    end = start + pd.to_timedelta(sessions["duration_minutes"].to_numpy(), unit="m")
    status = sessions["status"].to_numpy()
    return _EventIndex.build(
        _codes(codes, sessions["tutor_id"]),
        _ceil_seconds(end),
        {
            "completed": status == "completed",
            "rescheduled": status == "rescheduled",
            "no_show": status == "no_show",
        },
    )


def _rating_index(codes: dict[str, int], feedback: pd.DataFrame) -> _EventIndex:
    first = feedback["is_first_session"].to_numpy(dtype=bool)
    rating = feedback["rating"].to_numpy(dtype=float)
    return _EventIndex.build(
        _codes(codes, feedback["tutor_id"]),
        _ceil_seconds(feedback["submitted_at"]),
        {
            "later_count": ~first,
            "later_sum": np.where(first, 0.0, rating),
            "first_count": first,
            "first_good": first & (rating >= 3),
        },
    )


@dataclass(frozen=True)
class _FirstRatings:
    """The ratings of first sessions, with what the matched features key them by."""

    codes: np.ndarray
    seconds: np.ndarray
    subjects: list
    bands: list
    values: dict[str, np.ndarray]  # poor (0/1) and count (1)


def _first_ratings(codes: dict[str, int], feedback: pd.DataFrame) -> _FirstRatings:
    """Only first sessions' ratings: what the recency-weighted and matched rates count.
    Subject and age are optional columns (a rating without them matches nothing)."""
    first = feedback[feedback["is_first_session"].to_numpy(dtype=bool)]
    n = len(first)
    poor = (first["rating"].to_numpy(dtype=float) < POOR_RATING_BELOW).astype(float)
    subjects = first["subject"].astype(str).tolist() if "subject" in first else [None] * n
    ages = first["student_age"].to_numpy(dtype=float) if "student_age" in first else None
    return _FirstRatings(
        codes=_codes(codes, first["tutor_id"]),
        seconds=_ceil_seconds(first["submitted_at"]),
        subjects=subjects,
        bands=age_band(ages) if ages is not None else [None] * n,
        values={"poor": poor, "count": np.ones(n)},
    )


def _shrunk(hits: np.ndarray, n: np.ndarray, prior, k: float) -> np.ndarray:
    return (hits + k * prior) / (n + k)


def _engagement_trend(engagement: _EventIndex, codes: np.ndarray, seconds: np.ndarray):
    """Mean score of the last span minus the mean of the span before it: whether a
    tutor's engagement is rising or falling, which one reading in force cannot tell.
    0 (no trend known) when either span has no score."""
    span = ENGAGEMENT_TREND_DAYS * 86400
    middle = np.maximum(seconds - span, 0)  # keys stay in the tutor
    recent = engagement.totals_in(codes, middle, seconds)
    older = engagement.totals_in(codes, np.maximum(seconds - 2 * span, 0), middle)
    both = (recent["count"] > 0) & (older["count"] > 0)
    new_mean = recent["score"] / np.where(both, recent["count"], 1.0)
    old_mean = older["score"] / np.where(both, older["count"], 1.0)
    return np.where(both, new_mean - old_mean, 0.0)


def _history_columns(history: TutorHistory, codes: np.ndarray, seconds: np.ndarray):
    s = history.sessions.totals_before(codes, seconds)
    r = history.ratings.totals_before(codes, seconds)
    engagement = history.engagement.latest_at_or_before(codes, seconds, "score")
    engagement = np.where(np.isnan(engagement), PRIOR_ENGAGEMENT, engagement)
    since = np.maximum(seconds - ENGAGEMENT_WINDOW_DAYS * 86400, 0)  # keys stay in the tutor
    window = history.engagement.totals_in(codes, since, seconds)
    recent = np.divide(
        window["score"], window["count"], out=engagement.copy(), where=window["count"] > 0
    )
    ended = s["completed"] + s["rescheduled"] + s["no_show"]
    tenure = (seconds - history.onboarded_seconds[codes]) / 86400.0
    decayed = history.recent_firsts.totals_before(codes, seconds)
    return pd.DataFrame(
        {
            "tutor_tenure_days": np.maximum(tenure, 0.0),
            "avg_rating": _shrunk(r["later_sum"], r["later_count"], PRIOR_AVG_RATING, K_AVG_RATING),
            "n_ratings": r["later_count"],
            "first_session_success_rate": _shrunk(
                r["first_good"], r["first_count"], PRIOR_FIRST_SUCCESS, K_FIRST_SUCCESS
            ),
            "n_rated_first_sessions": r["first_count"],
            "recent_poor_rate": _shrunk(
                decayed["poor"], decayed["count"], 1.0 - PRIOR_FIRST_SUCCESS, K_FIRST_SUCCESS
            ),
            "engagement_score": engagement,
            "engagement_recent_mean": recent,
            "engagement_trend": _engagement_trend(history.engagement, codes, seconds),
            "reschedule_rate": _shrunk(s["rescheduled"], ended, PRIOR_RESCHEDULE, K_RESCHEDULE),
            "no_show_rate": _shrunk(s["no_show"], ended, PRIOR_NO_SHOW, K_NO_SHOW),
            "session_count": s["completed"],
        }
    )


def local_time_features(scheduled_start, timezones) -> pd.DataFrame:
    """local_hour (fractional) and local_dow of each start in its student's time zone."""
    local = local_calendar(_floor_seconds(scheduled_start), timezones)
    return pd.DataFrame({"local_hour": local.hour, "local_dow": local.dow})


def age_on(birth_dates, scheduled_start, timezones) -> np.ndarray:
    """Whole years between birth date and the session's local date."""
    local = local_calendar(_floor_seconds(scheduled_start), timezones)
    birth = pd.DatetimeIndex(pd.to_datetime(pd.Series(birth_dates).reset_index(drop=True)))
    age = local.age(birth.year.to_numpy(), (birth.month * 100 + birth.day).to_numpy())
    return age.astype(float)


def build_model_input(history: TutorHistory, sessions: pd.DataFrame, moments) -> pd.DataFrame:
    """The model's raw input for sessions, each as of its moment.

    `sessions` has tutor_id, subject, scheduled_start, timezone and either
    student_age or birth_date."""
    sessions = sessions.reset_index(drop=True)
    tutor = history.features(sessions["tutor_id"], moments)
    local = local_time_features(sessions["scheduled_start"], sessions["timezone"])
    if "student_age" in sessions:
        age = sessions["student_age"].to_numpy(dtype=float)
    else:
        age = age_on(sessions["birth_date"], sessions["scheduled_start"], sessions["timezone"])
    subjects = sessions["subject"].astype(str).to_numpy()
    matched = history.matched_features(sessions["tutor_id"], subjects, age, moments)
    frame = pd.concat([tutor, local, matched], axis=1)
    frame["subject"] = subjects
    frame["student_age"] = age
    return frame[list(MODEL_INPUT_COLUMNS)]


def _epoch_us(column: str, name: str) -> str:
    """SQL for an instant as integer microseconds since the epoch (fast to bring into numpy)."""
    return f"(extract(epoch FROM {column}) * 1000000)::bigint AS {name}"


_HISTORY_QUERIES = {
    "tutors": f"SELECT tutor_id, {_epoch_us('onboarded_at', 'onboarded_at')}"  # noqa: S608  (SQL text from our own constants; values bound as parameters)
    " FROM platform.tutors ORDER BY tutor_id",
    "sessions": f"SELECT tutor_id, {_epoch_us('scheduled_start', 'scheduled_start')},"  # noqa: S608  (SQL text from our own constants; values bound as parameters)
    " duration_minutes, status, is_first_session"
    " FROM platform.sessions WHERE scheduled_start < %(t)s"
    " AND status IN ('completed', 'rescheduled', 'no_show')",
    "feedback": f"SELECT s.tutor_id, s.is_first_session, f.rating,"  # noqa: S608  (SQL text from our own constants; values bound as parameters)
    f" {_epoch_us('f.submitted_at', 'submitted_at')}, s.subject,"
    f" {_epoch_us('s.scheduled_start', 'scheduled_start')}, st.birth_date, st.timezone"
    " FROM platform.feedback f JOIN platform.sessions s USING (session_id)"
    " JOIN platform.students st USING (student_id)"
    " WHERE f.submitted_at < %(t)s",
    "engagement": f"SELECT tutor_id, {_epoch_us('as_of', 'as_of')}, score"  # noqa: S608  (SQL text from our own constants; values bound as parameters)
    " FROM platform.tutor_engagement WHERE as_of <= %(t)s",
}
_HISTORY_INSTANTS = {
    "tutors": "onboarded_at",
    "sessions": "scheduled_start",
    "feedback": "submitted_at",
    "engagement": "as_of",
}


def read_frame(
    conn: psycopg.Connection, sql: str, params: dict | None = None, *, infer: bool = True
) -> pd.DataFrame:
    """A query's rows as a DataFrame (column names from the cursor).

    `infer=False` keeps Python objects as they come (no dtype inference), which is
    much faster on wide reads when the caller converts the columns it needs."""
    with conn.cursor() as cur:
        cur.execute(sql, params)  # type: ignore[arg-type]
        columns = [d.name for d in cur.description or []]
        rows = cur.fetchall()
    if infer:
        return pd.DataFrame(rows, columns=columns)
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _read_history_frame(conn: psycopg.Connection, name: str, known_until: datetime) -> pd.DataFrame:
    frame = read_frame(conn, _HISTORY_QUERIES[name], {"t": known_until}, infer=False)
    instant = _HISTORY_INSTANTS[name]
    frame[instant] = pd.to_datetime(frame[instant].to_numpy(dtype=np.int64), unit="us", utc=True)
    return frame


def _with_rated_ages(feedback: pd.DataFrame) -> pd.DataFrame:
    """The rated session's student age (on its local date, as `build_model_input` counts
    it) for first sessions; NaN for the others, which no matched feature reads."""
    start = pd.to_datetime(
        feedback["scheduled_start"].to_numpy(dtype=np.int64), unit="us", utc=True
    )
    first = feedback["is_first_session"].to_numpy(dtype=bool)
    ages = np.full(len(feedback), np.nan)
    if first.any():
        rows = feedback[first]
        ages[first] = age_on(rows["birth_date"], start[first], rows["timezone"].to_numpy())
    return feedback.assign(student_age=ages)


def load_history(conn: psycopg.Connection, known_until: datetime) -> TutorHistory:
    """Read the platform's tutor history as it stood at `known_until`."""
    frames = {name: _read_history_frame(conn, name, known_until) for name in _HISTORY_QUERIES}
    frames["feedback"] = _with_rated_ages(frames["feedback"])
    return TutorHistory.from_frames(
        frames["tutors"], frames["sessions"], frames["feedback"], frames["engagement"], known_until
    )


FACTOR_LABELS: dict[str, str] = {
    "tutor_tenure_days": "time since the tutor joined",
    "avg_rating": "the tutor's ratings from returning students",
    "n_ratings": "how many ratings the tutor has",
    "first_session_success_rate": "how the tutor's past first sessions went",
    "n_rated_first_sessions": "how many rated first sessions the tutor has had",
    "recent_poor_rate": "how the tutor's latest first sessions went",
    "engagement_score": "the tutor's engagement on the platform",
    "engagement_recent_mean": "the tutor's engagement over recent weeks",
    "engagement_trend": "whether the tutor's engagement is rising or falling",
    "reschedule_rate": "how often the tutor reschedules",
    "no_show_rate": "how often the tutor misses sessions",
    "session_count": "how many sessions the tutor has taught",
    "local_hour": "the time of day for the student",
    "local_dow": "the day of the week",
    "subject": "the subject",
    "student_age": "the student's age",
    "n_first_sessions_in_subject": "how many first sessions the tutor has had in this subject",
    "poor_rate_in_subject": "how the tutor's past first sessions in this subject went",
    "n_first_sessions_in_age_band": "how many first sessions the tutor has had with students "
    "of this age",
    "poor_rate_in_age_band": "how the tutor's past first sessions with students of this age went",
}
"""Plain words for each feature, for API reasons and tutor emails."""
