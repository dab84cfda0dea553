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

They rely on `IORootModel` from BentoML's SDK (pinned in bentofile.yaml); the HTTP
tests exercise both, and the logic tests hold the row rules equal to
`SessionRequest`'s."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from _bentoml_sdk.io_models import IORootModel
from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails
from typing_extensions import TypedDict

from service.config import MAX_BATCH_SIZE
from service.schemas import (
    Identifier,
    PredictionResponse,
    ReferenceCheck,
    SessionBatch,
    Subject,
    _reference,
    _zone_exists,
)


class SessionRow(TypedDict):
    """One /predict_batch row as parsed: SessionRequest's fields and constraints, as a
    dict (absent optional fields are absent keys)."""

    __pydantic_config__ = ConfigDict(extra="forbid", str_strip_whitespace=True)  # type: ignore[misc]

    subject: Subject
    scheduled_start: AwareDatetime
    student_id: NotRequired[Identifier | None]
    student_age: NotRequired[Annotated[int, Field(ge=0, le=120)] | None]
    timezone: NotRequired[str | None]
    tutor_id: Identifier
    session_id: NotRequired[Identifier | None]


_ROWS: TypeAdapter = TypeAdapter(
    Annotated[list[SessionRow], Field(min_length=1, max_length=MAX_BATCH_SIZE)]
)


def _error(loc: tuple[int | str, ...], message: str, value: Any) -> InitErrorDetails:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


def row_errors(rows: list[dict[str, Any]], reference: ReferenceCheck | None) -> list:
    """SessionRequest's Python rules and the batch's unique session ids, over all rows
    (reference checks asked once per distinct tutor and student)."""
    errors: list[InitErrorDetails] = []
    tutors = {row["tutor_id"] for row in rows}
    bad_tutors = (
        {t: p for t in tutors if (p := reference.check_tutor(t))} if reference is not None else {}
    )
    students: dict[str, str | None] = {}
    for index, row in enumerate(rows):
        zone, age, student = row.get("timezone"), row.get("student_age"), row.get("student_id")
        zone_ok = zone is None or _zone_exists(zone)
        if not zone_ok:
            message = f"unknown IANA time zone {zone!r}, e.g. 'America/New_York'"
            errors.append(_error((index, "timezone"), message, zone))
        problem = bad_tutors.get(row["tutor_id"])
        if problem:
            errors.append(_error((index, "tutor_id"), problem, row["tutor_id"]))
        if not zone_ok or problem:
            continue  # as pydantic: the model rules run only on valid fields
        if age is None and zone is None and student is not None:
            if reference is not None:
                if student not in students:
                    students[student] = reference.check_student(student)
                if students[student]:
                    errors.append(_error((index,), f"student_id: {students[student]}", row))
        elif age is None and zone is None:
            errors.append(
                _error((index,), "student: give student_id, or student_age and timezone", row)
            )
        elif age is None or zone is None:
            missing = "student_age" if age is None else "timezone"
            message = f"{missing}: required with the other one when no student_id is given"
            errors.append(_error((index,), message, row))
    if errors:
        return errors
    seen: set[str] = set()
    for index, row in enumerate(rows):
        session_id = row.get("session_id")
        if session_id is None:
            continue
        if session_id in seen:
            return [_error((), f"[{index}].session_id: {session_id!r} appears twice", None)]
        seen.add(session_id)
    return errors


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


class PredictionList(IORootModel[list[PredictionResponse]]):
    """The answers, in request order: JSON texts (one per row) joined in one call.

    The service hands over each row's JSON text (built by
    `RiskService.predict_batch_json`); they are not validated again row by row."""

    def __init__(self, root: list[str]) -> None:
        object.__setattr__(self, "__dict__", {"root": root})
        object.__setattr__(self, "__pydantic_fields_set__", {"root"})
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(self, "__pydantic_private__", None)

    def _body(self) -> str:
        return "[" + ",".join(self.root) + "]"

    def model_dump(self, **kwargs: Any) -> Any:  # type: ignore[override]
        if not kwargs:  # BentoML's response path: bytes are sent as the body as they are
            return self._body().encode()
        import json

        return json.loads(self._body())

    def model_dump_json(self, **kwargs: Any) -> str:  # type: ignore[override]
        return self._body()


SessionBatchInput.__root_input__ = True  # type: ignore[attr-defined]
