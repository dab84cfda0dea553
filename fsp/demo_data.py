"""Synthetic platform history for demos and tests (`fsp demo-data`).

The generative story, one tutor at a time:

1. **Tutors** onboard over time: 40 % before the history window (up to two years
   earlier), the rest during it. Each has a hidden *quality* q ~ N(0, 1), a
   *reliability* (a tutor-moved reschedule rate of 2-15 % and a no-show rate of
   0.5-5 %, both worse for lower q), a baseline *engagement* and a rate of new
   students.
2. **Engagement** is recomputed weekly from onboarding: a noisy walk around the
   tutor's baseline, squashed into [0, 1]; the history is kept (as_of, score).
3. **New students** book first sessions with each tutor as a Poisson process
   (a tutor-specific rate) from the later of onboarding and the window start
   until a week after `now`. A student lives in one of the platform's time
   zones (drawn by the platform's weights) and is 6-50 years old (mostly school
   age). Sessions start at a local hour that depends on age (children after
   school, adults in the evening, a few early or late slots) and are booked
   1 hour to 10 days ahead. The subject is drawn from the platform's mix.
4. **Outcome.** A first session that starts before `now` is cancelled by the
   student (5 %), rescheduled or missed by the tutor (the tutor's rates), or
   completed. A completed first session is *poor* with probability
   sigmoid(-2.5 - 0.85 q + 0.7 exp(-tenure/45 days) - 1.6 (engagement - 0.5)
   + 8 (reschedule rate - 0.06) + 15 (no-show rate - 0.02) + subject effect
   + 0.55 [local hour < 8 or >= 21] + age effect + shift lift). Poor sessions
   are rated 1-2 stars, others 3-5 (better tutors higher). 80 % of completed
   first sessions get a rating, submitted a few hours (exponential, mean 8 h)
   after the session ends; ratings due after `now` have not arrived yet.
5. **Follow-ups**: a good completed first session leads to a Poisson number
   of weekly follow-up sessions (2 + 3.5 sigmoid(q) on average), rated half of the
   time around 4.1 + 0.5 q stars. Follow-ups that fall after `now` are still
   `scheduled`, like every first session booked for the days after `now`.

The observable traces of q (ratings, first-session success, reschedules,
no-shows, engagement) are what the point-in-time features measure.

**Platforms** (`DemoSpec.platform`, a key of `PLATFORMS`). A `PlatformProfile`
is everything that makes one platform look unlike another: its subjects as it
spells them, their mix and their effects on the logit, its time zones and their
weights, the shapes of its tutor, student and session ids, and how its people
are named. "default" is the original world (16 lower-case subjects, seven US
zones, ids like T00001 / ST000001 / S0000001; a seed gives the same history as
before profiles existed). "international" spells subjects with capitals,
spaces and accents ("AP Physics", "Mathématiques", ...), lives in zones with
half-hour and 45-minute offsets and southern-hemisphere daylight saving, and
uses ids such as "tutor-7f3a9c2e", "Tütor 'Ω' 12", "stu_<uuid4 hex>" and
UUID session ids, to exercise every path that must not assume the default.

**Shift** (`DemoSpec.shift`). Over the last `PlatformShift.days` (30) days
before `now`, and for the sessions booked after `now`, the platform changes
(`PlatformProfile.shift` says how):
- every tutor's engagement scores from then on drop by a tutor-specific
  U(0.15, 0.25) (clipped at 0): the observable drifts; the hidden engagement in
  the risk formula does not;
- the subject mix shifts: one rare subject (`rising_subject`) takes
  `rising_share` of the new first sessions, the others share the rest in their
  old proportions;
- the poor-session logit rises by `logit_lift` (0.6) for every first session;
- the subject effects change (`PlatformProfile.shifted_effects`): the subject
  that was most common before (`flipped_subject`) becomes strongly
  risk-raising (+1.5) and the newly common one strongly risk-lowering (-1.0),
  so the subject ranking a model learnt before the shift misleads, and a model
  retrained on post-shift data ranks sessions better (measured with a logistic
  model on subject and tutor risk, 300 tutors: AUC on the scheduled sessions
  about 0.81 retrained vs 0.76 pre-shift; a +1.0 flip alone gained 0.00-0.01,
  not reliably).
Before `now - days` the history has the same distribution as without the
shift: the shift's own draws come from a separate seeded stream.

**Truth.** `generate` also returns `"truth"`: one row per first session (past
and scheduled) with `p_poor`, the very probability from which its `poor`
outcome was drawn (the outcome if the session is completed; drawn for future
sessions too), and `poor`, that outcome. `write` ignores it (it writes only
`TABLE_ORDER`); `truth_frame` joins it to the first sessions' platform rows.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg

from fsp.calendar import zone
from fsp.errors import InvalidInput, PlatformNotEmpty

_DAY = np.timedelta64(1, "D")

IdMaker = Callable[[np.ndarray, np.random.Generator], Sequence[str]]
"""(1-based ordinal numbers, the seeded id stream) → one id (or name) per number."""


@dataclass(frozen=True)
class PlatformShift:
    """How a platform changes over its last `days` days when `DemoSpec.shift` is set."""

    rising_subject: str
    """Rare before the shift; `rising_share` of new first sessions, with `rising_effect`, after."""
    flipped_subject: str
    """Most common before the shift; its effect becomes `flipped_effect` after it."""
    rising_share: float = 0.30
    flipped_effect: float = 1.5
    rising_effect: float = -1.0
    logit_lift: float = 0.6
    engagement_drop: tuple[float, float] = (0.15, 0.25)
    days: int = 30


@dataclass(frozen=True)
class PlatformProfile:
    """Everything that makes one platform's history look unlike another's."""

    name: str
    subjects: tuple[str, ...]
    subject_weights: tuple[float, ...]
    subject_effects: tuple[float, ...]
    """Added to the poor-session logit, per subject (same order as `subjects`)."""
    timezones: tuple[str, ...]
    timezone_weights: tuple[float, ...]
    tutor_ids: IdMaker
    student_ids: IdMaker
    session_ids: IdMaker
    tutor_names: IdMaker
    tutor_emails: IdMaker
    student_names: IdMaker
    shift: PlatformShift
    """What `DemoSpec.shift` changes on this platform."""

    def __post_init__(self) -> None:
        """A malformed profile is a programming error: fail at import, not mid-generation."""
        subjects = self.subjects, set(self.subjects), self.subject_weights, self.subject_effects
        if len({len(x) for x in subjects}) != 1:
            raise ValueError(f"{self.name}: distinct subjects, weights and effects must align")
        if len(self.timezones) != len(self.timezone_weights):
            raise ValueError(f"{self.name}: time zones and weights must align")
        unknown = {self.shift.rising_subject, self.shift.flipped_subject} - set(self.subjects)
        if unknown:
            raise ValueError(f"{self.name}: the shift names unknown subjects {sorted(unknown)}")

    def effects(self) -> dict[str, float]:
        """Subject → its logit effect before any shift (what a test looks up)."""
        return dict(zip(self.subjects, self.subject_effects, strict=True))

    def shifted_weights(self) -> np.ndarray:
        """The subject mix during the shift: the rising subject takes its share."""
        w = np.asarray(self.subject_weights, dtype=float)
        rising = self.subjects.index(self.shift.rising_subject)
        w[rising] = 0.0
        w = w / w.sum() * (1.0 - self.shift.rising_share)
        w[rising] = self.shift.rising_share
        return w

    def shifted_effects(self) -> np.ndarray:
        """The subject effects during the shift: the once most common subject turns
        risky, the newly common one safe, so the old subject ranking misleads."""
        effects = np.asarray(self.subject_effects, dtype=float).copy()
        effects[self.subjects.index(self.shift.flipped_subject)] = self.shift.flipped_effect
        effects[self.subjects.index(self.shift.rising_subject)] = self.shift.rising_effect
        return effects


def _numbered(prefix: str, width: int) -> IdMaker:
    """Ids like T00001: a prefix and the zero-padded ordinal (the default platform)."""

    def make(idx: np.ndarray, rng: np.random.Generator) -> Sequence[str]:
        return np.char.add(prefix, np.char.zfill(idx.astype(str), width)).tolist()

    return make


def _formatted(template: str) -> IdMaker:
    """Names or addresses from a template with the ordinal as {i}."""

    def make(idx: np.ndarray, rng: np.random.Generator) -> Sequence[str]:
        return [template.format(i=i) for i in idx]

    return make


def _uuid4s(n: int, rng: np.random.Generator) -> list[uuid.UUID]:
    """Version-4 UUIDs from the seeded stream (uuid.uuid4 would not be reproducible)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return [uuid.UUID(bytes=row.tobytes()) for row in raw]


