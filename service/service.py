"""The Bento: BentoML 1.4 service answering the predict API (contract section 4).

- POST /predict: one session, not batched (interactive callers get ~1 ms).
- POST /predict_batch: a JSON list of sessions, adaptive batching over lists of
  pydantic records (never DataFrames), answers a list in order.
- POST /rank_tutors: candidates ordered from lowest to highest risk.
- GET /model: the MLflow version served. /api/first-session/...: read endpoints.
- /readyz: ready once the model is loaded, the feature snapshot is built and the
  database answers; says why not otherwise. /metrics, /docs.json come with BentoML.

The model is pinned at build time: `fsp package` passes the exact BentoML model
tag as a Bento argument, recorded in the Bento and restored whenever it is served,
so a Bento never changes its model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from pydantic import BaseModel
from starlette.responses import JSONResponse, PlainTextResponse

from service.api import error_response, meta_app, read_app
from service.batchio import PredictionList, SessionBatchInput
from service.config import (
    API_PREFIX,
    BATCH_MAX_LATENCY_MS,
    MAX_BATCH_SIZE,
    SERVICE_NAME,
    UNTRACED_PATHS,
    WORKERS,
)
from service.schemas import (
    ModelInfo,
    PredictionResponse,
    RankRequest,
    RankResponse,
    SessionBatch,
    SessionRequest,
)
from training.constants import RISK_BANDS
from training.errors import DatabaseUnavailable, FspError
from training.settings import Settings, get_settings


class BentoArgs(BaseModel):
    """Build-time arguments (`bentoml build --arg model_tag=NAME:VERSION`)."""

    model_tag: str = f"{Settings.model_fields['model_name'].default}:latest"


def utc_now() -> datetime:
    """The clock, in UTC (the moment a request is answered as of)."""
    return datetime.now(UTC)


def database_url_of(settings: Settings) -> str:
    """DATABASE_URL, else the embedded PostgreSQL under FSP_STATE_DIR (started if needed)."""
    from training.db import database_url

    return database_url(settings)


GATED_PATHS = frozenset({"/predict", "/predict_batch", "/rank_tutors"})
"""Endpoints that answer 503 with the reason while the database is down."""


def _not_ready_reason() -> str | None:
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return "service is starting"
    return service.keeper.not_ready_reason


class DatabaseGate:
    """ASGI middleware: while the database is down (or the snapshot not built yet), the
    predict and read endpoints answer 503 with the reason and /readyz says why.

    It runs before the body is parsed, which matters for /predict_batch: after
    adaptive batching merges requests, no single caller could be answered 503."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            gated = path in GATED_PATHS or (
                path.startswith(API_PREFIX + "/") and not path.endswith(("/docs", "/openapi.json"))
            )
            if gated or path == "/readyz":
                reason = _not_ready_reason()
                if reason is not None:
                    response = (
                        JSONResponse({"error": reason}, status_code=503)
                        if gated
                        else PlainTextResponse(f"not ready: {reason}\n", status_code=503)
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


ARGS = bentoml.use_arguments(BentoArgs)


@bentoml.asgi_app(meta_app, path="/")
@bentoml.asgi_app(read_app, path=API_PREFIX)
@bentoml.service(
    name=SERVICE_NAME,
    workers=WORKERS,
    traffic={"timeout": 60},
    tracing={"excluded_urls": list(UNTRACED_PATHS)},
    logging={"access": {"enabled": False}},
)
class FirstSessionRisk:
    """Scores upcoming first sessions with the packaged champion."""

    bento_model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        # Imported here, in the worker only: the CLI process that reads this module
        # for its configuration never pays for pandas and psycopg.
        from service.logic import RiskService, load_served_model
        from service.lookup import SnapshotKeeper

        stored = self.bento_model
        info = stored.info
        self.model = load_served_model(
            Path(stored.path), str(stored.tag), dict(info.labels), dict(info.metadata)
        )
        self.keeper = SnapshotKeeper(
            resolve_url=partial(database_url_of, get_settings()), clock=utc_now
        )
        self.reference = self.keeper  # what request validation asks (service.schemas)
        self.logic = RiskService(self.model, self.keeper, utc_now)
        self.keeper.start()

    def __is_ready__(self) -> bool:
        return self.keeper.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop the snapshot thread and close the connections."""
        self.keeper.stop()

    def model_info(self) -> ModelInfo:
        """What GET /model reports."""
        snapshot = self.keeper.snapshot
        bento = getattr(FirstSessionRisk, "bento", None)
        return ModelInfo(
            model_name=self.model.name,
            mlflow_version=self.model.mlflow_version,
            mlflow_run_id=self.model.run_id,
            model_type=self.model.model_type,
            alert_threshold=self.model.threshold,
            bento_model=self.model.bento_model,
            bento=str(bento.tag) if bento is not None else None,
            scoring_path="numpy fast path" if self.model.fast else "sklearn",
            features_as_of=snapshot.known_until if snapshot else None,
            tutors_known=len(snapshot.tutor_index) if snapshot else 0,
            ready=self.keeper.ready,
            not_ready_reason=self.keeper.not_ready_reason,
            risk_bands=dict(RISK_BANDS),
        )

    @bentoml.api(route="/predict")
    async def predict(self, session: SessionRequest, /) -> PredictionResponse:
        """Risk of one upcoming first session; stored when session_id is given."""
        try:
            if session.session_id is None:
                return self.logic.predict([session])[0]
            stored = await anyio.to_thread.run_sync(self.logic.predict, [session])
            return stored[0]
        except FspError as exc:
            return error_response(exc, 400 if not isinstance(exc, DatabaseUnavailable) else None)  # type: ignore[return-value]

    @bentoml.api(
        route="/predict_batch",
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=BATCH_MAX_LATENCY_MS,
        input_spec=SessionBatchInput,
        output_spec=PredictionList,
    )
    async def predict_batch(self, sessions: SessionBatch, /) -> list[PredictionResponse]:
        """Risks of many sessions, in order (validated per request before batching).

        `sessions` arrive as parsed rows (`service.batchio.SessionRow` dicts) and the
        answers leave as JSON texts, one per row (`service.batchio.PredictionList`).
        Scoring runs on the event loop (a few ms per 1,000 rows, all CPU: a thread hop
        per batch cost more than it saved); storing, which waits on the database, runs
        in a thread."""
        predict = self.logic.predict_batch_json
        try:
            if any(row.get("session_id") for row in sessions):  # type: ignore[attr-defined]
                return await anyio.to_thread.run_sync(predict, sessions)  # type: ignore[arg-type]
            return predict(sessions)  # type: ignore[arg-type,return-value]
        except DatabaseUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except FspError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/rank_tutors")
    async def rank_tutors(self, request: RankRequest, /) -> RankResponse:
        """Candidate tutors for one student and slot, lowest risk first."""
        try:
            return self.logic.rank(request)
        except FspError as exc:
            return error_response(exc, 400 if not isinstance(exc, DatabaseUnavailable) else None)  # type: ignore[return-value]


FirstSessionRisk.add_asgi_middleware(DatabaseGate)  # type: ignore[attr-defined]
