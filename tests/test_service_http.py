"""HTTP tests against a real `fsp serve` of the Bento built by `fsp package`.

The server runs as a deployment would: with FSP_API_KEY set (two keys), on the
default host (loopback), its database behind a proxy the tests can cut."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import DEMO_NOW, create_database, drop_database, seed_demo
from service_fixtures import DbProxy, fsp_serve, wait_until

from fsp.features import build_model_input, load_history
from fsp.settings import get_settings
from service.config import MAX_BATCH_SIZE, MAX_BODY_BYTES

pytestmark = pytest.mark.services

API_KEYS = ("first-key-6f1c2e9a", "second-key-0b7d4c31")
"""FSP_API_KEY of the served Bento: either key is accepted."""
AUTH = {"Authorization": f"Bearer {API_KEYS[1]}"}


@pytest.fixture(scope="session")
def service_db(server_url: str) -> Iterator[str]:
    """A database seeded like the trained world, for the service to read and write."""
    url = create_database(server_url)
    seed_demo(url)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def bento_built(trained_world: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`fsp package` against the trained world's MLflow store, into a temp BentoML home."""
    from service.packaging import package_champion

    home = tmp_path_factory.mktemp("bentoml-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("BENTOML_HOME", str(home))
    mp.setenv("BENTOML_DO_NOT_TRACK", "True")
    mp.setenv("DATABASE_URL", trained_world["database_url"])
    mp.setenv("FSP_STATE_DIR", str(trained_world["state_dir"]))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained_world['state_dir'] / 'mlflow.db'}")
    get_settings.cache_clear()
    try:
        first = package_champion(get_settings())
        again = package_champion(get_settings())
    finally:
        mp.undo()
        get_settings.cache_clear()
    return {"home": home, "first": first, "again": again, "world": trained_world}


@pytest.fixture(scope="session")
def served(bento_built: dict, service_db: str) -> Iterator[dict]:
    """`fsp serve` of the built Bento on a free loopback port, its database behind a
    proxy the tests can cut. Yields base_url, proxy, database_url, ready_seconds."""
    proxy = DbProxy(service_db)
    proxy.start()
    world = bento_built["world"]
    started = time.monotonic()
    try:
        with fsp_serve(
            world["state_dir"],
            BENTOML_HOME=str(bento_built["home"]),
            DATABASE_URL=proxy.url,
            FSP_STATE_DIR=str(world["state_dir"]),
            MLFLOW_TRACKING_URI=f"sqlite:///{world['state_dir'] / 'mlflow.db'}",
            FSP_API_KEY=" , ".join(API_KEYS),
        ) as server:
            yield {
                "base_url": server.base_url,
                "proxy": proxy,
                "database_url": service_db,
                "ready_seconds": time.monotonic() - started,
                "built": bento_built,
                "port": server.port,
                "log": server.log,
            }
    finally:
        proxy.stop()


def _first(url: str, sql: str):
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()