def _student_uuid_ids(idx: np.ndarray, rng: np.random.Generator) -> Sequence[str]:
    return [f"stu_{u.hex}" for u in _uuid4s(len(idx), rng)]


def _session_uuid_ids(idx: np.ndarray, rng: np.random.Generator) -> Sequence[str]:
    return [str(u) for u in _uuid4s(len(idx), rng)]


_ODD_TUTOR_IDS = ("Tütor 'Ω' {i}", "mentor #{i} — d'Artagnan", "tutor-{h}", "tutor-{h}")


def _international_tutor_ids(idx: np.ndarray, rng: np.random.Generator) -> Sequence[str]:
    """Half "tutor-<8 hex>", half with spaces, a quote and non-ASCII ("Tütor 'Ω' 12").

    The hex is a salted multiplicative hash of the ordinal: random-looking yet
    unique (an odd multiplier and an XOR are bijections on 32-bit numbers)."""
    salt = np.uint64(rng.integers(0, 2**32))
    mixed = (idx.astype(np.uint64) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)
    hashed = mixed ^ salt
    return [
        _ODD_TUTOR_IDS[i % len(_ODD_TUTOR_IDS)].format(i=i, h=f"{int(h):08x}")
        for i, h in zip(idx, hashed, strict=True)
    ]


