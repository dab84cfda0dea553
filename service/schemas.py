"""Request and response models of the predict API (POST /predict, /predict_batch,
/rank_tutors).

Validation is where bad input becomes a 4xx naming the field: pydantic reports
the field's location, and the checks that need reference data (is this tutor
known? this student?) ask the running service's feature snapshot. Running them
during validation matters for /predict_batch: adaptive batching merges several
requests into one call, so a bad row must be refused *before* the merge, or it
would fail the other callers' rows too."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from service.config import (
    MAX_BATCH_SIZE,
    MAX_RANK_CANDIDATES,
    MAX_TEXT_LENGTH,
    MAX_UTC_OFFSET,
    MAX_YEAR,
    MIN_YEAR,
    SCHEDULED_START_FUTURE,
    SCHEDULED_START_PAST,
)


def _printable(value: str) -> str:
    """Free text from a platform may hold spaces, quotes, tabs and any letters, but no
    other control characters (NUL, line breaks): those are never part of a name."""
    bad = next((c for c in value if (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"must not contain control character {bad!r}")
    return value


_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_text(value: Any) -> Any:
    """A time is an ISO 8601 string (or a datetime, in-process): pydantic would also take
    a bare number, or a string of digits, as seconds since 1970."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        raise ValueError(
            "must be an ISO 8601 date and time with a UTC offset, e.g. 2026-11-03T16:00:00-05:00"
        )
    return value


def _sane_moment(value: datetime) -> datetime:
    """Offsets of real zones (within ±14:00) and years the data can hold."""
    offset = value.utcoffset()
    if offset is not None and abs(offset) > MAX_UTC_OFFSET:
        raise ValueError("UTC offset must lie within -14:00 ... +14:00")
    if (
        not MIN_YEAR <= value.year <= MAX_YEAR
        or not MIN_YEAR <= value.astimezone(UTC).year <= MAX_YEAR
    ):
        raise ValueError(f"must lie within the years {MIN_YEAR} ... {MAX_YEAR}")
    return value


Moment = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_text),
    AfterValidator(_sane_moment),
    Field(description="ISO 8601 with a UTC offset, e.g. 2026-11-03T16:00:00-05:00"),
]
"""A time a request carries: an ISO 8601 string with an offset within ±14:00, in the
years MIN_YEAR ... MAX_YEAR."""


def start_window_problem(start: datetime, now: datetime) -> str | None:
    """Why `start` is no plausible upcoming session start as of `now` (else None)."""
    if start < now - SCHEDULED_START_PAST:
        return f"must not lie more than {_span(SCHEDULED_START_PAST)} in the past"
    if start > now + SCHEDULED_START_FUTURE:
        return f"must not lie more than {_span(SCHEDULED_START_FUTURE)} ahead"
    return None


def _span(delta: Any) -> str:
    days = delta.days
    return f"{days} day" + ("s" if days != 1 else "")


def _serving_now() -> datetime | None:
    """The serving worker's clock, or None outside a server (in-process use: callers
    such as the tests then score sessions of any moment they choose)."""
    reference = _reference()
    now = getattr(reference, "now", None)
    return now() if callable(now) else None


def _upcoming(start: datetime) -> datetime:
    now = _serving_now()
    problem = start_window_problem(start, now) if now is not None else None
    if problem:
        raise ValueError(problem)
    return start


SessionStart = Annotated[Moment, AfterValidator(_upcoming)]
"""`scheduled_start`: a Moment within the window around now that the server accepts
(SCHEDULED_START_PAST ... SCHEDULED_START_FUTURE)."""

Subject = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TEXT_LENGTH,
        description="as the platform spells it; a subject the model has not seen is"
        " scored as 'other' and the answer's notes say so",
    ),
    AfterValidator(_printable),
]
RiskLevel = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
ZoneName = Annotated[str, Field(max_length=64, description="IANA zone, e.g. America/New_York")]
Identifier = Annotated[
    str, Field(min_length=1, max_length=MAX_TEXT_LENGTH), AfterValidator(_printable)
]


class ReferenceCheck(Protocol):
    """What validation asks of the running service (see service.lookup.SnapshotKeeper)."""

    def check_tutor(self, tutor_id: str) -> str | None: ...

    def check_student(self, student_id: str) -> str | None: ...

    def now(self) -> datetime: ...

    def unknown_tutors(self, tutor_ids: set[str]) -> dict[str, str]: ...

    def unknown_students(self, student_ids: set[str]) -> dict[str, str]: ...


