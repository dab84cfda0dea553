"""Synthetic platform history for demos and tests (`fsp demo-data`).

The generative story, one tutor at a time:

1. **Tutors** onboard over time: 40 % before the history window (up to two years
   earlier), the rest during it. Each has a hidden *quality* q ~ N(0, 1), a
   *reliability* (a tutor-moved reschedule rate of 2-15 % and a no-show rate of
   0.5-5 %, both worse for lower q), a baseline *engagement* and one to three
   subjects out of the 16.
2. **Engagement** is recomputed weekly from onboarding: a noisy walk around the
   tutor's baseline, squashed into [0, 1]; the history is kept (as_of, score).
3. **New students** book first sessions with each tutor as a Poisson process
   (a tutor-specific rate) from the later of onboarding and the window start
   until a week after `now`. A student lives in one of seven US time zones
   and is 6-50 years old (mostly school age). Sessions start at a local hour
   that depends on age (children after school, adults in the evening, a few
   early or late slots) and are booked 1 hour to 10 days ahead.
4. **Outcome.** A first session that starts before `now` is cancelled by the
   student (5 %), rescheduled or missed by the tutor (the tutor's rates), or
   completed. A completed first session is *poor* with probability
   sigmoid(-2.5 - 0.85 q + 0.7 exp(-tenure/45 days) - 1.6 (engagement - 0.5)
   + 8 (reschedule rate - 0.06) + 15 (no-show rate - 0.02) + subject effect
   + 0.55 [local hour < 8 or >= 21] + age effect + N(0, 0.6) noise nobody
   observes). Poor sessions are rated 1-2 stars, others 3-5 (better tutors
   higher). 80 % of completed first sessions get a rating, submitted a few
   hours (exponential, mean 8 h) after the session ends; ratings due after
   `now` have not arrived yet.
5. **Follow-ups**: a good completed first session leads to a Poisson number
   of weekly follow-up sessions (2 + 3.5 sigmoid(q) on average), rated half of the
   time around 4.1 + 0.5 q stars. Follow-ups that fall after `now` are still
   `scheduled`, like every first session booked for the days after `now`.

The observable traces of q (ratings, first-session success, reschedules,
no-shows, engagement) are what the point-in-time features measure.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg

from training.constants import SUBJECTS
from training.errors import InvalidInput, PlatformNotEmpty

TIMEZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
)
_TZ_WEIGHTS = np.array([0.40, 0.25, 0.08, 0.04, 0.18, 0.02, 0.03])
_SUBJECT_EFFECT = np.linspace(-0.35, 0.45, len(SUBJECTS))
_DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class DemoSpec:
    """What to generate: how many tutors, how many days of history before `now`."""

    tutors: int
    days: int
    seed: int
    now: datetime
    lookahead_days: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.tutors <= 100_000:
            raise InvalidInput(f"--tutors must be between 1 and 100000, got {self.tutors}")
        if not 7 <= self.days <= 3650:
            raise InvalidInput(f"--days must be between 7 and 3650, got {self.days}")
        if self.now.tzinfo is None:
            raise InvalidInput("--now must carry a UTC offset, e.g. 2026-11-01T12:00:00+00:00")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_tutors(spec: DemoSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Tutors with their hidden traits (the traits stay in memory, never in the DB)."""
    n = spec.tutors
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    window_start = now - spec.days * _DAY
    before = rng.random(n) < 0.4
    offset_days = np.where(before, -rng.uniform(0, 730, n), rng.uniform(0, spec.days - 3, n))
    onboarded = window_start + (offset_days * 86400).astype("timedelta64[s]")
    quality = rng.normal(0, 1, n)
    ids = np.char.add("T", np.char.zfill(np.arange(1, n + 1).astype(str), 5))
    return pd.DataFrame(
        {
            "tutor_id": ids,
            "name": [f"Tutor {i}" for i in range(1, n + 1)],
            "email": [f"tutor{i}@tutors.example" for i in range(1, n + 1)],
            "onboarded_at": onboarded,
            "quality": quality,
            "resched_p": np.clip(0.06 - 0.025 * quality + rng.normal(0, 0.02, n), 0.02, 0.15),
            "noshow_p": np.clip(0.02 - 0.01 * quality + rng.normal(0, 0.008, n), 0.005, 0.05),
            "engagement_base": 0.4 * quality + rng.normal(0, 0.6, n),
            "rate_per_day": rng.gamma(2.0, 0.11, n),
        }
    )