_FIRST_NAMES = (
    "Zoë", "José", "Siobhán", "Łukasz", "Ngozi", "Aarav", "Mei", "Renée",
    "Søren", "Chloé", "D'Andre", "Ana", "Björn", "Amélie", "Oluwaseun", "Kirra",
)  # fmt: skip
_LAST_NAMES = (
    "O'Brien", "Müller", "Nguyễn", "Ødegaard", "D'Souza", "Núñez", "Kowalczyk",
    "Adébáyọ̀", "Sharma", "da Silva", "Tanaka", "Ó Súilleabháin", "Wiremu", "Çelik",
)  # fmt: skip


def _international_names(idx: np.ndarray, rng: np.random.Generator) -> Sequence[str]:
    """People named as people are: accents, apostrophes, particles (e.g. "Zoë O'Brien")."""
    first = rng.integers(0, len(_FIRST_NAMES), len(idx))
    last = rng.integers(0, len(_LAST_NAMES), len(idx))
    return [f"{_FIRST_NAMES[f]} {_LAST_NAMES[la]}" for f, la in zip(first, last, strict=True)]


DEFAULT_SUBJECTS: tuple[str, ...] = (
    "algebra", "geometry", "calculus", "statistics", "physics", "chemistry",
    "biology", "computer_science", "english", "writing", "reading", "spanish",
    "french", "history", "sat_prep", "music",
)  # fmt: skip
"""The default platform's 16 subjects, spelled as that platform spells them."""

TIMEZONES: tuple[str, ...] = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
)
"""The default platform's (US) time zones."""

INTERNATIONAL_SUBJECT_MIX: dict[str, tuple[float, float]] = {
    "IELTS English": (0.16, 0.0),
    "Python Programming": (0.12, -0.1),
    "Algebra II": (0.12, 0.2),
    "Mathématiques": (0.10, 0.15),
    "AP Biology": (0.08, 0.1),
    "AP Physics": (0.07, 0.8),
    "Business Writing": (0.06, -0.2),
    "Deutsch als Fremdsprache": (0.06, 0.1),
    "Chess": (0.05, -0.6),
    "Guitarra Clásica": (0.05, -0.3),
    "Kids' Coding": (0.05, -0.15),
    "Data Science & ML": (0.04, 0.3),
    "中文 (Mandarin)": (0.04, 0.25),
}
"""The international platform's subjects → (share of first sessions, logit effect)."""

