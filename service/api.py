"""The seed's read endpoints (mounted under /api/first-session/) and GET /model.

Each handler reaches the worker's service instance through
`bentoml.get_current_service()` and calls its `RiskService`; expected failures
become 4xx/503 with the reason, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from service.config import LOOKAHEAD_HOURS_MAX, READ_DAYS_MAX
from service.schemas import ModelInfo
from training.errors import DatabaseUnavailable, FspError, UnknownTutor

T = TypeVar("T")

Days = Annotated[int, Query(ge=1, le=READ_DAYS_MAX, description="window in days, up to now")]
Now = Annotated[
    datetime | None,
    Query(description="ISO 8601 with offset; the moment to answer as of (default: the clock)"),
]


def status_of(exc: FspError) -> int:
    """The HTTP status of an expected failure."""
    if isinstance(exc, DatabaseUnavailable):
        return 503
    if isinstance(exc, UnknownTutor):
        return 404
    return 400


def error_response(exc: FspError, status: int | None = None) -> JSONResponse:
    """An expected failure as JSON: {"error": reason}."""
    return JSONResponse({"error": str(exc)}, status_code=status or status_of(exc))


def _service() -> Any:
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.get_current_service()
    except BentoMLException as exc:
        raise HTTPException(status_code=503, detail="service is starting") from exc


def _call(work: Callable[[], T]) -> T:
    try:
        return work()
    except FspError as exc:
        raise HTTPException(status_code=status_of(exc), detail=str(exc)) from exc


def _as_of(now: datetime | None) -> datetime | None:
    if now is not None and now.tzinfo is None:
        raise HTTPException(
            status_code=422, detail=f"now: {now.isoformat()!r} has no UTC offset; add one"
        )
    return now


read_app = FastAPI(
    title="First-session risk: read endpoints",
    description="Stored predictions, outcomes and evaluations (the seed's operations views).",
)


@read_app.exception_handler(FspError)
async def _expected(_, exc: FspError) -> JSONResponse:  # pragma: no cover - safety net
    return error_response(exc)


@read_app.get("/predict-upcoming")
def predict_upcoming(
    lookahead_hours: Annotated[float, Query(gt=0, le=LOOKAHEAD_HOURS_MAX)] = 24.0,
    now: Now = None,
) -> dict[str, Any]:
    """Score the scheduled first sessions starting in (now, now + lookahead_hours]."""
    logic = _service().logic
    return _call(lambda: logic.upcoming(_as_of(now), lookahead_hours))


@read_app.get("/history/{tutor_id}")
def tutor_history(
    tutor_id: Annotated[str, Path(min_length=1, max_length=128)],
    days: Days = 30,
    now: Now = None,
) -> dict[str, Any]:
    """The tutor's current features and first-session predictions of the last `days` days."""
    logic = _service().logic
    return _call(lambda: logic.tutor_history(tutor_id, days, _as_of(now)))


@read_app.get("/analytics/model-performance")
def model_performance(days: Days = 30, now: Now = None) -> dict[str, Any]:
    """Evaluations written by the monitoring flow (fsp.model_performance_logs)."""
    logic = _service().logic
    return _call(lambda: logic.model_performance(days, _as_of(now)))


@read_app.get("/analytics/summary")
def summary(days: Days = 30, now: Now = None) -> dict[str, Any]:
    """Total predictions, high-risk rate, alert rate and accuracy of the last `days` days."""
    logic = _service().logic
    return _call(lambda: logic.summary(days, _as_of(now)))


meta_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@meta_app.get("/model")
def model_info() -> ModelInfo:
    """Which MLflow version this server serves, and whether it is ready."""
    return _service().model_info()