@pytest.fixture(scope="module")
def client(served: dict):
    """A client holding one of the API keys."""
    with httpx.Client(base_url=served["base_url"], timeout=30, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def anonymous(served: dict):
    """A client without a key."""
    with httpx.Client(base_url=served["base_url"], timeout=30) as c:
        yield c


def platform_session(url: str, session_id: str, tutor_id: str, student_id: str, **extra) -> dict:
    """A scheduled first session the platform holds (the API stores predictions only
    for those); returns the /predict body of it, by student record."""
    start = extra.pop("start", None) or (datetime.now(UTC) + timedelta(days=3)).replace(
        microsecond=0
    )
    subject = extra.pop("subject", "algebra")
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO platform.sessions (session_id, tutor_id, student_id, subject,"
            " scheduled_start, duration_minutes, status, is_first_session, created_at)"
            " VALUES (%s, %s, %s, %s, %s, 60, 'scheduled', true, now())",
            (session_id, tutor_id, student_id, subject, start),
        )
    return {
        "session_id": session_id,
        "tutor_id": tutor_id,
        "student_id": student_id,
        "subject": subject,
        "scheduled_start": start.isoformat(),
        **extra,
    }


@pytest.fixture(scope="module")
def known(served: dict) -> dict:
    """A tutor, a student and a future start time from the service's own database."""
    url = served["database_url"]
    tutors = [
        r[0]
        for r in psycopg.connect(url)
        .execute("SELECT tutor_id FROM platform.tutors ORDER BY tutor_id LIMIT 6")
        .fetchall()
    ]
    student, zone, birth = _first(
        url, "SELECT student_id, timezone, birth_date FROM platform.students ORDER BY 1 LIMIT 1"
    )
    start = (datetime.now(UTC) + timedelta(days=2)).replace(minute=30, second=0, microsecond=0)
    return {"tutors": tutors, "student": student, "zone": zone, "birth": birth, "start": start}


def _session(known: dict, **extra) -> dict:
    body = {
        "tutor_id": known["tutors"][0],
        "subject": "algebra",
        "scheduled_start": known["start"].isoformat(),
        "student_age": 15,
        "timezone": "America/Chicago",
    }
    body.update(extra)
    return body


def test_package_built_offline_with_pinned_model(bento_built: dict) -> None:
    first, again = bento_built["first"], bento_built["again"]
    assert first["scoring_path"] == "numpy fast path"
    assert first["bento_size_bytes"] > first["model_size_bytes"] > 0
    assert again["model_tag"] == first["model_tag"] and not again["model_imported"]
    bento_yaml = (bento_built["home"] / "bentos" / first["bento_tag"].replace(":", "/")).joinpath(
        "bento.yaml"
    )
    text = bento_yaml.read_text()
    assert f"model_tag: {first['model_tag']}" in text  # pinned: never "latest"
    assert f"mlflow_version: '{first['mlflow_version']}'" in text


def test_ready_and_model_metadata(client: httpx.Client, served: dict) -> None:
    assert client.get("/readyz").status_code == 200
    info = client.get("/model").json()
    built = served["built"]["again"]
    assert info["mlflow_version"] == built["mlflow_version"]
    assert info["bento"] == built["bento_tag"]
    assert info["bento_model"] == built["model_tag"]
    assert info["scoring_path"] == "numpy fast path"
    assert info["ready"] and info["tutors_known"] > 0
    assert client.get("/metrics").status_code == 200
    assert "/predict_batch" in client.get("/docs.json").text


def test_predict_matches_shared_features_and_model(
    client: httpx.Client, served: dict, known: dict
) -> None:
    from fsp.model_store import load_sklearn
    from fsp.scoring import ScoringModel, score

    answer = client.post("/predict", json=_session(known)).json()
    assert set(answer) >= {
        "risk_probability",
        "risk_score",
        "risk_level",
        "should_send_alert",
        "top_risk_factors",
        "model_version",
        "prediction_id",
    }
    assert answer["prediction_id"] is None
    factor = answer["top_risk_factors"][0]
    assert set(factor) == {"feature", "label", "value", "contribution", "direction"}

    # the same session through the shared feature code and the logged model
    as_of = datetime.fromisoformat(client.get("/model").json()["features_as_of"])
    with psycopg.connect(served["database_url"]) as conn:
        history = load_history(conn, as_of)
    sessions = pd.DataFrame([_session(known)])
    sessions["scheduled_start"] = pd.to_datetime(sessions["scheduled_start"], utc=True)
    X = build_model_input(history, sessions, [as_of])
    world = served["built"]["world"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{world['state_dir'] / 'mlflow.db'}")
    info = served["built"]["again"]
    model = ScoringModel(
        load_sklearn(f"models:/first-session-risk/{info['mlflow_version']}"),
        info["mlflow_version"],
        float(client.get("/model").json()["alert_threshold"]),
    )
    expected = score(model, X).iloc[0]
    assert answer["risk_probability"] == pytest.approx(expected["risk_probability"], abs=1e-9)
    assert answer["risk_level"] == expected["risk_level"]
    assert answer["should_send_alert"] == bool(expected["should_send_alert"])
    assert answer["top_risk_factors"] == expected["top_risk_factors"]


def test_predict_with_student_id_is_stored(client: httpx.Client, served: dict, known: dict) -> None:
    """A prediction is stored for a scheduled first session the platform holds, once:
    never over an existing one, never for a session the platform does not hold."""
    url = served["database_url"]
    body = platform_session(url, "HTTP-TEST-1", known["tutors"][0], known["student"])
    first = client.post("/predict", json=body).json()
    assert first["prediction_id"]
    again = client.post("/predict", json=body).json()
    assert again["prediction_id"] is None  # not stored over the first one
    row = _first(
        url,
        "SELECT risk_probability, model_version, tutor_id, student_id, prediction_id::text"
        " FROM fsp.first_session_predictions WHERE session_id = 'HTTP-TEST-1'",
    )
    assert row[0] == pytest.approx(first["risk_probability"], abs=1e-12)
    assert row[1:] == (
        first["model_version"],
        known["tutors"][0],
        known["student"],
        first["prediction_id"],
    )
    made_up = client.post("/predict", json={**body, "session_id": "HTTP-NOT-ON-PLATFORM"})
    assert made_up.status_code == 200 and made_up.json()["prediction_id"] is None
    stored = _first(
        url,
        "SELECT count(*) FROM fsp.first_session_predictions WHERE session_id"
        " = 'HTTP-NOT-ON-PLATFORM'",
    )
    assert stored == (0,)


def test_batch_answers_in_order(client: httpx.Client, known: dict) -> None:
    bodies = [
        _session(known, tutor_id=t, subject=s)
        for t, s in zip(known["tutors"][:4], ("music", "algebra", "physics", "french"), strict=True)
    ]
    batch = client.post("/predict_batch", json=bodies)
    assert batch.status_code == 200
    answers = batch.json()
    assert [a["tutor_id"] for a in answers] == [b["tutor_id"] for b in bodies]
    singles = [client.post("/predict", json=b).json() for b in bodies]
    for a, s in zip(answers, singles, strict=True):
        assert a["risk_probability"] == pytest.approx(s["risk_probability"], abs=1e-12)
    assert batch.headers["content-type"].startswith("application/json")
    # untraced by OpenTelemetry (service.config.UNTRACED_PATHS), still counted in /metrics
    metrics = client.get("/metrics").text
    for endpoint in ("/predict", "/predict_batch"):
        assert (
            f'bentoml_service_request_total{{endpoint="{endpoint}",http_response_code="200"'
            in metrics
        )


def test_batch_stores_predictions(client: httpx.Client, served: dict, known: dict) -> None:
    url = served["database_url"]
    bodies = [
        platform_session(url, f"HTTP-BATCH-{i}", t, known["student"])
        for i, t in enumerate(known["tutors"][:3])
    ]
    answers = client.post("/predict_batch", json=bodies).json()
    assert all(a["prediction_id"] for a in answers)
    count = _first(
        url,
        "SELECT count(*) FROM fsp.first_session_predictions WHERE session_id LIKE 'HTTP-BATCH-%'",
    )[0]
    assert count == 3


def test_rank_tutors_lowest_risk_first(client: httpx.Client, known: dict) -> None:
    body = {
        "tutor_ids": known["tutors"],
        "subject": "geometry",
        "scheduled_start": known["start"].isoformat(),
        "student_id": known["student"],
    }
    ranked = client.post("/rank_tutors", json=body).json()
    candidates = ranked["candidates"]
    assert sorted(c["tutor_id"] for c in candidates) == sorted(known["tutors"])
    risks = [c["risk_probability"] for c in candidates]
    assert risks == sorted(risks)
    assert [c["rank"] for c in candidates] == list(range(1, len(candidates) + 1))
    single = client.post(
        "/predict",
        json={k: v for k, v in body.items() if k != "tutor_ids"}
        | {"tutor_id": candidates[0]["tutor_id"]},
    ).json()
    assert single["risk_probability"] == pytest.approx(risks[0], abs=1e-12)


BAD_INPUTS = [
    ("missing tutor_id", "/predict", {"drop": "tutor_id"}, "tutor_id"),
    ("mistyped age", "/predict", {"student_age": "fifteen"}, "student_age"),
    (
        "time without offset",
        "/predict",
        {"scheduled_start": "2026-12-01T10:00:00"},
        "scheduled_start",
    ),
    ("negative age", "/predict", {"student_age": -3}, "student_age"),
    ("empty subject", "/predict", {"subject": ""}, "subject"),
    ("unknown tutor", "/predict", {"tutor_id": "NO-SUCH-TUTOR"}, "unknown tutor_id"),
    ("unknown time zone", "/predict", {"timezone": "Mars/Olympus"}, "timezone"),
    ("unknown field", "/predict", {"tutorid": "x"}, "tutorid"),
    ("no student", "/predict", {"drop": "student_age|timezone"}, "student"),
    (
        "unknown student",
        "/predict",
        {"drop": "student_age|timezone", "student_id": "NOPE"},
        "student_id",
    ),
]


@pytest.mark.parametrize(
    ("case", "path", "change", "named"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_4xx_naming_the_field(
    client: httpx.Client, known: dict, case: str, path: str, change: dict, named: str
) -> None:
    body = _session(known)
    for field in change.pop("drop", "").split("|"):
        body.pop(field, None)
    body.update(change)
    response = client.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert named in response.text


def test_bad_batches_and_bodies(client: httpx.Client, known: dict) -> None:
    empty = client.post("/predict_batch", json=[])
    assert empty.status_code == 400 and "at least 1 item" in empty.text
    over = client.post("/predict_batch", json=[_session(known)] * (MAX_BATCH_SIZE + 1))
    assert over.status_code == 400 and "at most" in over.text
    bad_row = client.post(
        "/predict_batch", json=[_session(known), _session(known, tutor_id="NOPE")]
    )
    assert (
        bad_row.status_code == 400
        and "unknown tutor_id" in bad_row.text
        and '"loc":[1,"tutor_id"]' in bad_row.text
    )
    dupes = client.post(
        "/predict_batch", json=[_session(known, session_id="D"), _session(known, session_id="D")]
    )
    assert dupes.status_code == 400 and "appears twice" in dupes.text
    for path in ("/predict", "/predict_batch", "/rank_tutors"):
        broken = client.post(
            path, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and "json" in broken.text.lower()
    rank = client.post(
        "/rank_tutors",
        json={
            "tutor_ids": [],
            "subject": "algebra",
            "scheduled_start": known["start"].isoformat(),
            "student_age": 9,
            "timezone": "UTC",
        },
    )
    assert rank.status_code == 400 and "tutor_ids" in rank.text


def test_read_endpoints(client: httpx.Client, served: dict, known: dict) -> None:
    api = "/api/first-session"
    upcoming = client.get(
        f"{api}/predict-upcoming", params={"lookahead_hours": 48, "now": DEMO_NOW.isoformat()}
    )
    assert upcoming.status_code == 200, upcoming.text
    data = upcoming.json()
    assert data["count"] > 0 and len(data["predictions"]) == data["count"]
    starts = [datetime.fromisoformat(p["scheduled_start"]) for p in data["predictions"]]
    assert all(DEMO_NOW < s <= DEMO_NOW + timedelta(hours=48) for s in starts)
    assert {"risk_probability", "risk_level", "top_risk_factors"} <= set(data["predictions"][0])

    history_body = platform_session(
        served["database_url"], "HTTP-HISTORY-1", known["tutors"][0], known["student"]
    )
    assert client.post("/predict", json=history_body).json()["prediction_id"]
    history = client.get(f"{api}/history/{known['tutors'][0]}", params={"days": 7}).json()
    assert "HTTP-HISTORY-1" in [p["session_id"] for p in history["predictions"]]
    assert history["features"]["session_count"] >= 0
    assert client.get(f"{api}/history/NO-SUCH-TUTOR").status_code == 404

    summary = client.get(f"{api}/analytics/summary", params={"days": 7}).json()
    assert summary["total_predictions"] >= 1
    assert set(summary) >= {"high_risk_rate", "alert_rate", "accuracy", "total_predictions"}
    comparison = summary["alerted_vs_holdout"]
    assert set(comparison) == {"alerted", "holdout", "difference", "ci95"}
    assert set(comparison["alerted"]) == {"sessions", "poor", "poor_rate"}

    with psycopg.connect(served["database_url"]) as conn:
        conn.execute(
            "INSERT INTO fsp.model_performance_logs (model_type, model_version, evaluation_date,"
            " accuracy, precision, recall, f1_score, auc_roc, sample_size, time_window_days)"
            " VALUES ('logistic_regression', '1', now() - interval '1 day', 0.8, 0.6, 0.5, 0.55,"
            " 0.77, 120, 30) ON CONFLICT DO NOTHING"
        )
    performance = client.get(f"{api}/analytics/model-performance", params={"days": 7}).json()
    assert performance["count"] >= 1 and performance["evaluations"][0]["auc_roc"] == 0.77

    for bad in ({"days": 0}, {"days": "many"}, {"now": "2026-11-01T12:00:00"}):
        response = client.get(f"{api}/analytics/summary", params=bad)
        assert 400 <= response.status_code < 500
        assert next(iter(bad)) in response.text
    assert client.get(f"{api}/predict-upcoming", params={"lookahead_hours": -1}).status_code == 422


ANONYMOUS_REFUSED = [
    ("POST", "/predict"),
    ("POST", "/predict_batch"),
    ("POST", "/rank_tutors"),
    ("GET", "/model"),
    ("GET", "/metrics"),
    ("GET", "/docs.json"),
    ("GET", "/healthz"),
    ("GET", "/"),
    ("GET", "/api/first-session/analytics/summary"),
    ("GET", "/api/first-session/history/T00001"),
    ("GET", "/api/first-session/predict-upcoming"),
    ("GET", "/api/first-session/openapi.json"),
    ("GET", "/api/first-session/docs"),
    ("GET", "/no/such/endpoint"),
]


def test_api_key_required_everywhere_but_livez_and_readyz(
    anonymous: httpx.Client, served: dict, known: dict
) -> None:
    """FSP_API_KEY set: every endpoint but /livez and /readyz answers 401 with a JSON
    message without one of the keys (either key works); nothing is stored."""
    assert anonymous.get("/livez").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    wrong = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {API_KEYS[0]}x"},
        {"Authorization": f"Basic {API_KEYS[0]}"},
        {"Authorization": API_KEYS[0]},
        {"X-API-Key": API_KEYS[0]},
    ]
    for method, path in ANONYMOUS_REFUSED:
        for headers in wrong:
            response = anonymous.request(method, path, headers=headers, json=_session(known))
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "Authorization: Bearer" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
            assert all(key not in response.text for key in API_KEYS)
    for key in API_KEYS:  # each key, and the scheme in any case
        for scheme in ("Bearer", "bearer"):
            headers = {"Authorization": f"{scheme} {key}"}
            assert anonymous.get("/model", headers=headers).status_code == 200
    body = _session(known, session_id="HTTP-ANONYMOUS")
    assert anonymous.post("/predict", json=body).status_code == 401
    stored = _first(
        served["database_url"],
        "SELECT count(*) FROM fsp.first_session_predictions WHERE session_id = 'HTTP-ANONYMOUS'",
    )
    assert stored == (0,)


def test_serves_on_loopback_by_default(served: dict) -> None:
    """`fsp serve` without --host listens on 127.0.0.1 only (not every interface)."""
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) == served["port"]:  # 0A: LISTEN
            listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1, little-endian hex


def _errors_of(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, response.text
    return response.text


def test_scheduled_start_bounded(client: httpx.Client, served: dict, known: dict) -> None:
    """A start is an ISO 8601 string with an offset within ±14:00, no further than a day
    in the past nor a year ahead; a bare number is no time. Nothing out of bounds is
    stored, on /predict, /predict_batch and /rank_tutors."""
    now = datetime.now(UTC)
    bad_starts = [
        1700000000,
        "1700000000",
        1.5,
        True,
        "0001-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59-12:00",
        (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S+15:30"),
        (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S-14:30"),
        (now - timedelta(days=3)).isoformat(),
        (now + timedelta(days=400)).isoformat(),
        "tomorrow",
    ]
    for i, start in enumerate(bad_starts):
        body = _session(known, scheduled_start=start, session_id=f"HTTP-BAD-START-{i}")
        assert "scheduled_start" in _errors_of(client.post("/predict", json=body)), start
        batch = client.post("/predict_batch", json=[_session(known), body])
        assert '"loc":[1,"scheduled_start"]' in _errors_of(batch), start
        rank = {k: v for k, v in body.items() if k not in ("tutor_id", "session_id")}
        rank["tutor_ids"] = known["tutors"][:2]
        assert "scheduled_start" in _errors_of(client.post("/rank_tutors", json=rank)), start
    stored = _first(
        served["database_url"],
        "SELECT count(*) FROM fsp.first_session_predictions WHERE session_id LIKE 'HTTP-BAD-%'",
    )
    assert stored == (0,)
    edge = _session(known, scheduled_start=(now + timedelta(hours=-12)).isoformat())
    assert client.post("/predict", json=edge).status_code == 200  # a session that just began
    east = (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S+14:00")
    assert client.post("/predict", json=_session(known, scheduled_start=east)).status_code == 200


def test_read_endpoints_bound_now_and_path(client: httpx.Client) -> None:
    """`now` is an ISO 8601 time with an offset in the years 2000-2100 (year 1 or 9999
    once answered 500); a path or id with a control character is refused (a NUL once
    answered 500)."""
    api = "/api/first-session"
    endpoints = (
        f"{api}/predict-upcoming",
        f"{api}/history/T00001",
        f"{api}/analytics/summary",
        f"{api}/analytics/model-performance",
    )
    bad_nows = (
        "0001-01-01T00:00:00+00:00",
        "0001-01-01T00:00:00-12:00",
        "9999-12-31T23:59:59-12:00",
        "1999-12-31T12:00:00+00:00",
        "2101-01-01T00:00:00+00:00",
        "2026-11-01T12:00:00+15:00",
        "1700000000",
        "2026-11-01T12:00:00",
    )
    for endpoint in endpoints:
        for now in bad_nows:
            response = client.get(endpoint, params={"now": now})
            assert response.status_code == 422, (endpoint, now, response.text)
            assert response.json()["detail"][0]["loc"] == ["query", "now"]
        ok = client.get(endpoint, params={"now": "2026-11-01T12:00:00-05:00"})
        assert ok.status_code in (200, 404), ok.text
    for tutor in ("T%00x", "T%0Ax", "T%0Dx", "T%1Bx", "T%7Fx"):
        response = client.get(f"{api}/history/{tutor}")
        assert response.status_code in (404, 422), response.text  # no such route, or refused
        assert response.json()["error" if response.status_code == 404 else "detail"]


def test_control_characters_in_ids_refused(client: httpx.Client, known: dict) -> None:
    for field in ("student_id", "session_id", "tutor_id", "subject"):
        for bad in ("a\x00b", "a\nb", "a\rb", "a\x1bb"):
            body = _session(known, **{field: bad})
            assert field in _errors_of(client.post("/predict", json=body))
            assert field in _errors_of(client.post("/predict_batch", json=[body]))


def test_bodies_bounded_and_json_only(client: httpx.Client, known: dict) -> None:
    """A body over MAX_BODY_BYTES answers 413 (declared or streamed without a length);
    a form (multipart, with or without a boundary) answers 415: JSON messages, never a
    500, on every POST endpoint."""
    big = b"[" + b" " * (MAX_BODY_BYTES + 10) + b"]"
    for path in ("/predict", "/predict_batch", "/rank_tutors"):
        declared = client.post(path, content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "larger than" in declared.json()["error"]

        def chunks():
            for _ in range(MAX_BODY_BYTES // 65536 + 2):
                yield b" " * 65536

        streamed = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]
        for content_type in (
            "multipart/form-data",
            "multipart/form-data; boundary=xyz",
            "application/x-www-form-urlencoded",
        ):
            form = client.post(path, content=b"--xyz\r\n", headers={"content-type": content_type})
            assert form.status_code == 415, (path, content_type, form.text)
            assert "application/json" in form.json()["error"]
    within = [_session(known)] * MAX_BATCH_SIZE  # a full batch is far below the limit
    assert client.post("/predict_batch", json=within).status_code == 200


def test_metrics_label_only_known_routes(client: httpx.Client, known: dict) -> None:
    """Every path no route serves shares one `endpoint` label ("other"), every tutor of
    /history/{tutor_id} the route's template: 300 distinct paths add no series."""
    api = "/api/first-session"
    client.get(f"{api}/history/{known['tutors'][0]}")
    before = client.get("/metrics").text
    for i in range(200):
        response = client.get(f"/scan-{i}/x{i}")
        assert response.status_code == 404 and response.json()["error"]
    for i in range(100):
        assert client.get(f"{api}/history/NO-SUCH-TUTOR-{i}").status_code == 404
    after = client.get("/metrics").text
    assert "scan-" not in after and "NO-SUCH-TUTOR" not in after
    assert 'endpoint="other"' in after
    assert f'endpoint="{api}/history/{{tutor_id}}"' in after
    series = lambda text: {  # noqa: E731
        line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")
    }
    assert len(series(after) - series(before)) < 60  # one 404 family per label, not per path


def test_expected_refusals_log_one_line(client: httpx.Client, served: dict, known: dict) -> None:
    """A 400 is logged as one line (status, method, path, the error count), without a
    traceback and without the input."""
    marker = "NEEDLE-IN-THE-INPUT"
    for _ in range(3):
        client.post("/predict", json=_session(known, student_age="x", subject=marker * 2))
        client.post("/predict_batch", json=[_session(known, tutor_id=marker)])
        client.post("/rank_tutors", json={"tutor_ids": [marker]})
    time.sleep(0.5)
    log = served["log"].read_text()
    assert "Traceback" not in log
    assert marker not in log
    assert "400 POST /predict: " in log and "400 POST /predict_batch: " in log
    assert all(key not in log for key in API_KEYS)


def test_openapi_documents_are_valid(client: httpx.Client, anonymous: httpx.Client) -> None:
    """Both documents (the Bento's /docs.json and the mounted FastAPI app's) are valid
    OpenAPI 3.1 and document the refusals really sent, with their bodies."""
    from openapi_spec_validator import validate

    bento = client.get("/docs.json").json()
    mounted = client.get("/api/first-session/openapi.json").json()
    for document in (bento, mounted):
        assert document["openapi"].startswith("3.1")
        validate(document)
    paths = bento["paths"]
    for route in ("/predict", "/predict_batch", "/rank_tutors"):
        responses = paths[route]["post"]["responses"]
        assert {"200", "400", "401", "413", "415", "503"} <= set(responses)
        assert "500" not in responses
    history = paths["/api/first-session/history/{tutor_id}"]["get"]["responses"]
    assert {"200", "401", "404", "422", "503"} <= set(history)
    assert set(mounted["paths"]["/history/{tutor_id}"]["get"]["responses"]) == set(history)
    assert "401" in paths["/model"]["get"]["responses"]
    assert "401" not in paths["/livez"]["get"]["responses"]
    # the bodies documented are the bodies sent
    error_body = bento["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error"]
    for response in (
        anonymous.get("/model"),
        client.get("/api/first-session/history/NO-SUCH-TUTOR"),
        client.post("/predict", content=b"x" * (MAX_BODY_BYTES + 1)),
    ):
        assert set(response.json()) == {"error"}, response.text
    invalid = client.post("/predict", json={"tutor_id": "T00001"}).json()
    assert set(invalid) == {"error", "detail"} and invalid["detail"][0]["loc"]


def _conforms(document: dict, path: str, method: str, response: httpx.Response) -> None:
    """The response's body is valid against the schema the document gives its status."""
    from jsonschema import Draft202012Validator

    documented = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = documented["content"]["application/json"]["schema"]
    root = {**schema, "components": document["components"]}
    errors = list(Draft202012Validator(root).iter_errors(response.json()))
    assert not errors, (path, response.status_code, errors[0].message)


def test_bodies_sent_are_the_bodies_documented(
    client: httpx.Client, anonymous: httpx.Client, known: dict
) -> None:
    """Each answer, success or refusal, is valid against the schema /docs.json gives it."""
    doc = client.get("/docs.json").json()
    api = "/api/first-session"
    rank = {
        "tutor_ids": known["tutors"][:3],
        "subject": "algebra",
        "scheduled_start": known["start"].isoformat(),
        "student_id": known["student"],
    }
    cases = [
        ("/predict", "post", client.post("/predict", json=_session(known))),
        ("/predict", "post", client.post("/predict", json=_session(known, session_id="HTTP-X"))),
        ("/predict", "post", client.post("/predict", json=_session(known, tutor_id="NOPE"))),
        ("/predict", "post", anonymous.post("/predict", json=_session(known))),
        ("/predict", "post", client.post("/predict", content=b" " * (MAX_BODY_BYTES + 1))),
        ("/predict", "post", client.post("/predict", files={"f": b"x"})),
        ("/predict_batch", "post", client.post("/predict_batch", json=[_session(known)] * 3)),
        ("/predict_batch", "post", client.post("/predict_batch", json=[])),
        ("/rank_tutors", "post", client.post("/rank_tutors", json=rank)),
        ("/rank_tutors", "post", client.post("/rank_tutors", json={**rank, "tutor_ids": []})),
        ("/model", "get", client.get("/model")),
        ("/model", "get", anonymous.get("/model")),
        (f"{api}/history/{{tutor_id}}", "get", client.get(f"{api}/history/NO-SUCH-TUTOR")),
        (f"{api}/history/{{tutor_id}}", "get", client.get(f"{api}/history/{known['tutors'][0]}")),
        (f"{api}/analytics/summary", "get", client.get(f"{api}/analytics/summary?days=0")),
        (f"{api}/analytics/summary", "get", client.get(f"{api}/analytics/summary?now=1")),
        (f"{api}/analytics/summary", "get", anonymous.get(f"{api}/analytics/summary")),
    ]
    statuses = set()
    for path, method, response in cases:
        statuses.add(response.status_code)
        _conforms(doc, path, method, response)
    assert {200, 400, 401, 404, 413, 415, 422} <= statuses


def test_predict_does_not_echo_student_records(
    client: httpx.Client, served: dict, known: dict
) -> None:
    """Scored by student record (student_id), an answer names no reason computed from
    it (age, local time): the caller learns the risk, not the student's age or zone. The
    same session with the age and zone given by the caller may show them."""
    personal = {"student_age", "local_hour", "local_dow"}
    shown_when_given = 0
    with psycopg.connect(served["database_url"]) as conn:
        students = conn.execute(
            "SELECT student_id, timezone, birth_date FROM platform.students ORDER BY 1 LIMIT 8"
        ).fetchall()
    for student, zone, birth in students:
        for tutor in known["tutors"]:
            start = known["start"]
            by_record = _session(known, tutor_id=tutor, student_id=student)
            by_record.pop("student_age")
            by_record.pop("timezone")
            age = start.year - birth.year - ((start.month, start.day) < (birth.month, birth.day))
            given = _session(known, tutor_id=tutor, student_age=age, timezone=zone)
            record_answer = client.post("/predict", json=by_record).json()
            given_answer = client.post("/predict", json=given).json()
            batch = client.post("/predict_batch", json=[by_record, given]).json()
            assert not personal & {f["feature"] for f in record_answer["top_risk_factors"]}
            assert not personal & {f["feature"] for f in batch[0]["top_risk_factors"]}
            assert batch[0]["top_risk_factors"] == record_answer["top_risk_factors"]
            assert record_answer["risk_probability"] == pytest.approx(
                given_answer["risk_probability"], abs=1e-9
            )
            shown_when_given += bool(
                personal & {f["feature"] for f in given_answer["top_risk_factors"]}
            )
        rank = client.post(
            "/rank_tutors",
            json={
                "tutor_ids": known["tutors"],
                "subject": "algebra",
                "scheduled_start": known["start"].isoformat(),
                "student_id": student,
            },
        ).json()
        for candidate in rank["candidates"]:
            assert not personal & {f["feature"] for f in candidate["top_risk_factors"]}
    assert shown_when_given > 0  # the check above is not vacuous
    unknown = client.post(
        "/predict",
        json={
            **_session(known, student_id="NO-SUCH-STUDENT"),
            "student_age": None,
            "timezone": None,
        },
    )
    assert unknown.status_code == 400 and "unknown student_id" in unknown.text


def test_database_down_then_back(client: httpx.Client, served: dict, known: dict) -> None:
    """Runs last in this module: cuts the database, then restores it. The first request
    after the cut answers 503 within a second; every 503 says "database unavailable"
    and nothing of where it is; every request after recovery answers."""
    from psycopg.conninfo import conninfo_to_dict

    proxy = served["proxy"]
    dbname = conninfo_to_dict(served["database_url"])["dbname"]
    summary = "/api/first-session/analytics/summary"
    for _ in range(6):  # both workers' pools hold connections
        assert client.get(summary).status_code == 200
    proxy.stop()
    try:
        started = time.monotonic()
        first = client.get(summary)
        took = time.monotonic() - started
        assert first.status_code == 503 and took < 1.0, (first.status_code, took)
        assert first.json() == {"error": "database unavailable"}
        assert wait_until(lambda: client.get("/readyz").status_code == 503, 20)
        ready = client.get("/readyz").text
        assert "database unavailable" in ready
        down = client.post("/predict", json=_session(known))
        assert down.status_code == 503 and down.json() == {"error": "database unavailable"}
        batch = client.post("/predict_batch", json=[_session(known)])
        assert batch.status_code == 503
        assert client.get(summary).status_code == 503
        model = client.get("/model").json()
        assert model["ready"] is False and model["not_ready_reason"] == "database unavailable"
        for text in (ready, down.text, batch.text, first.text, json.dumps(model)):
            assert str(proxy.port) not in text and dbname not in text, text
            assert "127.0.0.1" not in text and "connection" not in text.lower(), text
    finally:
        proxy.start()
    assert wait_until(lambda: client.get("/readyz").status_code == 200, 30)
    time.sleep(1.5)  # each worker's health check has run since (DB_CHECK_SECONDS)
    for _ in range(10):
        assert client.get(summary).status_code == 200
    body = platform_session(
        served["database_url"], "HTTP-AFTER-OUTAGE", known["tutors"][1], known["student"]
    )
    back = client.post("/predict", json=body)
    assert back.status_code == 200 and back.json()["prediction_id"]
    assert np.isfinite(back.json()["risk_probability"])
