"""The /predict_batch body and answer as BentoML root models, parsed and written
without a pydantic model per row.

BentoML 1.4.40's generic root model (`IORootModel`) parses a JSON list with
`json.loads` (so a malformed body raises JSONDecodeError: a 500, not a 400),
rebuilds the type's JSON schema on every request, and writes the answer through
`json.dumps(model_dump())`. These two subclasses do it in bulk:

- the body is parsed by pydantic's JSON parser into plain dicts (`SessionRow`, the
  fields and constraints of `SessionRequest`), then the rules that need Python
  (time zone known, student record or age + time zone, tutor and student known,
  unique session ids) run once over the batch, with the same messages and locations
  as `SessionRequest`'s validators (a bad row is still refused before batching);
- the answer is a list of JSON texts, one per row (`RiskService.predict_batch_json`),
  joined into the body in one call.

They derive from BentoML's `IORootModel` (private: `service.bentoml_adapter`); the
HTTP tests exercise both, and the logic tests hold the row rules equal to
`SessionRequest`'s."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, NotRequired

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails
from typing_extensions import TypedDict

from service.bentoml_adapter import IORootModel, mark_root_input
from service.config import MAX_BATCH_SIZE
from service.schemas import (
    Identifier,
    Moment,
    ReferenceCheck,
    SessionBatch,
    Subject,
    ZoneName,
    _reference,
    _zone_exists,
    start_window_problem,
)


class SessionRow(TypedDict):
    """One /predict_batch row as parsed: SessionRequest's fields and constraints, as a
    dict (absent optional fields are absent keys)."""

    __pydantic_config__ = ConfigDict(extra="forbid", str_strip_whitespace=True)  # type: ignore[misc]

    subject: Subject
    scheduled_start: Moment
    student_id: NotRequired[Identifier | None]
    student_age: NotRequired[Annotated[int, Field(ge=0, le=120)] | None]
    timezone: NotRequired[ZoneName | None]
    tutor_id: Identifier
    session_id: NotRequired[Identifier | None]


_ROWS: TypeAdapter = TypeAdapter(
    Annotated[list[SessionRow], Field(min_length=1, max_length=MAX_BATCH_SIZE)]
)


def _error(loc: tuple[int | str, ...], message: str, value: Any) -> InitErrorDetails:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


def row_errors(rows: list[dict[str, Any]], reference: ReferenceCheck | None) -> list:
    """SessionRequest's Python rules and the batch's unique session ids, over all rows.
    Reference data is asked once per distinct tutor, student and zone, in bulk; the
    rows are walked one by one only to locate a problem found that way. The start
    window is checked against the reference's clock (once per batch: earliest and
    latest start)."""
    window = _window_errors(rows, reference)
    if window:
        return window
    tutors = {row["tutor_id"] for row in rows}
    ages = [row.get("student_age") for row in rows]
    zones = [row.get("timezone") for row in rows]
    student_ids = [row.get("student_id") for row in rows]
    students = {
        s for s, z, a in zip(student_ids, zones, ages, strict=True) if z is None and a is None
    }
    students.discard(None)
    bad_zones = {zone for zone in set(zones) if zone is not None and not _zone_exists(zone)}
    bad_tutors = reference.unknown_tutors(tutors) if reference is not None else {}
    bad_students = reference.unknown_students(students) if reference is not None else {}  # type: ignore[arg-type]
    shapes_ok = all(
        (a is None) == (z is None) and (s is not None or z is not None)
        for s, z, a in zip(student_ids, zones, ages, strict=True)
    )
    if bad_zones or bad_tutors or bad_students or not shapes_ok:
        return _located_errors(rows, bad_zones, bad_tutors, bad_students)
    return _duplicate_session(rows)


def _window_errors(rows: list[dict[str, Any]], reference: ReferenceCheck | None) -> list:
    """Each start outside the accepted window around the server's now, located."""
    if reference is None or not rows:
        return []
    now = reference.now()
    starts = [row["scheduled_start"] for row in rows]
    if (
        start_window_problem(min(starts), now) is None
        and start_window_problem(max(starts), now) is None
    ):
        return []
    errors: list[InitErrorDetails] = []
    for index, start in enumerate(starts):
        problem = start_window_problem(start, now)
        if problem:
            errors.append(_error((index, "scheduled_start"), problem, start.isoformat()))
    return errors


def _located_errors(rows, bad_zones: set, bad_tutors: dict, bad_students: dict) -> list:
    """Each problem at its row and field, with SessionRequest's messages."""
    errors: list[InitErrorDetails] = []
    for index, row in enumerate(rows):
        zone, age, student = row.get("timezone"), row.get("student_age"), row.get("student_id")
        if zone in bad_zones:
            message = f"unknown IANA time zone {zone!r}, e.g. 'America/New_York'"
            errors.append(_error((index, "timezone"), message, zone))
        problem = bad_tutors.get(row["tutor_id"])
        if problem:
            errors.append(_error((index, "tutor_id"), problem, row["tutor_id"]))
        if zone in bad_zones or problem:
            continue  # as pydantic: the model rules run only on valid fields
        if age is None and zone is None and student is not None:
            if student in bad_students:
                errors.append(_error((index,), f"student_id: {bad_students[student]}", row))
        elif age is None and zone is None:
            errors.append(
                _error((index,), "student: give student_id, or student_age and timezone", row)
            )
        elif age is None or zone is None:
            missing = "student_age" if age is None else "timezone"
            message = f"{missing}: required with the other one when no student_id is given"
            errors.append(_error((index,), message, row))
    return errors


def _duplicate_session(rows: list[dict[str, Any]]) -> list:
    """The first session_id given twice in one batch, as an error (else none)."""
    seen: set[str] = set()
    for index, row in enumerate(rows):
        session_id = row.get("session_id")
        if session_id is None:
            continue
        if session_id in seen:
            return [_error((), f"[{index}].session_id: {session_id!r} appears twice", None)]
        seen.add(session_id)
    return []


def parse_batch(json_data: str | bytes | bytearray) -> list[dict[str, Any]]:
    """The rows of a /predict_batch body; ValidationError (a 400) naming the bad fields."""
    rows = _ROWS.validate_json(json_data)
    errors = row_errors(rows, _reference())
    if errors:
        raise ValidationError.from_exception_data("list[SessionRequest]", errors)
    return rows


class SessionBatchInput(IORootModel[SessionBatch]):  # type: ignore[valid-type]
    """A JSON list of sessions (1 to MAX_BATCH_SIZE), validated before batching."""

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any):
        return cls.model_construct(root=parse_batch(json_data))


class PredictionList(IORootModel[list[str]]):
    """The answers, in request order: JSON texts (one per row) joined in one call.

    The service hands over each row's JSON text in PredictionResponse's shape (built
    by `RiskService.predict_batch_json`); they are checked to be texts, not parsed
    again row by row (the OpenAPI document, `service.api.bento_openapi`, documents
    the PredictionResponse list sent). The media type is set, or BentoML would derive
    it from the JSON schema per response."""

    media_type: ClassVar[str | None] = "application/json"

    def _body(self) -> str:
        return "[" + ",".join(self.root) + "]"

    def model_dump(self, **kwargs: Any) -> Any:  # type: ignore[override]
        if not kwargs:  # BentoML's response path: bytes are sent as the body as they are
            return self._body().encode()
        return json.loads(self._body())

    def model_dump_json(self, **kwargs: Any) -> str:  # type: ignore[override]
        return self._body()


mark_root_input(SessionBatchInput)
