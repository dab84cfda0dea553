"""The read endpoints (mounted under /api/first-session/), GET /model, and the
OpenAPI 3.1 document of the whole service (`bento_openapi`).

Each handler reaches the worker serving it through `bentoml.get_current_service()`
and calls its `service.reads.ReadViews`; expected failures become 4xx/503 with the
reason as JSON through `service.refusals`, never a 500. Every
refusal the service sends is documented with its body: 400/422 (validation), 401
(API key), 404 (unknown tutor), 413 (body too large), 415 (not JSON), 503
(database unavailable)."""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Path, Query
from pydantic import AfterValidator, BaseModel, Field

from fsp.errors import DatabaseUnavailable
from service.config import LOOKAHEAD_HOURS_MAX, MAX_BATCH_SIZE, MAX_TEXT_LENGTH, READ_DAYS_MAX
from service.refusals import install_handlers
from service.schemas import (
    ModelInfo,
    Moment,
    PredictionResponse,
    RankRequest,
    RankResponse,
    SessionRequest,
    _printable,
)


class ErrorBody(BaseModel):
    """An expected refusal: the reason, in words."""

    error: str = Field(description="what went wrong, e.g. 'database unavailable'")


class ValidationErrorBody(BaseModel):
    """A request the API refused (400): the problems, each at its field."""

    error: str
    detail: list[dict[str, Any]] = Field(
        default_factory=list, description="pydantic's errors: `loc` names the field, `msg` why"
    )


def _response(description: str, model: type[BaseModel] = ErrorBody) -> dict[str, Any]:
    return {"model": model, "description": description}


UNAUTHORIZED = _response("FSP_API_KEY is set and no valid 'Authorization: Bearer <key>' came")
TOO_LARGE = _response("the body is larger than the service accepts (MAX_BODY_BYTES)")
UNAVAILABLE = _response("database unavailable (or the service is starting)")
UNKNOWN = _response("no such tutor")
INVALID = _response("a query or path parameter is wrong (named in detail)", ValidationErrorBody)

Days = Annotated[int, Query(ge=1, le=READ_DAYS_MAX, description="window in days, up to now")]
Now = Annotated[
    Moment | None,
    Query(
        description="ISO 8601 with a UTC offset, years 2000-2100; the moment to answer as"
        " of (default: the clock)"
    ),
]
TutorPath = Annotated[
    str, Path(min_length=1, max_length=MAX_TEXT_LENGTH), AfterValidator(_printable)
]


def _service() -> Any:
    """The service instance of the worker serving this request."""
    try:
        return bentoml.get_current_service()
    except BentoMLException as exc:
        raise DatabaseUnavailable("service is starting") from exc


def _worker() -> Any:
    """The parts of the worker serving this request (`service.worker.Worker`)."""
    return _service().worker


read_app = FastAPI(
    title="First-session risk: read endpoints",
    description="Stored predictions, outcomes and evaluations (the operations views).",
    responses={401: UNAUTHORIZED, 413: TOO_LARGE, 422: INVALID, 503: UNAVAILABLE},
)
install_handlers(read_app)


def refusals_in_json(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with every refusal documented as the JSON body it is (`service.refusals`):
    FastAPI documents an app's shared responses (401, 413, 422, 503) in each route's
    own media type, text/html for the dashboard and image/gif for the open image."""
    for item in doc["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            for status, response in responses.items():
                content = response.get("content", {})
                if status >= "400" and content and "application/json" not in content:
                    response["content"] = {"application/json": next(iter(content.values()))}
    return doc


_fastapi_openapi = read_app.openapi
read_app.openapi = lambda: refusals_in_json(_fastapi_openapi())  # type: ignore[method-assign]


@read_app.get("/predict-upcoming")
def predict_upcoming(
    lookahead_hours: Annotated[float, Query(gt=0, le=LOOKAHEAD_HOURS_MAX)] = 24.0,
    now: Now = None,
) -> dict[str, Any]:
    """Score the scheduled first sessions starting in (now, now + lookahead_hours]."""
    return _worker().reads.upcoming(now, lookahead_hours)


@read_app.get("/history/{tutor_id}", responses={404: UNKNOWN})
def tutor_history(tutor_id: TutorPath, days: Days = 30, now: Now = None) -> dict[str, Any]:
    """The tutor's current features and first-session predictions of the last `days` days."""
    return _worker().reads.tutor_history(tutor_id, days, now)


@read_app.get("/analytics/model-performance")
def model_performance(days: Days = 30, now: Now = None) -> dict[str, Any]:
    """Evaluations written by the monitoring flow (fsp.model_performance_logs)."""
    return _worker().reads.model_performance(days, now)


@read_app.get("/analytics/summary")
def summary(days: Days = 30, now: Now = None) -> dict[str, Any]:
    """Total predictions, high-risk rate, alert rate and accuracy of the last `days` days."""
    return _worker().reads.summary(days, now)


meta_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, responses={401: UNAUTHORIZED})
install_handlers(meta_app, validates_parameters=False)  # GET /model takes no parameters


