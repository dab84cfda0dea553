"""HTTP tests against a real `fsp serve` of the Bento built by `fsp package`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
from service_fixtures import READY_TIMEOUT_S, DbProxy, free_port, wait_until

from service.config import MAX_BATCH_SIZE
from training.features import build_model_input, load_history
from training.settings import PROJECT_ROOT, get_settings

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def service_db(server_url: str) -> Iterator[str]:
    """A database seeded like the trained world, for the service to read and write."""
    url = create_database(server_url)
    seed_demo(url)
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def bento_built(trained_world: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
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
    yield {"home": home, "first": first, "again": again, "world": trained_world}


@pytest.fixture(scope="session")
def served(bento_built: dict, service_db: str) -> Iterator[dict]:
    """`fsp serve` of the built Bento on a free loopback port, its database behind a
    proxy the tests can cut. Yields base_url, proxy, database_url, ready_seconds."""
    proxy = DbProxy(service_db)
    proxy.start()
    world = bento_built["world"]
    port = free_port()
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(bento_built["home"]),
        BENTOML_HOST="127.0.0.1",
        BENTOML_DO_NOT_TRACK="True",
        DATABASE_URL=proxy.url,
        FSP_STATE_DIR=str(world["state_dir"]),
        MLFLOW_TRACKING_URI=f"sqlite:///{world['state_dir'] / 'mlflow.db'}",
    )
    log = open(world["state_dir"] / f"serve-{port}.log", "w")  # noqa: SIM115
    started = time.monotonic()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "fsp"), "serve", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_until(
            lambda: process.poll() is None and httpx.get(f"{base}/readyz").status_code == 200,
            READY_TIMEOUT_S,
        )
        if not ready:
            log.flush()
            tail = (world["state_dir"] / f"serve-{port}.log").read_text()[-3000:]
            pytest.fail(f"the served Bento did not get ready:\n{tail}")
        yield {
            "base_url": base,
            "proxy": proxy,
            "database_url": service_db,
            "ready_seconds": time.monotonic() - started,
            "built": bento_built,
        }
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
        proxy.stop()
        log.close()


def _first(url: str, sql: str):
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()


@pytest.fixture(scope="module")
def client(served: dict):
    with httpx.Client(base_url=served["base_url"], timeout=30) as c:
        yield c


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
    from training.registry import load_sklearn
    from training.scoring import ScoringModel, score

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
    body = _session(known, session_id="HTTP-TEST-1", student_id=known["student"])
    body.pop("student_age")
    body.pop("timezone")
    first = client.post("/predict", json=body).json()
    assert first["prediction_id"]
    again = client.post("/predict", json=body).json()
    assert again["prediction_id"] == first["prediction_id"]  # upsert, not a second row
    row = _first(
        served["database_url"],
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
    bodies = [
        _session(known, tutor_id=t, session_id=f"HTTP-BATCH-{i}")
        for i, t in enumerate(known["tutors"][:3])
    ]
    answers = client.post("/predict_batch", json=bodies).json()
    assert all(a["prediction_id"] for a in answers)
    count = _first(
        served["database_url"],
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

    client.post("/predict", json=_session(known, session_id="HTTP-HISTORY-1"))
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


def test_database_down_then_back(client: httpx.Client, served: dict, known: dict) -> None:
    """Runs last in this module: cuts the database, then restores it."""
    proxy = served["proxy"]
    proxy.stop()
    try:
        assert wait_until(lambda: client.get("/readyz").status_code == 503, 20)
        assert "database" in client.get("/readyz").text
        down = client.post("/predict", json=_session(known))
        assert down.status_code == 503 and "database" in down.json()["error"]
        assert client.post("/predict_batch", json=[_session(known)]).status_code == 503
        assert client.get("/api/first-session/analytics/summary").status_code == 503
        assert client.get("/model").json()["ready"] is False
    finally:
        proxy.start()
    assert wait_until(lambda: client.get("/readyz").status_code == 200, 30)
    back = client.post("/predict", json=_session(known, session_id="HTTP-AFTER-OUTAGE"))
    assert back.status_code == 200 and back.json()["prediction_id"]
    assert np.isfinite(back.json()["risk_probability"])
