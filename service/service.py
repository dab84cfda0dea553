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

import hmac
import json
import logging
import re
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio.to_thread
import bentoml
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, PlainTextResponse

from fsp.constants import RISK_BANDS
from fsp.errors import DatabaseUnavailable, FspError
from fsp.settings import Settings, get_settings
from service.api import bento_openapi, error_response, meta_app, read_app
from service.batchio import PredictionList, SessionBatchInput
from service.config import (
    API_PREFIX,
    BATCH_MAX_LATENCY_MS,
    DOCS_PATHS,
    MAX_BATCH_SIZE,
    MAX_BODY_BYTES,
    METRICS_PATHS,
    OTHER_ROUTE_LABEL,
    PUBLIC_PATHS,
    REQUEST_TIMEOUT_SECONDS,
    SERVICE_NAME,
    UNTRACED_PATHS,
    WORKERS,
)
from service.dashboard import add_dashboard
from service.reuseport import listen_on_own_socket
from service.schemas import (
    ModelInfo,
    PredictionResponse,
    RankRequest,
    RankResponse,
    SessionBatch,
    SessionRequest,
)

add_dashboard(read_app)  # the operations page, beside the read endpoints


class BentoArgs(BaseModel):
    """Build-time arguments (`bentoml build --arg model_tag=NAME:VERSION`)."""

    model_tag: str = f"{Settings.model_fields['model_name'].default}:latest"


def utc_now() -> datetime:
    """The clock, in UTC (the moment a request is answered as of)."""
    return datetime.now(UTC)


def database_url_of(settings: Settings) -> str:
    """DATABASE_URL, else the embedded PostgreSQL under FSP_STATE_DIR (started if needed)."""
    from fsp.db import database_url

    return database_url(settings)


GATED_PATHS = frozenset({"/predict", "/predict_batch", "/rank_tutors"})
"""Endpoints that answer 503 with the reason while the database is down."""

_REAL_PATH = "fsp.path"
"""Scope key holding the request's path while `scope["path"]` carries its route label."""

_NO_ROUTE = "fsp.no_route"
"""Scope key: true when no route of the service serves the path (answered 404 as JSON)."""


async def _answer(
    scope: Any, receive: Any, send: Any, status: int, message: str, **headers
) -> None:
    """An expected refusal as JSON: {"error": message}."""
    await JSONResponse({"error": message}, status_code=status, headers=headers or None)(
        scope, receive, send
    )


