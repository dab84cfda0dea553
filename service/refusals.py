"""Every refusal the API sends, in one place: the HTTP status of each expected failure
(`STATUS_OF`) and the one JSON shape of a refusal, {"error": reason} (with pydantic's
errors under "detail" when a request failed validation).

Three kinds of code answer with it: the FastAPI apps' exception handlers
(`install_handlers`), the BentoML endpoints (`error_response`, or `batch_refusal` for
the batchable endpoint, which can only raise), and the ASGI middlewares that refuse a
request before it reaches an endpoint (`send_refusal`, and `json_refusal_body` for the
answers Starlette's routers word themselves). `OneLineExpectedErrors` keeps each
refusal to one line of the server's log."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from bentoml.exceptions import BentoMLException, ServiceUnavailable
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import JSONResponse

from fsp.errors import DatabaseUnavailable, FspError, InvalidInput, UnknownTutor

STATUS_OF: Final[Mapping[type[FspError], int]] = {
    DatabaseUnavailable: 503,
    UnknownTutor: 404,
    InvalidInput: 400,
    FspError: 400,
}
"""The status of each expected failure (the most specific class listed wins): a tutor
in a path that does not exist is 404; a wrong field of a request body is
InvalidInput; anything the database cannot answer now is 503."""

MAX_REFUSAL_TEXT: Final = 300
"""Longest plain-text refusal carried over into {"error": ...} by `json_refusal_body`."""


def status_of(exc: FspError) -> int:
    """The HTTP status of an expected failure."""
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return 400


def refusal(message: str, detail: list[Any] | None = None) -> dict[str, Any]:
    """The body of every refusal."""
    return {"error": message} if detail is None else {"error": message, "detail": detail}


def error_response(exc: FspError) -> JSONResponse:
    """An expected failure as its status and JSON body."""
    return JSONResponse(refusal(str(exc)), status_code=status_of(exc))


async def send_refusal(
    scope: Any, receive: Any, send: Any, status: int, message: str, **headers: str
) -> None:
    """A refusal sent by an ASGI middleware, before any endpoint saw the request."""
    response = JSONResponse(refusal(message), status_code=status, headers=headers or None)
    await response(scope, receive, send)


def batch_refusal(exc: FspError) -> Exception:
    """What the batchable /predict_batch raises for an expected failure: BentoML's
    endpoint wrapper, not the service, writes that answer, so it gets an exception it
    answers with the same status. A 4xx becomes a ValidationError ({"error", "detail"},
    like every other 400 of that endpoint); a 503 BentoML's ServiceUnavailable."""
    status = status_of(exc)
    if status == 503:
        return ServiceUnavailable(str(exc))
    error = {"type": "value_error", "loc": (), "input": None, "ctx": {"error": str(exc)}}
    return ValidationError.from_exception_data("predict_batch", [error])  # type: ignore[list-item]


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line naming each wrong field and why (the first few), e.g.
    "1 validation error: query.now: must be an ISO 8601 date and time ..."."""
    parts = []
    for error in errors[:3]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "request"
        why = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {why}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} validation {noun}: " + "; ".join(parts) + more


async def _invalid_request(_: Any, exc: RequestValidationError) -> JSONResponse:
    """422 like every other refusal: {"error": what is wrong, "detail": pydantic's errors}
    (FastAPI's own answer has no "error")."""
    errors = list(exc.errors())
    body = refusal(validation_message(errors), jsonable_encoder(errors))
    return JSONResponse(body, status_code=422)


async def _expected_failure(_: Any, exc: FspError) -> JSONResponse:
    return error_response(exc)


def install_handlers(app: FastAPI, validates_parameters: bool = True) -> None:
    """Answer an app's expected failures (and, when it has parameters to validate, its
    422s) with the one refusal shape."""
    app.add_exception_handler(FspError, _expected_failure)  # type: ignore[arg-type]
    if validates_parameters:
        app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]


def says_why(body: bytes) -> bool:
    """A JSON object with a non-empty "error" text."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:  # not JSON: it says nothing in the one shape
        return False
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return isinstance(error, str) and bool(error.strip())


def _message_of(status: int, body: bytes) -> tuple[str, list[Any] | None]:
    """What a refusal body says, as (message, pydantic's detail list or None): its
    "detail" (FastAPI's form), else its text, else the status's reason phrase."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:  # plain text: carried over as the message below
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


def json_refusal_body(status: int, body: bytes) -> bytes:
    """A refusal worded by someone else (Starlette's 405 in plain text, FastAPI's
    {"detail": ...}) in the one shape, saying the same thing."""
    return json.dumps(refusal(*_message_of(status, body))).encode()


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
