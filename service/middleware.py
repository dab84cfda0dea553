"""The service's ASGI middlewares, outermost first as `service.service` installs them:

- `RouteLabels` (outside BentoML's own) / `RestorePath`: /metrics labels each request
  by its route's template, never by the path a caller made up;
- `JsonRefusals`: every 4xx is a JSON object saying what was wrong;
- `AccessGuard`: the API key (`service.access.AccessRules` says where it is needed);
- `BodyLimit`: bodies over MAX_BODY_BYTES answer 413, forms 415;
- `OpenAPIDocument`: GET /docs.json, the corrected OpenAPI document;
- `DatabaseGate`: 503 with the reason while the database is down; 404 for no route.

Each refusal is sent through `service.refusals`."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse

from fsp.settings import Settings, get_settings
from service.access import STATIC_PREFIX, AccessRules, needs_database
from service.config import MAX_BODY_BYTES, OTHER_ROUTE_LABEL, TRACKING_PREFIXES
from service.refusals import json_refusal_body, says_why, send_refusal

REAL_PATH = "fsp.path"
"""Scope key holding the request's path while `scope["path"]` carries its route label."""

NO_ROUTE = "fsp.no_route"
"""Scope key: true when no route of the service serves the path (answered 404 as JSON)."""

UNAUTHORIZED = "unauthorized: send the API key as 'Authorization: Bearer <key>'"


def header(scope: Any, name: bytes) -> bytes | None:
    """A request header's value (the first one of that name), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class RouteLabels:
    """Outermost ASGI wrapper: BentoML's metrics middleware labels each request with
    `scope["path"]` (its `endpoint` label), so every distinct path, a 404 scan's or a
    tutor id's in /history/{tutor_id}, would add series to /metrics for good. This
    wrapper puts the route's template there instead (OTHER_ROUTE_LABEL for a path no
    route serves) and keeps the path under `REAL_PATH`; `RestorePath`, the first of
    the service's own middlewares, puts it back before routing."""

    def __init__(self, app: Any, exact: frozenset[str], templates: list[tuple[re.Pattern, str]]):
        self.app = app
        self.exact = exact
        self.templates = templates

    def label(self, path: str) -> str:
        if path in self.exact:
            return path
        if path.startswith(STATIC_PREFIX):
            return STATIC_PREFIX.rstrip("/")
        for pattern, template in self.templates:
            if pattern.fullmatch(path):
                return template
        return OTHER_ROUTE_LABEL

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            label = self.label(path)
            if label != path:
                scope = {**scope, "path": label, REAL_PATH: path}
        await self.app(scope, receive, send)


_SEGMENT = r"[^/\x00-\x08\x0a-\x1f\x7f]+"
"""A path parameter: one segment without control characters (a tab aside, as in ids);
a path with one is no route (404), as Starlette's own mount patterns say."""

BENTOML_PATHS = frozenset({"/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json"})
"""Routes BentoML serves itself, besides the service's APIs."""


def _parameter_pattern(parameter: re.Match) -> str:
    """A path parameter's pattern: one segment, or any rest of the path, control
    characters too, for Starlette's `:path` convertor (the email tracking routes, which
    answer whatever follows their prefix)."""
    return r"[\s\S]*" if ":path" in parameter.group(0) else _SEGMENT


def route_labels(app: Any, service: Any) -> RouteLabels:
    """`RouteLabels` around `app` for the service's routes and its mounted apps' routes."""
    exact = {api.route for api in service.apis.values()} | BENTOML_PATHS | {"/schema.json"}
    templates: list[tuple[re.Pattern, str]] = []
    for mounted, prefix, _ in service.mount_apps:
        for route in getattr(mounted, "routes", []):
            path = getattr(route, "path", None)
            if not path:
                continue
            full = (prefix.rstrip("/") + path) or "/"
            if "{" in full:
                pattern = re.sub(r"\\\{[^}]*\\\}", _parameter_pattern, re.escape(full))
                templates.append((re.compile(pattern), full))
            else:
                exact.add(full)
    return RouteLabels(app, frozenset(exact), templates)