def make_engagement(tutors: pd.DataFrame, spec: DemoSpec, rng: np.random.Generator):
    """Weekly engagement scores from onboarding to `now` (a history, not a value)."""
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    age = now - tutors["onboarded_at"].to_numpy()
    weeks = (age / (7 * _DAY)).astype(int) + 1  # type: ignore[operator]
    idx = np.repeat(np.arange(len(tutors)), weeks)
    k = np.arange(len(idx)) - np.repeat(np.cumsum(weeks) - weeks, weeks)
    walk = rng.normal(0, 0.15, len(idx))
    score = _sigmoid(tutors["engagement_base"].to_numpy()[idx] + walk)
    as_of = tutors["onboarded_at"].to_numpy()[idx] + (k * 7 * 86400).astype("timedelta64[s]")
    return pd.DataFrame(
        {"tutor_id": tutors["tutor_id"].to_numpy()[idx], "as_of": as_of, "score": score.round(4)}
    )


def _local_hours(age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A local start hour (with minutes as a fraction of 0.5) fitted to the student's age."""
    kid = rng.choice(np.arange(15, 21), size=len(age))
    adult = rng.choice(np.arange(17, 23), size=len(age))
    odd = rng.choice(np.array([6, 7, 9, 10, 12, 21, 22, 23]), size=len(age))
    hour = np.where(age < 18, kid, adult)
    hour = np.where(rng.random(len(age)) < 0.15, odd, hour)
    return hour + 0.5 * (rng.random(len(age)) < 0.3)


def _ages(n: int, rng: np.random.Generator) -> np.ndarray:
    school = rng.integers(6, 18, n)
    adult = rng.integers(18, 51, n)
    return np.where(rng.random(n) < 0.78, school, adult)


def _to_utc(local_naive: np.ndarray, tz_names: np.ndarray) -> np.ndarray:
    """Local wall-clock times in each row's zone → UTC instants (DST-aware)."""
    out = np.empty(len(local_naive), dtype="datetime64[ns]")
    for tz in np.unique(tz_names):
        mask = tz_names == tz
        local = pd.DatetimeIndex(local_naive[mask]).tz_localize(
            tz,
            ambiguous=np.zeros(int(mask.sum()), dtype=bool),  # the later (standard-time) instant
            nonexistent="shift_forward",
        )
        out[mask] = local.tz_convert("UTC").tz_localize(None).to_numpy()
    return out


def make_first_sessions(tutors: pd.DataFrame, spec: DemoSpec, rng: np.random.Generator):
    """First sessions with their students, each a new student of that tutor."""
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    start_of_window = np.maximum(tutors["onboarded_at"].to_numpy(), now - spec.days * _DAY)
    end = now + spec.lookahead_days * _DAY
    span_days = (end - start_of_window) / _DAY
    counts = rng.poisson(tutors["rate_per_day"].to_numpy() * span_days)
    t = np.repeat(np.arange(len(tutors)), counts)
    n = len(t)
    day = start_of_window[t] + (rng.uniform(0, 1, n) * span_days[t] * 86400).astype(
        "timedelta64[s]"
    )
    age = _ages(n, rng)
    tz = rng.choice(np.array(TIMEZONES), size=n, p=_TZ_WEIGHTS / _TZ_WEIGHTS.sum())
    local_hour = _local_hours(age, rng)
    local = day.astype("datetime64[D]") + (local_hour * 3600).astype("timedelta64[s]")
    start = _to_utc(local.astype("datetime64[ns]"), tz).astype("datetime64[s]")
    subjects = rng.integers(0, len(SUBJECTS), n)
    frame = pd.DataFrame(
        {"t": t, "start": start, "age": age, "tz": tz, "local_hour": local_hour, "subj": subjects}
    )
    keep = (frame["start"].to_numpy() > tutors["onboarded_at"].to_numpy()[t]) & (
        frame["start"].to_numpy() <= end
    )
    return frame[keep].reset_index(drop=True)


def _poor_probability(first: pd.DataFrame, tutors: pd.DataFrame) -> np.ndarray:
    """The generative risk of a completed first session (module docstring, step 4)."""
    tut = tutors.iloc[first["t"].to_numpy()]
    tenure = (first["start"].to_numpy() - tut["onboarded_at"].to_numpy()) / _DAY
    hour = first["local_hour"].to_numpy()
    age = first["age"].to_numpy()
    age_effect = np.select([age < 10, age < 14, age < 18], [0.35, 0.0, 0.2], -0.25)
    logit = (
        -2.5
        - 0.85 * tut["quality"].to_numpy()
        + 0.7 * np.exp(-tenure / 45.0)
        - 1.6 * (_sigmoid(tut["engagement_base"].to_numpy()) - 0.5)
        + 8.0 * (tut["resched_p"].to_numpy() - 0.06)
        + 15.0 * (tut["noshow_p"].to_numpy() - 0.02)
        + _SUBJECT_EFFECT[first["subj"].to_numpy()]
        + 0.55 * ((hour < 8) | (hour >= 21))
        + age_effect
    )
    return _sigmoid(logit)


def _statuses(
    start: np.ndarray, t: np.ndarray, tutors: pd.DataFrame, now, rng: np.random.Generator
) -> np.ndarray:
    """Final states for sessions that started before `now`; 'scheduled' after it."""
    u = rng.random(len(start))
    resched = tutors["resched_p"].to_numpy()[t]
    noshow = tutors["noshow_p"].to_numpy()[t]
    status = np.where(
        u < 0.05,
        "cancelled",
        np.where(
            u < 0.05 + resched,
            "rescheduled",
            np.where(u < 0.05 + resched + noshow, "no_show", "completed"),
        ),
    )
    return np.where(start < now, status, "scheduled")


def make_follow_ups(first: pd.DataFrame, tutors: pd.DataFrame, rng: np.random.Generator):
    """Weekly follow-ups after good completed first sessions."""
    good = first[(first["status"] == "completed") & ~first["poor"]]
    q = tutors["quality"].to_numpy()[good["t"].to_numpy()]
    counts = rng.poisson(2.0 + 3.5 * _sigmoid(q))
    rows = good.loc[good.index.repeat(counts)].copy()
    k = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    jitter = rng.normal(0, 3600, len(rows)).astype("timedelta64[s]")
    rows["start"] = rows["start"].to_numpy() + (k * 7 * _DAY).astype("timedelta64[s]") + jitter
    rows["is_first"] = False
    return rows.reset_index(drop=True)


def _ratings(sessions: pd.DataFrame, tutors: pd.DataFrame, rng: np.random.Generator):
    """Star ratings for completed sessions that the student chose to rate."""
    q = tutors["quality"].to_numpy()[sessions["t"].to_numpy()]
    good = np.clip(np.round(4.1 + 0.5 * q + rng.normal(0, 0.7, len(q))), 3, 5)
    poor = np.where(rng.random(len(q)) < 0.4, 1, 2)
    rating = np.where(sessions["poor"].to_numpy(), poor, good).astype(int)
    rate_share = np.where(sessions["is_first"].to_numpy(), 0.8, 0.5)
    rated = (sessions["status"].to_numpy() == "completed") & (rng.random(len(q)) < rate_share)
    delay = (rng.exponential(8 * 3600, len(q)) + 60).astype("timedelta64[s]")
    end = sessions["start"].to_numpy() + (sessions["duration_minutes"].to_numpy() * 60).astype(
        "timedelta64[s]"
    )
    return rating, rated, end + delay


def generate(spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """All five platform tables as DataFrames (timestamps are naive UTC)."""
    rng = np.random.default_rng(spec.seed)
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    tutors = make_tutors(spec, rng)
    first = make_first_sessions(tutors, spec, rng)
    first["is_first"] = True
    first["student_idx"] = np.arange(len(first))
    first["status"] = _statuses(first["start"].to_numpy(), first["t"].to_numpy(), tutors, now, rng)
    first["poor"] = rng.random(len(first)) < _poor_probability(first, tutors)
    follow = make_follow_ups(first, tutors, rng)
    follow["status"] = _statuses(
        follow["start"].to_numpy(), follow["t"].to_numpy(), tutors, now, rng
    )
    follow["poor"] = False
    sessions = pd.concat([first, follow], ignore_index=True).sort_values("start", kind="stable")
    sessions = sessions.reset_index(drop=True)
    sessions["duration_minutes"] = rng.choice([30, 45, 60, 60, 60, 90], size=len(sessions))
    lead = rng.uniform(3600, 10 * 86400, len(sessions)).astype("timedelta64[s]")
    created = sessions["start"].to_numpy() - lead
    created = np.maximum(created, tutors["onboarded_at"].to_numpy()[sessions["t"].to_numpy()])
    sessions["created_at"] = np.minimum(created, now - np.timedelta64(60, "s"))
    sessions["session_id"] = np.char.add(
        "S", np.char.zfill(np.arange(1, len(sessions) + 1).astype(str), 7)
    )
    rating, rated, submitted = _ratings(sessions, tutors, rng)
    arrived = rated & (submitted < now)
    return {
        "tutors": tutors[["tutor_id", "name", "email", "onboarded_at"]],
        "students": _students(first, rng),
        "sessions": _session_rows(sessions, tutors),
        "feedback": pd.DataFrame(
            {
                "session_id": sessions["session_id"].to_numpy()[arrived],
                "rating": rating[arrived],
                "submitted_at": submitted[arrived],
            }
        ),
        "tutor_engagement": make_engagement(tutors, spec, rng),
    }


def _student_ids(idx: np.ndarray) -> np.ndarray:
    return np.char.add("ST", np.char.zfill(idx.astype(str), 6))


def _students(first: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    days_old = first["age"].to_numpy() * 365.25 + rng.uniform(1, 364, len(first))
    birth = first["start"].to_numpy().astype("datetime64[D]") - days_old.astype("timedelta64[D]")
    idx = first["student_idx"].to_numpy() + 1
    return pd.DataFrame(
        {
            "student_id": _student_ids(idx),
            "name": [f"Student {i}" for i in idx],
            "birth_date": birth,
            "timezone": first["tz"].to_numpy(),
        }
    )


def _session_rows(sessions: pd.DataFrame, tutors: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": sessions["session_id"].to_numpy(),
            "tutor_id": tutors["tutor_id"].to_numpy()[sessions["t"].to_numpy()],
            "student_id": _student_ids(sessions["student_idx"].to_numpy() + 1),
            "subject": np.array(SUBJECTS)[sessions["subj"].to_numpy()],
            "scheduled_start": sessions["start"].to_numpy(),
            "duration_minutes": sessions["duration_minutes"].to_numpy(),
            "status": sessions["status"].to_numpy(),
            "is_first_session": sessions["is_first"].to_numpy(),
            "created_at": sessions["created_at"].to_numpy(),
        }
    )


TABLE_ORDER = ("tutors", "students", "sessions", "feedback", "tutor_engagement")


def _copy_frame(conn: psycopg.Connection, table: str, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S")
    columns = ", ".join(frame.columns)
    with conn.cursor().copy(
        f"COPY platform.{table} ({columns}) FROM STDIN WITH (FORMAT csv)"
    ) as cp:
        cp.write(buffer.getvalue())


def write(conn: psycopg.Connection, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    """COPY every table in one transaction; refuse when the platform already has data."""
    from training.db import ensure_platform_schema, platform_is_empty

    ensure_platform_schema(conn)
    with conn.transaction():
        conn.execute("LOCK TABLE platform.tutors IN EXCLUSIVE MODE")
        if not platform_is_empty(conn):
            raise PlatformNotEmpty(
                "platform tables already hold data; demo-data only fills an empty platform"
            )
        conn.execute("SET LOCAL TIME ZONE 'UTC'")
        for table in TABLE_ORDER:
            _copy_frame(conn, table, frames[table])
    return {table: len(frames[table]) for table in TABLE_ORDER}


def summarize(frames: dict[str, pd.DataFrame], now: datetime) -> dict[str, float]:
    """Headline figures of a generated history (for the CLI and the demo)."""
    sessions = frames["sessions"]
    first = sessions[sessions["is_first_session"]]
    rated = first.merge(frames["feedback"], on="session_id")
    upcoming = first["status"] == "scheduled"
    return {
        "sessions": len(sessions),
        "first_sessions": len(first),
        "rated_first_sessions": len(rated),
        "poor_rate": float((rated["rating"] < 3).mean()) if len(rated) else 0.0,
        "upcoming_first_sessions": int(upcoming.sum()),
    }


def default_now() -> datetime:
    """The clock, to the minute, in UTC."""
    from datetime import UTC

    return datetime.now(UTC).replace(second=0, microsecond=0)
