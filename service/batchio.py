"""The /predict_batch body and answer as BentoML root models, parsed and written by
pydantic's core rather than BentoML's generic root model.

BentoML 1.4.40's generic root model (`IORootModel`) parses a JSON list with
`json.loads` (so a malformed body raises JSONDecodeError: a 500, not a 400),
rebuilds the type's JSON schema on every request, and writes the answer through
`json.dumps(model_dump())`. These two subclasses validate the bytes with pydantic's
JSON parser (malformed JSON is a 400 ValidationError naming the position) and
serialise the answer in one call. They rely on `IORootModel` from BentoML's SDK
(pinned in bentofile.yaml); the HTTP tests exercise both."""

from __future__ import annotations

from typing import Any

from _bentoml_sdk.io_models import IORootModel
from pydantic import TypeAdapter

from service.schemas import PredictionResponse, SessionBatch

_SESSIONS: TypeAdapter = TypeAdapter(SessionBatch)
_PREDICTIONS: TypeAdapter = TypeAdapter(list[dict[str, Any]])


class SessionBatchInput(IORootModel[SessionBatch]):  # type: ignore[valid-type]
    """A JSON list of sessions (1 to MAX_BATCH_SIZE), validated before batching."""

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any):
        return cls.model_construct(root=_SESSIONS.validate_json(json_data))


class PredictionList(IORootModel[list[PredictionResponse]]):
    """The answers, in request order, written as JSON bytes in one call.

    The service hands over plain dicts in PredictionResponse's shape (built by
    `RiskService.predict_records`); they are not validated again row by row."""

    def __init__(self, root: list[dict[str, Any]]) -> None:
        object.__setattr__(self, "__dict__", {"root": root})
        object.__setattr__(self, "__pydantic_fields_set__", {"root"})
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(self, "__pydantic_private__", None)

    def model_dump(self, **kwargs: Any) -> Any:  # type: ignore[override]
        if not kwargs:  # BentoML's response path: bytes are sent as the body as they are
            return _PREDICTIONS.dump_json(self.root)
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:  # type: ignore[override]
        return _PREDICTIONS.dump_json(self.root).decode()


SessionBatchInput.__root_input__ = True  # type: ignore[attr-defined]
