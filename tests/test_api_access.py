"""In-process tests of the API's gate: the API key rule, the body limits, the route
labels of /metrics, the one-line log of an expected refusal, the bounded request
types and `fsp serve --host`. The same rules are exercised over HTTP against the
served Bento in test_service_http.py."""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fsp.settings import Settings
from service.config import OTHER_ROUTE_LABEL
from service.middleware import (
    AccessGuard,
    BodyLimit,
    RestorePath,
    RouteLabels,
    route_labels,
)
from service.refusals import OneLineExpectedErrors
from service.schemas import Moment, _zone_exists, start_window_problem

KEYS = "alpha-key, beta-key,,"


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"path": request.url.path, "bytes": len(body)})


def _inner() -> Starlette:
    paths = ("/predict", "/metrics", "/docs.json", "/livez", "/readyz", "/model")
    return Starlette(routes=[Route(p, _echo, methods=["GET", "POST"]) for p in paths])


def _guarded(**settings) -> TestClient:
    env = {"FSP_API_KEY": KEYS, **settings}
    return TestClient(AccessGuard(_inner(), Settings(**env)))


def test_api_keys_are_secret_and_split_at_commas() -> None:
    settings = Settings(FSP_API_KEY=KEYS)
    assert settings.api_keys == (b"alpha-key", b"beta-key")
    assert "alpha" not in repr(settings) and "alpha" not in str(settings.model_dump())
    assert Settings(FSP_API_KEY=None).api_keys == ()
    assert Settings(FSP_API_KEY=" , ").api_keys == ()


def test_no_key_set_leaves_every_endpoint_open() -> None:
    client = TestClient(AccessGuard(_inner(), Settings(FSP_API_KEY=None)))
    for path in ("/predict", "/metrics", "/docs.json", "/model"):
        assert client.get(path).status_code == 200


def test_key_required_but_on_livez_and_readyz() -> None:
    client = _guarded()
    for path in ("/predict", "/metrics", "/docs.json", "/model"):
        refused = client.get(path)
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        for key in ("alpha-key", "beta-key"):
            assert client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for wrong in (
            "Bearer alpha",
            "Bearer alpha-key2",
            "Bearer ",
            "alpha-key",
            "Basic beta-key",
        ):
            assert client.get(path, headers={"Authorization": wrong}).status_code == 401
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200