def _reference() -> ReferenceCheck | None:
    """The serving worker's reference data, or None outside a server (in-process use:
    the scoring logic then raises UnknownTutor itself)."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return None
    return getattr(service, "reference", None)


_KNOWN_ZONES: set[str] = set()
_ZONES_LOCK = threading.Lock()


def _zone_exists(name: str) -> bool:
    """Known to the feature code's time-zone tables (imported on first use: the CLI
    process that reads this module never pays for pandas). Only zones found are
    remembered (a few hundred at most), never the strings a caller makes up."""
    if name in _KNOWN_ZONES:
        return True
    from fsp.calendar import known_zone

    if not known_zone(name):
        return False
    with _ZONES_LOCK:
        _KNOWN_ZONES.add(name)
    return True


class StudentContext(BaseModel):
    """The student and the proposed slot: `student_id`, or `student_age` + `timezone`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    subject: Subject
    scheduled_start: SessionStart
    student_id: Identifier | None = None
    student_age: int | None = Field(default=None, ge=0, le=120)
    timezone: ZoneName | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and not _zone_exists(value):
            raise ValueError(f"unknown IANA time zone {value!r}, e.g. 'America/New_York'")
        return value

    @model_validator(mode="after")
    def _student_given(self) -> StudentContext:
        if self.uses_student_record:
            reference = _reference()
            problem = reference.check_student(self.student_id or "") if reference else None
            if problem:
                raise ValueError(f"student_id: {problem}")
            return self
        if self.student_age is None and self.timezone is None:
            raise ValueError("student: give student_id, or student_age and timezone")
        missing = "student_age" if self.student_age is None else "timezone"
        if self.student_age is None or self.timezone is None:
            raise ValueError(f"{missing}: required with the other one when no student_id is given")
        return self

    @property
    def uses_student_record(self) -> bool:
        """True when age and time zone come from the platform's student record."""
        return self.student_age is None and self.timezone is None and self.student_id is not None


def _known_tutor(tutor_id: str) -> str:
    reference = _reference()
    problem = reference.check_tutor(tutor_id) if reference else None
    if problem:
        raise ValueError(problem)
    return tutor_id


TutorId = Annotated[Identifier, AfterValidator(_known_tutor)]


class SessionRequest(StudentContext):
    """One upcoming first session to score, as the platform describes it."""

    tutor_id: TutorId
    session_id: Identifier | None = Field(
        default=None, description="when given, the prediction is stored (upsert by session_id)"
    )


def _unique_session_ids(sessions: list[SessionRequest]) -> list[SessionRequest]:
    seen: set[str] = set()
    for index, session in enumerate(sessions):
        if session.session_id is None:
            continue
        if session.session_id in seen:
            raise ValueError(f"[{index}].session_id: {session.session_id!r} appears twice")
        seen.add(session.session_id)
    return sessions


SessionBatch = Annotated[
    list[SessionRequest],
    Field(min_length=1, max_length=MAX_BATCH_SIZE),
    AfterValidator(_unique_session_ids),
]


def _unique_tutors(tutor_ids: list[str]) -> list[str]:
    duplicates = sorted({t for t in tutor_ids if tutor_ids.count(t) > 1})
    if duplicates:
        raise ValueError(f"tutor_ids: listed more than once: {', '.join(duplicates)}")
    return tutor_ids


class RankRequest(StudentContext):
    """A student context and the candidate tutors to order by risk."""

    tutor_ids: Annotated[
        list[TutorId],
        Field(min_length=1, max_length=MAX_RANK_CANDIDATES),
        AfterValidator(_unique_tutors),
    ]


class RiskFactor(BaseModel):
    """One feature's push on this session's risk, in words a tutor email can reuse."""

    feature: str
    label: str
    value: float | str
    contribution: float = Field(description="push on the log-odds of a poor session")
    direction: Literal["raises risk", "lowers risk"]


class Risk(BaseModel):
    """The scored risk of one session."""

    risk_probability: float
    risk_score: int
    risk_level: RiskLevel
    should_send_alert: bool
    top_risk_factors: list[RiskFactor]
    notes: list[str] = Field(
        default_factory=list,
        description="what the caller should know about this answer, e.g. a subject the"
        " model did not see in training (scored as 'other')",
    )
    model_version: str


class PredictionResponse(Risk):
    """The answer for one session; prediction_id is set when it was stored."""

    tutor_id: str
    session_id: str | None = None
    prediction_id: str | None = None


class RankedTutor(Risk):
    """One candidate with its risk; rank 1 is the lowest risk."""

    rank: int
    tutor_id: str


class RankResponse(BaseModel):
    """Candidates from lowest to highest risk."""

    model_version: str
    scheduled_start: datetime
    subject: str
    candidates: list[RankedTutor]


class ModelInfo(BaseModel):
    """What this server serves: the MLflow version it was built from, and its state."""

    model_name: str
    mlflow_version: str
    mlflow_run_id: str
    model_type: str
    alert_threshold: float
    bento_model: str
    bento: str | None
    scoring_path: Literal["numpy fast path", "sklearn"]
    features_as_of: datetime | None
    tutors_known: int
    ready: bool
    not_ready_reason: str | None
    risk_bands: dict[str, float]
    extra: dict[str, Any] = Field(default_factory=dict)