INTERNATIONAL_SUBJECT_EFFECTS: dict[str, float] = {
    s: effect for s, (_, effect) in INTERNATIONAL_SUBJECT_MIX.items()
}
"""Its per-subject logit effects: "AP Physics" raises risk (+0.8), "Chess" lowers it (-0.6)."""

INTERNATIONAL_TIMEZONES: dict[str, float] = {
    "Asia/Kolkata": 0.18,  # +5:30
    "Europe/London": 0.15,
    "Europe/Berlin": 0.12,
    "Australia/Sydney": 0.12,  # southern-hemisphere DST
    "America/Sao_Paulo": 0.10,
    "Africa/Lagos": 0.09,
    "Pacific/Auckland": 0.07,  # southern-hemisphere DST
    "Australia/Adelaide": 0.06,  # +9:30, southern DST +10:30
    "Asia/Kathmandu": 0.06,  # +5:45
    "America/St_Johns": 0.05,  # -3:30 / -2:30
}
"""The international platform's time zones → share of students."""

PLATFORMS: dict[str, PlatformProfile] = {
    "default": PlatformProfile(
        name="default",
        subjects=DEFAULT_SUBJECTS,
        subject_weights=(1 / len(DEFAULT_SUBJECTS),) * len(DEFAULT_SUBJECTS),
        subject_effects=tuple(float(x) for x in np.linspace(-0.35, 0.45, len(DEFAULT_SUBJECTS))),
        timezones=TIMEZONES,
        timezone_weights=(0.40, 0.25, 0.08, 0.04, 0.18, 0.02, 0.03),
        tutor_ids=_numbered("T", 5),
        student_ids=_numbered("ST", 6),
        session_ids=_numbered("S", 7),
        tutor_names=_formatted("Tutor {i}"),
        tutor_emails=_formatted("tutor{i}@tutors.example"),
        student_names=_formatted("Student {i}"),
        # exam season: keen SAT-prep students flood in; algebra (as common as any) goes badly
        shift=PlatformShift(rising_subject="sat_prep", flipped_subject="algebra"),
    ),
    "international": PlatformProfile(
        name="international",
        subjects=tuple(INTERNATIONAL_SUBJECT_MIX),
        subject_weights=tuple(w for w, _ in INTERNATIONAL_SUBJECT_MIX.values()),
        subject_effects=tuple(INTERNATIONAL_SUBJECT_EFFECTS.values()),
        timezones=tuple(INTERNATIONAL_TIMEZONES),
        timezone_weights=tuple(INTERNATIONAL_TIMEZONES.values()),
        tutor_ids=_international_tutor_ids,
        student_ids=_student_uuid_ids,
        session_ids=_session_uuid_ids,
        tutor_names=_international_names,
        tutor_emails=_formatted("tutor{i}@tutoria.example"),
        student_names=_international_names,
        # a campaign brings keen data-science students; IELTS English starts going badly
        shift=PlatformShift(rising_subject="Data Science & ML", flipped_subject="IELTS English"),
    ),
}
"""Every platform the generator can draw, by name (`--platform`)."""