class RestorePath:
    """Puts the request's path back where `RouteLabels` left its label (see there)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and REAL_PATH in scope:
            label = scope["path"]
            path = routable(scope[REAL_PATH])
            scope = {**scope, "path": path, NO_ROUTE: label == OTHER_ROUTE_LABEL}
            del scope[REAL_PATH]
        await self.app(scope, receive, send)


def routable(path: str) -> str:
    """`path`, with a newline in an email tracking path made a character no token holds:
    Starlette's mount and `:path` patterns stop at a newline, and a mangled tracking
    link must still get its image or redirect, never a 404."""
    if path.startswith(TRACKING_PREFIXES):
        return path.replace("\n", "\ufffd")
    return path


def _json_start(start: dict[str, Any], length: int) -> dict[str, Any]:
    """A response start with the JSON body's type and length (other headers kept)."""
    kept = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-length", b"content-type")
    ]
    kept += [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    return {**start, "headers": kept}


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
            if not says_why(body):
                body = json_refusal_body(start["status"], body)
                start = _json_start(start, len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, send_json_refusal)


class AccessGuard:
    """ASGI middleware: with FSP_API_KEY set, every path `AccessRules` does not open asks
    for `Authorization: Bearer <key>` and answers 401 without one of the keys. Keys are
    compared in constant time, against every key, and never echoed."""

    def __init__(self, app: Any, settings: Settings | None = None) -> None:
        self.app = app
        settings = settings or get_settings()
        self.keys = settings.api_keys
        self.rules = AccessRules.from_settings(settings)

    def allowed(self, scope: Any) -> bool:
        if self.rules.is_open(scope["path"]):
            return True
        given = header(scope, b"authorization") or b""
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
            challenge = {"WWW-Authenticate": "Bearer"}
            await send_refusal(scope, receive, send, 401, UNAUTHORIZED, **challenge)
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
        problem = self._header_problem(scope)
        if problem is not None:
            status, message, headers = problem
            await send_refusal(scope, receive, send, status, message, **headers)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:  # the client went away
            return
        if len(body) > self.limit:
            status, message, headers = self._too_large()
            await send_refusal(scope, receive, send, status, message, **headers)
            return
        await self.app(scope, _replay(body, receive), send)

    def _header_problem(self, scope: Any) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) when the request's headers alone refuse it."""
        length = header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, "content-length: not a number", {}
            if int(length) > self.limit:
                return self._too_large()
        if scope["method"] in ("POST", "PUT", "PATCH"):
            content_type = (header(scope, b"content-type") or b"").lower().lstrip()
            if content_type.startswith(_FORM_TYPES):
                return 415, "content-type: send the body as application/json", {}
        return None

    def _too_large(self) -> tuple[int, str, dict[str, str]]:
        return 413, f"request body larger than {self.limit} bytes", {"Connection": "close"}

    async def _read(self, receive: Any) -> bytes | None:
        """The whole body, or as soon as it exceeds the limit what came so far (None
        when the client disconnected)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.limit or not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Callable[[], Any]:
    """A `receive` that hands over the body read already, then the client's messages."""
    handed = False

    async def replay() -> Any:
        nonlocal handed
        if not handed:
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class OpenAPIDocument:
    """ASGI middleware: GET /docs.json answers the service's OpenAPI 3.1 document, built
    once per worker by `document()` (`service.service` passes the corrected one)."""

    def __init__(self, app: Any, document: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.document = document
        self.built: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json":
            if self.built is None:
                self.built = self.document()
            await JSONResponse(self.built)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class DatabaseGate:
    """ASGI middleware: while the database is down (or the snapshot not built yet), the
    paths that need it (`service.access.needs_database`) answer 503 with the reason and
    /readyz says why. A path no route serves answers 404 as JSON here (after the key
    was checked).

    It runs before the body is parsed, which matters for /predict_batch: after
    adaptive batching merges requests, no single caller could be answered 503.
    `not_ready_reason` tells why the worker cannot answer now (None when it can)."""

    def __init__(self, app: Any, not_ready_reason: Callable[[], str | None]) -> None:
        self.app = app
        self.not_ready_reason = not_ready_reason

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get(NO_ROUTE):
            await send_refusal(scope, receive, send, 404, "not found: no such endpoint")
            return
        path: str = scope["path"]
        gated = needs_database(path)
        reason = self.not_ready_reason() if gated or path == "/readyz" else None
        if reason is None:
            await self.app(scope, receive, send)
        elif gated:
            await send_refusal(scope, receive, send, 503, reason)
        else:
            await PlainTextResponse(f"not ready: {reason}\n", status_code=503)(scope, receive, send)
