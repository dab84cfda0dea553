"""The operations page in a real browser: Debian's chromium driven by Playwright loads
GET /api/first-session/dashboard from a real `fsp serve` of the Bento, against a
database where the operating loop ran (scored, alerted with a holdout arm, outcomes
arrived, reconciled, monitored twice), and the numbers it shows are the JSON
endpoints' numbers with the same parameters."""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import DEMO_NOW, SCREENSHOTS, create_database, drop_database, seed_demo
from flow_fixtures import point_at
from service_fixtures import fsp_serve

from benchmarks.bench_dashboard import page_url, report, time_loads
from flows.alerts import alerts_flow
from flows.demo import simulate_platform_outcomes
from flows.monitor import monitor_flow
from flows.reconcile import reconcile_flow
from flows.score import score_flow
from fsp.db import connect
from fsp.settings import get_settings
from service.packaging import package_champion

pytestmark = [pytest.mark.services, pytest.mark.timeout(3600)]
"""The shared fixtures (a trained world, the loop, a Bento) take minutes on a busy machine."""

CHROMIUM = Path("/usr/bin/chromium")
API_KEY = "dashboard-key-5a0e7c21"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SCORE_AHEAD_HOURS = 96.0
STEPS = (timedelta(days=1), timedelta(days=2))
"""Moments after DEMO_NOW at which outcomes arrive, are reconciled and monitored."""
PAGE_NOW = DEMO_NOW + STEPS[-1]
PARAMS = {"now": PAGE_NOW.isoformat(), "lookahead_hours": "48", "days": "30"}
LOADS = 20


def _run_loop(url: str) -> None:
    """Score four days ahead, alert (half held out, so that both arms have rated
    sessions after two days), then let outcomes arrive,
    reconcile and monitor at each of STEPS: the sessions of the last two days are
    still upcoming at PAGE_NOW, with their alerts."""
    score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=SCORE_AHEAD_HOURS)
    alerts_flow(now=DEMO_NOW.isoformat())
    for step in STEPS:
        with connect(url) as conn:
            simulate_platform_outcomes(conn, DEMO_NOW, DEMO_NOW + step)
        reconcile_flow(now=(DEMO_NOW + step).isoformat())
        monitor_flow(now=(DEMO_NOW + step).isoformat(), window_days=28, retrain=False)