@dataclass(frozen=True)
class DemoSpec:
    """What to generate: how many tutors, how many days of history before `now`,
    on which platform, and whether its last weeks shift (module docstring)."""

    tutors: int
    days: int
    seed: int
    now: datetime
    lookahead_days: int = 7
    platform: str = "default"
    shift: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.tutors <= 100_000:
            raise InvalidInput(f"--tutors must be between 1 and 100000, got {self.tutors}")
        if not 7 <= self.days <= 3650:
            raise InvalidInput(f"--days must be between 7 and 3650, got {self.days}")
        if self.now.tzinfo is None:
            raise InvalidInput("--now must carry a UTC offset, e.g. 2026-11-01T12:00:00+00:00")
        if self.platform not in PLATFORMS:
            allowed = ", ".join(PLATFORMS)
            raise InvalidInput(f"--platform must be one of {allowed}, got {self.platform!r}")
        if self.shift and self.days <= self.profile.shift.days:
            raise InvalidInput(
                f"--shift needs --days above {self.profile.shift.days} (a history before it)"
            )

    @property
    def profile(self) -> PlatformProfile:
        return PLATFORMS[self.platform]

    def shifted(self, moments: np.ndarray) -> np.ndarray:
        """Which moments (naive UTC) fall in the shift: the last days before `now` and
        everything after it; none without `shift`."""
        now = np.datetime64(self.now.replace(tzinfo=None), "s")
        start = now - self.profile.shift.days * _DAY
        return np.asarray(moments >= start) & self.shift


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_index(weights: Sequence[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices drawn by weight. A uniform mix draws with `integers`, as the generator
    always did, so the default platform's history for a seed stays what it was."""
    w = np.asarray(weights, dtype=float)
    if np.allclose(w, w[0]):
        return rng.integers(0, len(w), n)
    return rng.choice(len(w), size=n, p=w / w.sum())


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """The main stream, the id/name stream and the shift stream, all from the seed.

    Ids and the shift draw from their own streams, so neither moves the main
    draws: the default platform keeps its history, and the shift leaves the
    history before it untouched in distribution."""
    return (
        np.random.default_rng(seed),
        np.random.default_rng([seed, 1]),
        np.random.default_rng([seed, 2]),
    )


def make_tutors(spec: DemoSpec, rng: np.random.Generator, ids: np.random.Generator) -> pd.DataFrame:
    """Tutors with their hidden traits (the traits stay in memory, never in the DB)."""
    n = spec.tutors
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    window_start = now - spec.days * _DAY
    before = rng.random(n) < 0.4
    offset_days = np.where(before, -rng.uniform(0, 730, n), rng.uniform(0, spec.days - 3, n))
    onboarded = window_start + (offset_days * 86400).astype("timedelta64[s]")
    quality = rng.normal(0, 1, n)
    number = np.arange(1, n + 1)
    profile = spec.profile
    return pd.DataFrame(
        {
            "tutor_id": profile.tutor_ids(number, ids),
            "name": profile.tutor_names(number, ids),
            "email": profile.tutor_emails(number, ids),
            "onboarded_at": onboarded,
            "quality": quality,
            "resched_p": np.clip(0.06 - 0.025 * quality + rng.normal(0, 0.02, n), 0.02, 0.15),
            "noshow_p": np.clip(0.02 - 0.01 * quality + rng.normal(0, 0.008, n), 0.005, 0.05),
            "engagement_base": 0.4 * quality + rng.normal(0, 0.6, n),
            "rate_per_day": rng.gamma(2.0, 0.11, n),
        }
    )


def make_engagement(
    tutors: pd.DataFrame, spec: DemoSpec, rng: np.random.Generator, shift: np.random.Generator
) -> pd.DataFrame:
    """Weekly engagement scores from onboarding to `now` (a history, not a value)."""
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    age = now - tutors["onboarded_at"].to_numpy()
    weeks = (age / (7 * _DAY)).astype(int) + 1  # type: ignore[operator]
    idx = np.repeat(np.arange(len(tutors)), weeks)
    k = np.arange(len(idx)) - np.repeat(np.cumsum(weeks) - weeks, weeks)
    walk = rng.normal(0, 0.15, len(idx))
    score = _sigmoid(tutors["engagement_base"].to_numpy()[idx] + walk)
    as_of = tutors["onboarded_at"].to_numpy()[idx] + (k * 7 * 86400).astype("timedelta64[s]")
    score = np.clip(score - _engagement_drop(len(tutors), idx, as_of, spec, shift), 0.0, 1.0)
    return pd.DataFrame(
        {"tutor_id": tutors["tutor_id"].to_numpy()[idx], "as_of": as_of, "score": score.round(4)}
    )


def _engagement_drop(
    n_tutors: int, idx: np.ndarray, as_of: np.ndarray, spec: DemoSpec, shift: np.random.Generator
) -> np.ndarray:
    """The shift's drop of each score row: its tutor's own U(lo, hi), from the shift on
    (only the observable score drifts; the hidden engagement behind the risk does not)."""
    lo, hi = spec.profile.shift.engagement_drop
    per_tutor = shift.uniform(lo, hi, n_tutors) if spec.shift else np.zeros(n_tutors)
    return np.where(spec.shifted(as_of), per_tutor[idx], 0.0)


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
            zone(str(tz)),
            ambiguous=np.zeros(int(mask.sum()), dtype=bool),  # the later (standard-time) instant
            nonexistent="shift_forward",
        )
        out[mask] = local.tz_convert("UTC").tz_localize(None).to_numpy()
    return out


def make_first_sessions(
    tutors: pd.DataFrame, spec: DemoSpec, rng: np.random.Generator, shift: np.random.Generator
) -> pd.DataFrame:
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
    profile = spec.profile
    tz = np.array(profile.timezones)[_draw_index(profile.timezone_weights, n, rng)]
    local_hour = _local_hours(age, rng)
    local = day.astype("datetime64[D]") + (local_hour * 3600).astype("timedelta64[s]")
    start = _to_utc(local.astype("datetime64[ns]"), tz).astype("datetime64[s]")
    subjects = _draw_index(profile.subject_weights, n, rng)
    frame = pd.DataFrame(
        {"t": t, "start": start, "age": age, "tz": tz, "local_hour": local_hour, "subj": subjects}
    )
    keep = (start > tutors["onboarded_at"].to_numpy()[t]) & (start <= end)
    return _shift_subjects(frame[keep].reset_index(drop=True), spec, shift)


def _shift_subjects(
    first: pd.DataFrame, spec: DemoSpec, shift: np.random.Generator
) -> pd.DataFrame:
    """Redraw the subjects of first sessions in the shift from the shifted mix
    (from the shift's own stream, so the main draws stay where they were)."""
    first["shifted"] = spec.shifted(first["start"].to_numpy())
    if spec.shift:
        weights = spec.profile.shifted_weights()
        n = int(first["shifted"].sum())
        first.loc[first["shifted"], "subj"] = shift.choice(len(weights), size=n, p=weights)
    return first


def _poor_probability(first: pd.DataFrame, tutors: pd.DataFrame, spec: DemoSpec) -> np.ndarray:
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
        + _subject_effects(first, spec)
        + 0.55 * ((hour < 8) | (hour >= 21))
        + age_effect
    )
    return _sigmoid(logit)