def test_metrics_and_docs_public_only_by_setting() -> None:
    metrics = _guarded(FSP_API_PUBLIC_METRICS="true")
    assert metrics.get("/metrics").status_code == 200
    assert metrics.get("/docs.json").status_code == 401
    docs = _guarded(FSP_API_PUBLIC_DOCS="true")
    assert docs.get("/docs.json").status_code == 200
    assert docs.get("/metrics").status_code == 401
    assert docs.get("/predict").status_code == 401


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest against each key, whichever matched (no early exit)."""
    calls: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr("service.middleware.hmac.compare_digest", counting)
    client = _guarded()
    assert client.get("/model", headers={"Authorization": "Bearer alpha-key"}).status_code == 200
    assert calls == [b"alpha-key", b"beta-key"]


def test_body_limit_and_json_only() -> None:
    client = TestClient(BodyLimit(_inner(), limit=100))
    fine = client.post("/predict", content=b"x" * 100)
    assert fine.status_code == 200 and fine.json()["bytes"] == 100  # handed on whole
    declared = client.post("/predict", content=b"x" * 101)
    assert declared.status_code == 413 and "larger than 100 bytes" in declared.json()["error"]

    def chunks():
        yield b"x" * 60
        yield b"x" * 60

    assert client.post("/predict", content=chunks()).status_code == 413
    for content_type in (
        "multipart/form-data",
        "Multipart/Form-Data; boundary=a",
        "application/x-www-form-urlencoded",
    ):
        form = client.post("/predict", content=b"a=1", headers={"content-type": content_type})
        assert form.status_code == 415 and "application/json" in form.json()["error"]
    assert client.get("/model").status_code == 200


def test_route_labels_bound_the_metrics() -> None:
    seen: list[tuple[str, str]] = []

    async def inner(scope, receive, send):  # what BentoML's metrics middleware sees
        seen.append((scope["path"], ""))
        await RestorePath(record)(scope, receive, send)

    async def record(scope, receive, send):
        seen[-1] = (seen[-1][0], scope["path"])
        await JSONResponse({})(scope, receive, send)

    import re

    labels = RouteLabels(
        inner,
        frozenset({"/predict", "/model"}),
        [
            (
                re.compile(r"/api/first\-session/history/[^/]+"),
                "/api/first-session/history/{tutor_id}",
            )
        ],
    )
    client = TestClient(labels)
    for path in ("/predict", "/api/first-session/history/T1", "/nope/1", "/static_content/x.js"):
        client.get(path)
    assert seen == [
        ("/predict", "/predict"),
        ("/api/first-session/history/{tutor_id}", "/api/first-session/history/T1"),
        (OTHER_ROUTE_LABEL, "/nope/1"),
        ("/static_content", "/static_content/x.js"),
    ]


def test_route_labels_of_the_service() -> None:
    from service.service import FirstSessionRisk

    labels = route_labels(None, FirstSessionRisk)
    assert labels.label("/predict_batch") == "/predict_batch"
    assert labels.label("/model") == "/model"
    assert (
        labels.label("/api/first-session/analytics/summary")
        == "/api/first-session/analytics/summary"
    )
    assert labels.label("/api/first-session/history/ANY") == "/api/first-session/history/{tutor_id}"
    assert labels.label("/api/first-session/history/A/B") == OTHER_ROUTE_LABEL
    assert labels.label("/predict/x") == OTHER_ROUTE_LABEL


def test_expected_refusal_logs_one_line() -> None:
    class Body(BaseModel):
        n: int

    try:
        Body(n="NEEDLE")  # type: ignore[arg-type]
    except ValidationError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "bentoml._internal.server.http_app",
        logging.ERROR,
        __file__,
        1,
        "Exception on %s [%s]",
        ("/predict", "POST"),
        exc_info,
    )
    assert OneLineExpectedErrors().filter(record)
    line = logging.Formatter().format(record)
    assert line == "400 POST /predict: 1 validation error(s) for Body"
    assert record.levelno == logging.INFO
    other = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "Exception on %s [%s]",
        ("/p", "GET"),
        (RuntimeError, RuntimeError("bug"), None),
    )
    assert OneLineExpectedErrors().filter(other) and other.exc_info is not None


def test_moments_are_iso_strings_within_bounds() -> None:
    from pydantic import TypeAdapter

    moment = TypeAdapter(Moment)
    assert moment.validate_python("2026-11-03T16:00:00-05:00").utcoffset() == timedelta(hours=-5)
    assert moment.validate_python("2026-11-03T16:00:00+14:00")
    for bad in (
        1700000000,
        "1700000000",
        1.0,
        "2026-11-03T16:00:00+14:01",
        "2026-11-03T16:00:00-15:00",
        "0001-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59-12:00",
        "2100-12-31T23:00:00-02:00",
        "2026-11-03T16:00:00",
    ):
        with pytest.raises(ValidationError):
            moment.validate_python(bad)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    assert start_window_problem(now - timedelta(hours=23), now) is None
    assert start_window_problem(now + timedelta(days=365), now) is None
    assert "past" in (start_window_problem(now - timedelta(days=2), now) or "")
    assert "ahead" in (start_window_problem(now + timedelta(days=366), now) or "")


def test_unknown_zones_are_not_remembered() -> None:
    from service import schemas

    before = set(schemas._KNOWN_ZONES)
    for i in range(50):
        assert not _zone_exists(f"Nowhere/Made-Up-{i}")
    assert _zone_exists("America/Chicago")
    assert schemas._KNOWN_ZONES - before <= {"America/Chicago"}


def test_serve_listens_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from flows.cli import app
    from service.packaging import exposure_warning, serve_command

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    args = serve.make_context("serve", []).params
    assert args["host"] == "127.0.0.1" and args["port"] == 3000
    assert serve.make_context("serve", ["--host", "0.0.0.0"]).params["host"] == "0.0.0.0"
    command = serve_command("svc:v1", 3000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    open_settings = Settings(FSP_API_KEY=None)
    assert exposure_warning(open_settings, "127.0.0.1") is None
    assert exposure_warning(open_settings, "localhost") is None
    assert "FSP_API_KEY" in (exposure_warning(open_settings, "0.0.0.0") or "")
    assert exposure_warning(Settings(FSP_API_KEY="k"), "0.0.0.0") is None


@pytest.mark.services
def test_service_connections_give_up_quickly(server_url: str) -> None:
    """The health and pooled connections carry a short connect timeout and TCP timeouts
    (a vanished host fails a query in seconds, not after the kernel's minutes)."""
    from service.database import DatabaseHealth, RequestPool

    health = DatabaseHealth(resolve_url=lambda: server_url)
    pool = RequestPool(health)
    health.located.append(pool.open)
    try:
        assert health.check() and health.error is None
        with pool.connection() as pooled:
            connections = (health.connection, pooled)
            for conn in connections:
                assert conn is not None
                options = {o.keyword: o.val for o in conn.pgconn.info}
                assert options[b"connect_timeout"] == b"2"
                assert options[b"tcp_user_timeout"] == b"3000"
                assert options[b"keepalives_idle"] == b"5"
    finally:
        pool.close()
        health.close()


def test_a_dead_database_answers_within_a_second() -> None:
    """Nothing listens: the keeper's health check and a request's connection fail fast,
    and the reason a caller reads says nothing of where the database is."""
    import time

    from fsp.errors import DatabaseUnavailable
    from service.database import DatabaseHealth, RequestPool
    from service.lookup import SnapshotKeeper

    health = DatabaseHealth(resolve_url=lambda: "postgresql://nobody@127.0.0.1:9/secretdb")
    pool = RequestPool(health)
    health.located.append(pool.open)
    keeper = SnapshotKeeper(health, clock=lambda: datetime.now(UTC))
    try:
        started = time.monotonic()
        assert not health.check()
        assert keeper.not_ready_reason == "database unavailable"
        health.error = None  # as if the health check had not noticed yet
        with (
            pytest.raises(DatabaseUnavailable, match=r"^database unavailable$"),
            pool.connection(),
        ):
            pass
        assert time.monotonic() - started < 1.5
    finally:
        pool.close()
        health.close()


def test_one_table_maps_each_expected_failure_to_its_status() -> None:
    """Every endpoint answers an expected failure with the status of `STATUS_OF` and the
    one body shape; the batchable endpoint raises what BentoML answers with that status."""
    from bentoml.exceptions import ServiceUnavailable

    from fsp.errors import DatabaseUnavailable, InvalidInput, NoChampion, UnknownTutor
    from service.refusals import batch_refusal, error_response, status_of

    cases = {
        DatabaseUnavailable("database unavailable"): 503,
        UnknownTutor("unknown tutor_id 'T'"): 404,
        InvalidInput("student_id: unknown student_id 'S'"): 400,
        NoChampion("no champion"): 400,
    }
    for exc, status in cases.items():
        assert status_of(exc) == status
        response = error_response(exc)
        assert response.status_code == status
        assert json.loads(bytes(response.body)) == {"error": str(exc)}
    assert isinstance(batch_refusal(DatabaseUnavailable("down")), ServiceUnavailable)
    invalid = batch_refusal(InvalidInput("unknown tutor_id 'T'"))
    assert isinstance(invalid, ValidationError) and "unknown tutor_id 'T'" in str(invalid)