def _header(scope: Any, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class RouteLabels:
    """Outermost ASGI wrapper: BentoML's metrics middleware labels each request with
    `scope["path"]` (its `endpoint` label), so every distinct path, a 404 scan's or a
    tutor id's in /history/{tutor_id}, would add series to /metrics for good. This
    wrapper puts the route's template there instead (OTHER_ROUTE_LABEL for a path no
    route serves) and keeps the path under `_REAL_PATH`; `RestorePath`, the first of
    the service's own middlewares, puts it back before routing."""

    def __init__(self, app: Any, exact: frozenset[str], templates: list[tuple[re.Pattern, str]]):
        self.app = app
        self.exact = exact
        self.templates = templates

    def label(self, path: str) -> str:
        if path in self.exact:
            return path
        if path.startswith("/static_content/"):
            return "/static_content"
        for pattern, template in self.templates:
            if pattern.fullmatch(path):
                return template
        return OTHER_ROUTE_LABEL

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            label = self.label(path)
            if label != path:
                scope = {**scope, "path": label, _REAL_PATH: path}
        await self.app(scope, receive, send)


_SEGMENT = r"[^/\x00-\x08\x0a-\x1f\x7f]+"
"""A path parameter: one segment without control characters (a tab aside, as in ids);
a path with one is no route (404), as Starlette's own mount patterns say."""


def route_labels(app: Any, service: Any) -> RouteLabels:
    """`RouteLabels` around `app` for the service's routes and its mounted apps' routes."""
    exact = {api.route for api in service.apis.values()}
    exact |= {"/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json"}
    templates: list[tuple[re.Pattern, str]] = []
    for mounted, prefix, _ in service.mount_apps:
        for route in getattr(mounted, "routes", []):
            path = getattr(route, "path", None)
            if not path:
                continue
            full = (prefix.rstrip("/") + path) or "/"
            if "{" in full:
                pattern = re.sub(r"\\\{[^}]*\\\}", lambda _: _SEGMENT, re.escape(full))
                templates.append((re.compile(pattern), full))
            else:
                exact.add(full)
    return RouteLabels(app, frozenset(exact), templates)


class RestorePath:
    """Puts the request's path back where `RouteLabels` left its label (see there)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _REAL_PATH in scope:
            label = scope["path"]
            scope = {**scope, "path": scope[_REAL_PATH], _NO_ROUTE: label == OTHER_ROUTE_LABEL}
            del scope[_REAL_PATH]
        await self.app(scope, receive, send)


MAX_REFUSAL_TEXT = 300
"""Longest plain-text refusal carried over into {"error": ...} by `JsonRefusals`."""


def _refusal_message(status: int, body: bytes) -> tuple[str, Any]:
    """What a refusal body says, as (message, pydantic's detail list or None): the body's
    own "error", else its "detail" (FastAPI's form), else its text, else the status's
    reason phrase."""
    from service.api import validation_message

    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        detail = parsed.get("detail")
        if isinstance(detail, list):
            return validation_message([d for d in detail if isinstance(d, dict)]), detail
        if isinstance(detail, str) and detail.strip():
            return detail.strip(), None
    if text and parsed is None:
        return text[:MAX_REFUSAL_TEXT], None
    return HTTPStatus(status).phrase, None


class JsonRefusals:
    """ASGI middleware: every 4xx answers a JSON object whose "error" says what was wrong.
    The service's own refusals already do; Starlette's routers answer some themselves
    (405 Method Not Allowed in plain text, FastAPI's {"detail": ...}): those are
    rewritten, keeping their status and headers (Allow, WWW-Authenticate). Only 4xx
    bodies are held (they are small); every other answer streams through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def send_json_refusal(message: Any) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                held["start"], held["chunks"] = message, []
                return
            if "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            held["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = held.pop("start"), b"".join(held.pop("chunks"))
            if not _says_why(body):
                status = start["status"]
                error, detail = _refusal_message(status, body)
                answer: dict[str, Any] = {"error": error}
                if detail is not None:
                    answer["detail"] = detail
                body = json.dumps(answer).encode()
                kept = [
                    (k, v)
                    for k, v in start.get("headers", [])
                    if k.lower() not in (b"content-length", b"content-type")
                ]
                kept += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                start = {**start, "headers": kept}
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, send_json_refusal)


def _says_why(body: bytes) -> bool:
    """A JSON object with a non-empty "error" text."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return False
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return isinstance(error, str) and bool(error.strip())


class AccessGuard:
    """ASGI middleware: with FSP_API_KEY set, every endpoint but /livez and /readyz asks
    for `Authorization: Bearer <key>` and answers 401 without one of the keys; /metrics
    and the documentation too, unless FSP_API_PUBLIC_METRICS / FSP_API_PUBLIC_DOCS.
    Keys are compared in constant time, against every key, and never echoed."""

    def __init__(self, app: Any, settings: Settings | None = None) -> None:
        self.app = app
        settings = settings or get_settings()
        self.keys = settings.api_keys
        open_paths = set(PUBLIC_PATHS)
        if settings.api_public_metrics:
            open_paths |= METRICS_PATHS
        self.public_docs = settings.api_public_docs
        if self.public_docs:
            open_paths |= DOCS_PATHS
        self.open_paths = frozenset(open_paths)

    def allowed(self, scope: Any) -> bool:
        path = scope["path"]
        if path in self.open_paths:
            return True
        if self.public_docs and path.startswith("/static_content/"):
            return True
        given = _header(scope, b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        matched = False
        for key in self.keys:  # every key, whatever matched: no timing tells which
            matched |= hmac.compare_digest(token, key)
        return matched

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.keys and not self.allowed(scope):
            await _answer(
                scope,
                receive,
                send,
                401,
                "unauthorized: send the API key as 'Authorization: Bearer <key>'",
                **{"WWW-Authenticate": "Bearer"},
            )
            return
        await self.app(scope, receive, send)


_FORM_TYPES = (b"multipart/", b"application/x-www-form-urlencoded")


class BodyLimit:
    """ASGI middleware: a body over MAX_BODY_BYTES answers 413 (by its Content-Length,
    or once that much has streamed in), and the POST endpoints take JSON only: a form
    (multipart, with or without a boundary) answers 415 instead of reaching BentoML's
    form parser. The body is read here, within the limit, and handed on whole."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _answer(scope, receive, send, 400, "content-length: not a number")
                return
            if int(length) > self.limit:
                await self._too_large(scope, receive, send)
                return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        content_type = (_header(scope, b"content-type") or b"").lower().lstrip()
        if content_type.startswith(_FORM_TYPES):
            message = "content-type: send the body as application/json"
            await _answer(scope, receive, send, 415, message)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handed = False

        async def replay() -> Any:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        message = f"request body larger than {self.limit} bytes"
        await _answer(scope, receive, send, 413, message, Connection="close")


class OpenAPIDocument:
    """ASGI middleware: GET /docs.json answers the service's OpenAPI 3.1 document as
    `service.api.bento_openapi` corrects BentoML's (built once per worker)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.document: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json":
            if self.document is None:
                self.document = bento_openapi(FirstSessionRisk.openapi_spec.asdict())  # type: ignore[attr-defined]
            await JSONResponse(self.document)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _not_ready_reason() -> str | None:
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return "service is starting"
    return service.keeper.not_ready_reason


class DatabaseGate:
    """ASGI middleware: while the database is down (or the snapshot not built yet), the
    predict and read endpoints answer 503 with the reason and /readyz says why. A path
    no route serves answers 404 as JSON here (after the key was checked).

    It runs before the body is parsed, which matters for /predict_batch: after
    adaptive batching merges requests, no single caller could be answered 503."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if scope.get(_NO_ROUTE):
                await _answer(scope, receive, send, 404, "not found: no such endpoint")
                return
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


class OneLineExpectedErrors(logging.Filter):
    """BentoML logs every refused request with its traceback (~2 KB each; a fuzzer's
    run wrote 76 MB). An expected refusal (a validation error, a 4xx, a 503) becomes one
    line, without the traceback nor the input; anything else is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = None
        if isinstance(exc, ValidationError):
            status, reason = 400, f"{exc.error_count()} validation error(s) for {exc.title}"
        elif isinstance(exc, BentoMLException) and (exc.error_code < 500 or exc.error_code == 503):
            status, reason = int(exc.error_code), type(exc).__name__
        if status is None:
            return True
        where = (
            record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        )
        record.msg = "%s %s %s: %s"
        record.args = (status, where[1], where[0], reason)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(OneLineExpectedErrors())


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
        self.logic = RiskService(self.model, self.keeper, utc_now, hide_record_reasons=True)
        self.keeper.start()

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
        except FspError as exc:  # a 400 shaped like every other one: {"error", "detail"}
            error = {"type": "value_error", "loc": (), "input": None, "ctx": {"error": str(exc)}}
            raise ValidationError.from_exception_data("predict_batch", [error]) from None  # type: ignore[list-item]

    @bentoml.api(route="/rank_tutors")
    async def rank_tutors(self, request: RankRequest, /) -> RankResponse:
        """Candidate tutors for one student and slot, lowest risk first."""
        try:
            return self.logic.rank(request)
        except FspError as exc:
            return error_response(exc, 400 if not isinstance(exc, DatabaseUnavailable) else None)  # type: ignore[return-value]


for _middleware in (
    RestorePath,
    JsonRefusals,
    AccessGuard,
    BodyLimit,
    OpenAPIDocument,
    DatabaseGate,
):
    FirstSessionRisk.add_asgi_middleware(_middleware)  # type: ignore[attr-defined]


class _LabelledService(type(FirstSessionRisk)):  # type: ignore[misc]
    """The service, served with `RouteLabels` outside BentoML's own middleware (the
    only place a wrapper sees a request before its metrics label is taken)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return route_labels(super().to_asgi(is_main), self)


FirstSessionRisk.__class__ = _LabelledService  # type: ignore[method-assign]