def _subject_effects(first: pd.DataFrame, spec: DemoSpec) -> np.ndarray:
    """Each first session's subject effect, plus the shift's lift inside the shift."""
    profile = spec.profile
    subj = first["subj"].to_numpy()
    shifted = first["shifted"].to_numpy()
    before = np.asarray(profile.subject_effects)[subj]
    after = profile.shifted_effects()[subj] + profile.shift.logit_lift
    return np.where(shifted, after, before)


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


def _first_outcomes(
    first: pd.DataFrame, tutors: pd.DataFrame, spec: DemoSpec, rng: np.random.Generator
) -> None:
    """Status, true risk and poor outcome of each first session, in place. `poor` is
    drawn from `p_poor` for every first session, scheduled ones too: it is what
    would happen if the session is completed (the truth a scored session meets)."""
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    first["is_first"] = True
    first["status"] = _statuses(first["start"].to_numpy(), first["t"].to_numpy(), tutors, now, rng)
    first["p_poor"] = _poor_probability(first, tutors, spec)
    first["poor"] = rng.random(len(first)) < first["p_poor"].to_numpy()


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
    rows["poor"] = False
    rows["p_poor"] = np.nan
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


def _all_sessions(
    first: pd.DataFrame,
    tutors: pd.DataFrame,
    spec: DemoSpec,
    rng: np.random.Generator,
    ids: np.random.Generator,
) -> pd.DataFrame:
    """First sessions and their follow-ups in start order, with length, booking time and id."""
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    follow = make_follow_ups(first, tutors, rng)
    follow["status"] = _statuses(
        follow["start"].to_numpy(), follow["t"].to_numpy(), tutors, now, rng
    )
    sessions = pd.concat([first, follow], ignore_index=True).sort_values("start", kind="stable")
    sessions = sessions.reset_index(drop=True)
    sessions["duration_minutes"] = rng.choice([30, 45, 60, 60, 60, 90], size=len(sessions))
    lead = rng.uniform(3600, 10 * 86400, len(sessions)).astype("timedelta64[s]")
    created = sessions["start"].to_numpy() - lead
    created = np.maximum(created, tutors["onboarded_at"].to_numpy()[sessions["t"].to_numpy()])
    sessions["created_at"] = np.minimum(created, now - np.timedelta64(60, "s"))
    sessions["session_id"] = spec.profile.session_ids(np.arange(1, len(sessions) + 1), ids)
    return sessions