@meta_app.get("/model")
def model_info() -> ModelInfo:
    """Which MLflow version this server serves, and whether it is ready."""
    return _service().model_info()


# -- the service's OpenAPI document ------------------------------------------------------

_REF = "#/components/schemas/{model}"
_ENDPOINTS: dict[str, tuple[type[BaseModel], type[BaseModel], bool]] = {
    "/predict": (SessionRequest, PredictionResponse, False),
    "/predict_batch": (SessionRequest, PredictionResponse, True),
    "/rank_tutors": (RankRequest, RankResponse, False),
}
"""BentoML endpoint: (request model, answer model, as a list of them)."""


def _json(model_ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": model_ref}}}


def _refused(name: str, description: str) -> dict[str, Any]:
    return _json({"$ref": _REF.format(model=name)}, description)


_DOCUMENTED_MODELS: tuple[type[BaseModel], ...] = (
    SessionRequest,
    PredictionResponse,
    RankRequest,
    RankResponse,
    ErrorBody,
    ValidationErrorBody,
)
_REQUEST_MODELS = (SessionRequest, RankRequest)


def bento_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's document of the service (`Service.openapi_spec.asdict()`), corrected:

    - an OpenAPI 3.1 document, as the mounted FastAPI apps' are (BentoML labels it
      3.0.2 while it holds their 3.1 schemas: `exclusiveMinimum: 0`, `type: null`);
    - the BentoML endpoints' bodies are the pydantic models' own schemas (BentoML's
      flattening documents an optional field as a string with a null default);
    - every refusal the service sends, with its body (400, 401, 413, 415, 503; no
      500: nothing is a 500 for a client's mistake), and 401 on everything but
      /livez and /readyz;
    - the components nothing refers to any more are dropped."""
    from pydantic.json_schema import models_json_schema  # only when /docs.json is asked

    doc = copy.deepcopy(spec)
    doc["openapi"] = "3.1.0"
    refs, defs = models_json_schema(
        [
            (m, "validation" if m in _REQUEST_MODELS else "serialization")
            for m in _DOCUMENTED_MODELS
        ],
        ref_template=_REF,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    for route, (request, answer, many) in _ENDPOINTS.items():
        body, out = refs[(request, "validation")], refs[(answer, "serialization")]
        doc["paths"][route]["post"].update(_bento_operation(body, out, many))
    refusals_in_json(doc)
    _document_refusals(doc)
    _drop_unreferenced(doc)
    return doc


def _bento_operation(body: dict[str, Any], out: dict[str, Any], many: bool) -> dict[str, Any]:
    """A BentoML endpoint's request body and answers, as the service sends them."""
    if many:
        body = {"type": "array", "items": body, "minItems": 1, "maxItems": MAX_BATCH_SIZE}
        out = {"type": "array", "items": out}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": _json(out, "the risk, its reasons and the model version"),
            "400": _refused("ValidationErrorBody", "a field is missing or wrong (named in detail)"),
            "401": _refused("ErrorBody", UNAUTHORIZED["description"]),
            "413": _refused("ErrorBody", TOO_LARGE["description"]),
            "415": _refused("ErrorBody", "the body is a form, not application/json"),
            "503": _refused("ErrorBody", UNAVAILABLE["description"]),
        },
    }


def _document_refusals(doc: dict[str, Any]) -> None:
    """No 500 anywhere; 401 on everything but /livez and /readyz; /readyz's 503 text."""
    for route, item in doc["paths"].items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("500", None)
            if route not in ("/livez", "/readyz"):
                responses.setdefault("401", _refused("ErrorBody", UNAUTHORIZED["description"]))
    doc["paths"]["/readyz"]["get"]["responses"]["503"] = {
        "description": "not ready, and why (plain text)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }


def _drop_unreferenced(doc: dict[str, Any]) -> None:
    """Remove the component schemas no path (nor a kept schema) refers to."""
    schemas = doc.get("components", {}).get("schemas", {})
    prefix = _REF.format(model="")
    kept: set[str] = set()
    texts = [json.dumps(doc["paths"])]
    while texts:
        text = texts.pop()
        for name in schemas:
            if name not in kept and f'"{prefix}{name}"' in text:
                kept.add(name)
                texts.append(json.dumps(schemas[name]))
    for name in [n for n in schemas if n not in kept]:
        del schemas[name]
