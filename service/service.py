"""The Bento: BentoML 1.4 service answering the predict API.

- POST /predict: one session, not batched (interactive callers get ~1 ms).
- POST /predict_batch: a JSON list of sessions, adaptive batching over lists of
  pydantic records (never DataFrames), answers a list in order.
- POST /rank_tutors: candidates ordered from lowest to highest risk.
- GET /model: the MLflow version served. /api/first-session/...: read endpoints
  (`service.api`; a new one there follows their access rules, `service.access`).
- /readyz: ready once the model is loaded, the feature snapshot is built and the
  database answers; says why not otherwise. /metrics, /docs.json come with BentoML.

The model is pinned at build time: `fsp package` passes the exact BentoML model
tag as a Bento argument, recorded in the Bento and restored whenever it is served,
so a Bento never changes its model. Expected failures are answered through
`service.refusals`; the middlewares are `service.middleware`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel

from fsp.constants import RISK_BANDS
from fsp.errors import FspError
from fsp.settings import Settings, get_settings
from service.api import bento_openapi, meta_app, read_app
from service.batchio import PredictionList, SessionBatchInput
from service.bentoml_adapter import REFUSED_REQUESTS_LOGGER
from service.config import (
    API_PREFIX,
    BATCH_MAX_LATENCY_MS,
    MAX_BATCH_SIZE,
    REQUEST_TIMEOUT_SECONDS,
    SERVICE_NAME,
    UNTRACED_PATHS,
    WORKERS,
)
from service.middleware import (
    AccessGuard,
    BodyLimit,
    DatabaseGate,
    JsonRefusals,
    OpenAPIDocument,
    RestorePath,
    route_labels,
)
from service.refusals import OneLineExpectedErrors, batch_refusal, error_response
from service.reuseport import listen_on_own_socket
from service.schemas import (
    ModelInfo,
    PredictionResponse,
    RankRequest,
    RankResponse,
    SessionBatch,
    SessionRequest,
)

log = logging.getLogger(__name__)


class BentoArgs(BaseModel):
    """Build-time arguments (`bentoml build --arg model_tag=NAME:VERSION`)."""

    model_tag: str = f"{Settings.model_fields['model_name'].default}:latest"


def utc_now() -> datetime:
    """The clock, in UTC (the moment a request is answered as of)."""
    return datetime.now(UTC)


def database_url_of(settings: Settings) -> str:
    """DATABASE_URL, else the embedded PostgreSQL under FSP_STATE_DIR (started if needed)."""
    # Imported here: only a worker (never the CLI reading this module) needs the database.
    from fsp.db import database_url

    return database_url(settings)


def show_service_logs() -> None:
    """BentoML's server log configuration shows its own loggers at INFO and disables
    the loggers that existed before it ran: the service's module loggers ("service.*")
    are shown at INFO too."""
    logging.getLogger("service").setLevel(logging.INFO)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("service.") and isinstance(logger, logging.Logger):
            logger.disabled = False


logging.getLogger(REFUSED_REQUESTS_LOGGER).addFilter(OneLineExpectedErrors())


ARGS = bentoml.use_arguments(BentoArgs)


@bentoml.asgi_app(meta_app, path="/")
@bentoml.asgi_app(read_app, path=API_PREFIX)
@bentoml.service(
    name=SERVICE_NAME,
    workers=WORKERS,
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
    tracing={"excluded_urls": list(UNTRACED_PATHS)},
    logging={"access": {"enabled": False}},
)
class FirstSessionRisk:
    """Scores upcoming first sessions with the packaged champion."""

    bento_model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        # Imported here, in the worker only: the CLI process that reads this module
        # for its configuration never pays for pandas and psycopg.
        from service.served_model import load_served_model
        from service.worker import assemble

        show_service_logs()
        stored = self.bento_model
        info = stored.info
        self.model = load_served_model(
            Path(stored.path), str(stored.tag), dict(info.labels), dict(info.metadata)
        )
        resolve_url = partial(database_url_of, get_settings())
        self.worker = assemble(self.model, resolve_url, utc_now, hide_record_reasons=True)
        self.keeper = self.worker.keeper
        self.reference = self.worker.references  # what request validation asks
        self.logic = self.worker.logic
        self.worker.start()
        log.info(
            "serving %s (MLflow version %s)", self.model.bento_model, self.model.mlflow_version
        )

    def __is_ready__(self) -> bool:
        return self.keeper.ready

    @bentoml.on_startup
    def own_listener(self) -> None:
        """Each worker listens on a socket of its own, so the connections a client's
        pool opens at once are spread over the workers (see service.reuseport)."""
        listen_on_own_socket()

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop the snapshot thread and close the connections."""
        self.worker.stop()

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
            return error_response(exc)  # type: ignore[return-value]

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
        except FspError as exc:
            raise batch_refusal(exc) from None

    @bentoml.api(route="/rank_tutors")
    async def rank_tutors(self, request: RankRequest, /) -> RankResponse:
        """Candidate tutors for one student and slot, lowest risk first."""
        try:
            return self.logic.rank(request)
        except FspError as exc:
            return error_response(exc)  # type: ignore[return-value]


def _not_ready_reason() -> str | None:
    """Why this worker cannot answer now (None when it can)."""
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return "service is starting"
    return service.keeper.not_ready_reason


def _openapi_document() -> dict[str, Any]:
    return bento_openapi(FirstSessionRisk.openapi_spec.asdict())  # type: ignore[attr-defined]


for _middleware, _options in (
    (RestorePath, {}),
    (JsonRefusals, {}),
    (AccessGuard, {}),
    (BodyLimit, {}),
    (OpenAPIDocument, {"document": _openapi_document}),
    (DatabaseGate, {"not_ready_reason": _not_ready_reason}),
):
    FirstSessionRisk.add_asgi_middleware(_middleware, **_options)  # type: ignore[attr-defined]


class _LabelledService(type(FirstSessionRisk)):  # type: ignore[misc]
    """The service, served with `RouteLabels` outside BentoML's own middleware (the
    only place a wrapper sees a request before its metrics label is taken)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return route_labels(super().to_asgi(is_main), self)


FirstSessionRisk.__class__ = _LabelledService  # type: ignore[method-assign]