def generate(spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """All five platform tables as DataFrames (timestamps are naive UTC), plus
    "truth": the generator's own risk of each first session (not a table)."""
    rng, ids, shift = _streams(spec.seed)
    now = np.datetime64(spec.now.replace(tzinfo=None), "s")
    tutors = make_tutors(spec, rng, ids)
    first = make_first_sessions(tutors, spec, rng, shift)
    first["student_id"] = spec.profile.student_ids(np.arange(1, len(first) + 1), ids)
    _first_outcomes(first, tutors, spec, rng)
    sessions = _all_sessions(first, tutors, spec, rng, ids)
    rating, rated, submitted = _ratings(sessions, tutors, rng)
    arrived = rated & (submitted < now)
    return {
        "tutors": tutors[["tutor_id", "name", "email", "onboarded_at"]],
        "students": _students(first, spec, rng, ids),
        "sessions": _session_rows(sessions, tutors, spec.profile),
        "feedback": pd.DataFrame(
            {
                "session_id": sessions["session_id"].to_numpy()[arrived],
                "rating": rating[arrived],
                "submitted_at": submitted[arrived],
            }
        ),
        "tutor_engagement": make_engagement(tutors, spec, rng, shift),
        "truth": _truth(sessions),
    }


def _truth(sessions: pd.DataFrame) -> pd.DataFrame:
    """One row per first session: the probability its `poor` outcome was drawn from."""
    first = sessions[sessions["is_first"].to_numpy(dtype=bool)]
    return pd.DataFrame(
        {
            "session_id": first["session_id"].to_numpy(),
            "p_poor": first["p_poor"].to_numpy(dtype=float),
            "poor": first["poor"].to_numpy(dtype=bool),
        }
    )


def truth_frame(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The truth beside each first session's platform row and its rating, if arrived:
    what evaluating a model against the generator's own risk needs in one frame."""
    first = frames["sessions"][frames["sessions"]["is_first_session"]]
    joined = frames["truth"].merge(first, on="session_id", validate="one_to_one")
    return joined.merge(frames["feedback"], on="session_id", how="left")


def _students(
    first: pd.DataFrame, spec: DemoSpec, rng: np.random.Generator, ids: np.random.Generator
) -> pd.DataFrame:
    days_old = first["age"].to_numpy() * 365.25 + rng.uniform(1, 364, len(first))
    birth = first["start"].to_numpy().astype("datetime64[D]") - days_old.astype("timedelta64[D]")
    return pd.DataFrame(
        {
            "student_id": first["student_id"].to_numpy(),
            "name": spec.profile.student_names(np.arange(1, len(first) + 1), ids),
            "birth_date": birth,
            "timezone": first["tz"].to_numpy(),
        }
    )


def _session_rows(
    sessions: pd.DataFrame, tutors: pd.DataFrame, profile: PlatformProfile
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": sessions["session_id"].to_numpy(),
            "tutor_id": tutors["tutor_id"].to_numpy()[sessions["t"].to_numpy()],
            "student_id": sessions["student_id"].to_numpy(),
            "subject": np.array(profile.subjects)[sessions["subj"].to_numpy()],
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
    from fsp.db import ensure_platform_schema, platform_is_empty

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