@pytest.fixture(scope="module")
def dashboard_world(
    server_url: str, trained_world: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """A database seeded like the trained world where the loop ran, a private copy of
    the world's MLflow store, and the champion packaged as a Bento."""
    url = create_database(server_url)
    seed_demo(url)
    state = tmp_path_factory.mktemp("dashboard-state")
    mp = pytest.MonkeyPatch()
    point_at(mp, url, state, trained_world["state_dir"])
    mp.setenv("FSP_MONITOR_MIN_LABELLED", "20")
    mp.setenv("FSP_ALERT_HOLDOUT_SHARE", "0.5")
    mp.setenv("BENTOML_HOME", str(state / "bentoml"))
    mp.setenv("BENTOML_DO_NOT_TRACK", "True")
    get_settings.cache_clear()
    try:
        _run_loop(url)
        package_champion(get_settings())
    finally:
        mp.undo()
        get_settings.cache_clear()
    yield {"database_url": url, "state_dir": state}
    drop_database(server_url, url)


@contextlib.contextmanager
def serve_bento(state: Path, database_url: str, **settings: str) -> Iterator[str]:
    """`fsp serve` of the Bento packaged under `state` with FSP_API_KEY (and any other
    `settings`) set, on a free loopback port; yields its base URL, and stops it."""
    with fsp_serve(
        state,
        BENTOML_HOME=str(state / "bentoml"),
        DATABASE_URL=database_url,
        FSP_STATE_DIR=str(state),
        MLFLOW_TRACKING_URI=f"sqlite:///{state / 'mlflow.db'}",
        FSP_API_KEY=API_KEY,
        **settings,
    ) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def served(dashboard_world: dict) -> Iterator[str]:
    """The world's Bento, served; yields its base URL."""
    with serve_bento(dashboard_world["state_dir"], dashboard_world["database_url"]) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright (its own download is not
    reachable here)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


def _json(base: str, path: str, **params: str) -> dict:
    response = httpx.get(f"{base}/api/first-session{path}", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} pts"


def decimal3(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def _deliveries(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT session_id, status FROM fsp.alert_deliveries").fetchall())


def _holdouts_in_window(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM fsp.alert_deliveries d JOIN fsp.first_session_predictions p"
            " USING (session_id) WHERE d.status = 'holdout'"
            " AND p.prediction_date > %s AND p.prediction_date <= %s",
            (PAGE_NOW - timedelta(days=30), PAGE_NOW),
        ).fetchone()
    return int(row[0]) if row else 0


def _load(browser, base: str):
    """Open the page with the key; returns (page, requests made, response, seconds)."""
    context = browser.new_context(extra_http_headers=AUTH, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    started = time.perf_counter()
    response = page.goto(page_url(base, PARAMS), wait_until="load")
    seconds = time.perf_counter() - started
    return page, requested, response, seconds


def test_page_shows_the_json_endpoints_numbers(browser, served: str, dashboard_world):
    page, requested, response, seconds = _load(browser, served)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert requested == [page_url(served, PARAMS)], "the page fetched something else"

    upcoming = _json(served, "/predict-upcoming", now=PARAMS["now"], lookahead_hours="48")
    assert upcoming["count"] > 0
    assert page.inner_text("#upcoming-count") == str(upcoming["count"])
    for level in ("LOW", "MEDIUM", "HIGH", "CRITICAL"):
        expected = sum(p["risk_level"] == level for p in upcoming["predictions"])
        assert page.inner_text(f"#level-{level}") == str(expected), level
    rows = page.locator("tr.session")
    shown = [rows.nth(i).get_attribute("data-session") for i in range(rows.count())]
    assert sorted(shown) == sorted(p["session_id"] for p in upcoming["predictions"])

    deliveries = _deliveries(dashboard_world["database_url"])
    statuses = {"sent": "sent", "holdout": "held out (no email)"}
    alerted_rows = 0
    for i in range(rows.count()):
        status = deliveries.get(shown[i])  # type: ignore[arg-type]
        if status in statuses:
            assert rows.nth(i).locator("td.alert").inner_text() == statuses[status]
            alerted_rows += 1
    assert alerted_rows > 0, "no upcoming session shows its alert"

    summary = _json(served, "/analytics/summary", now=PARAMS["now"], days="30")
    assert page.inner_text("#alerts-sent") == str(summary["alerts_sent"]) != "0"
    assert page.inner_text("#alerts-held-out") == str(
        _holdouts_in_window(dashboard_world["database_url"])
    )
    assert page.inner_text("#alert-rate") == percent(summary["alert_rate"])
    comparison = summary["alerted_vs_holdout"]
    for arm in ("alerted", "holdout"):
        assert page.inner_text(f"#{arm}-sessions") == str(comparison[arm]["sessions"])
        assert page.inner_text(f"#{arm}-poor") == str(comparison[arm]["poor"])
        assert page.inner_text(f"#rate-{arm}") == percent(comparison[arm]["poor_rate"])
    assert page.inner_text("#difference") == points(comparison["difference"])
    interval = comparison["ci95"]
    shown_interval = f"{points(interval[0])} to {points(interval[1])}" if interval else "n/a"
    assert page.inner_text("#ci95") == shown_interval
    print(f"\nalerted vs holdout as shown: {comparison}")

    performance = _json(served, "/analytics/model-performance", now=PARAMS["now"], days="30")
    assert performance["count"] >= 1
    assert page.locator("tr.evaluation td.auc").all_inner_texts() == [
        decimal3(e["auc_roc"]) for e in performance["evaluations"]
    ]
    assert page.locator("tr.evaluation td.precision").all_inner_texts() == [
        decimal3(e["precision"]) for e in performance["evaluations"]
    ]
    assert page.locator("svg").count() == 5

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    width, height = _png_size(shot)
    timing = page.evaluate(
        "() => { const t = performance.getEntriesByType('navigation')[0];"
        " return {ttfb: t.responseStart - t.requestStart, load: t.loadEventEnd - t.startTime}; }"
    )
    print(
        f"\nscreenshot {shot} ({shot.stat().st_size} bytes, {width}x{height} px);"
        f" browser load {seconds * 1000:.0f} ms (navigation: first byte"
        f" {timing['ttfb']:.0f} ms, load event {timing['load']:.0f} ms)"
    )
    print(report(time_loads(page_url(served, PARAMS), AUTH, LOADS)))
    page.context.close()


def test_page_needs_the_key_and_checks_its_parameters(served: str):
    url = page_url(served)
    refused = httpx.get(url)
    assert refused.status_code == 401
    assert "Bearer" in refused.json()["error"]
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    bad = httpx.get(page_url(served, {"days": "0"}), headers=AUTH)
    assert bad.status_code == 422
    assert "days" in bad.json()["error"]


def test_page_as_of_the_clock_says_when_nothing_is_upcoming(browser, served: str):
    """Without `now` the page reads as of the clock; the demo's sessions are long past."""
    context = browser.new_context(extra_http_headers=AUTH)
    page = context.new_page()
    response = page.goto(page_url(served))
    assert response is not None and response.status == 200
    assert page.inner_text("#upcoming-count") == "0"
    assert "No first session starts in the next 24.0 h" in page.inner_text("#sessions")
    context.close()
