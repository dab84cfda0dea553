"""Open and click tracking over real HTTP: a real `fsp serve` of the Bento, against a
database where the alerts flow sent emails with tracking tokens (outbox), asked
without any API key, as an email client asks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from conftest import DEMO_NOW, create_database, drop_database, seed_demo
from flow_fixtures import point_at
from test_dashboard import API_KEY, serve_bento

from alerting.tracking import PIXEL_GIF
from flows.alerts import alerts_flow
from flows.score import score_flow
from fsp.settings import get_settings
from service.packaging import package_champion

pytestmark = [pytest.mark.services, pytest.mark.timeout(3600)]
"""The shared fixtures (a trained world, a Bento) take minutes on a busy machine."""

PLATFORM_URL = "https://platform.example/first-sessions"
"""FSP_PLATFORM_URL of the served Bento: where an unknown link leads."""
TRACKED = (
    "SELECT session_id, tracking_token, first_opened_at, first_clicked_at, click_target,"
    " letter_message_id FROM fsp.alert_deliveries ORDER BY session_id"
)


@pytest.fixture(scope="module")
def tracking_world(
    server_url: str, trained_world: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """A database seeded like the trained world where the scoring and alerts flows ran
    with tracking on, and the champion packaged as a Bento."""
    url = create_database(server_url)
    seed_demo(url)
    state = tmp_path_factory.mktemp("tracking-state")
    mp = pytest.MonkeyPatch()
    point_at(mp, url, state, trained_world["state_dir"])
    mp.setenv("FSP_TRACK_OPENS", "true")
    mp.setenv("BENTOML_HOME", str(state / "bentoml"))
    mp.setenv("BENTOML_DO_NOT_TRACK", "True")
    get_settings.cache_clear()
    try:
        score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=48.0)
        alerts_flow(now=DEMO_NOW.isoformat())
        package_champion(get_settings())
    finally:
        mp.undo()
        get_settings.cache_clear()
    yield {"database_url": url, "state_dir": state}
    drop_database(server_url, url)


@pytest.fixture(scope="module")
def served(tracking_world: dict) -> Iterator[str]:
    """The world's Bento, served with FSP_PLATFORM_URL set; yields its base URL."""
    state, url = tracking_world["state_dir"], tracking_world["database_url"]
    with serve_bento(state, url, FSP_PLATFORM_URL=PLATFORM_URL) as base:
        yield base


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(TRACKED).fetchall()


def _sent(url: str) -> list[tuple]:
    """(session_id, token, click_target, letter) of the sent deliveries with a token."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT session_id, tracking_token, click_target, letter_message_id"
            " FROM fsp.alert_deliveries WHERE status = 'sent' AND tracking_token IS NOT NULL"
            " ORDER BY session_id"
        ).fetchall()


def _assert_pixel(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert response.content == PIXEL_GIF


def test_open_stores_the_first_open_once(served: str, tracking_world: dict):
    url = tracking_world["database_url"]
    sent = _sent(url)
    assert sent, "the alerts flow sent no tracked email"
    session_id, token, _, letter = sent[0]
    before = datetime.now(UTC)
    _assert_pixel(httpx.get(f"{served}/api/first-session/t/{token}.gif"))
    after = datetime.now(UTC)
    rows = {r[0]: r for r in _rows(url)}
    opened = rows[session_id][2]
    assert opened is not None and before <= opened <= after
    same_letter = [r for r in rows.values() if r[5] == letter]
    assert all(r[2] == opened for r in same_letter), "an open counts for the whole email"

    snapshot = _rows(url)
    _assert_pixel(httpx.get(f"{served}/api/first-session/t/{token}.gif"))
    assert _rows(url) == snapshot, "a repeated open changed something"

    summary = httpx.get(
        f"{served}/api/first-session/analytics/summary",
        params={"days": 30},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()["email_tracking"]
    letters = {r[5] for r in _rows(url) if r[5] is not None}
    opened_letters = {r[5] for r in _rows(url) if r[5] is not None and r[2] is not None}
    assert summary["emails_opened"] == len(opened_letters) >= 1
    assert summary["open_rate"] == pytest.approx(len(opened_letters) / len(letters), abs=1e-4)


@pytest.mark.parametrize(
    "token",
    [
        secrets.token_urlsafe(32),  # well formed, unknown: looked up, nothing found
        "x",  # too short
        "a" * 500,  # too long
        "not a token!",  # wrong alphabet
        "%27%3B--",  # an injection attempt, URL-encoded
        "%C2%AE%04",  # a control character (once answered 404 by the route labels)
        "ab%0Acd",  # a newline, where Starlette's path patterns stop
    ],
)
def test_forged_or_malformed_open_answers_the_same_image_and_writes_nothing(
    served: str, tracking_world: dict, token: str
):
    snapshot = _rows(tracking_world["database_url"])
    _assert_pixel(httpx.get(f"{served}/api/first-session/t/{token}.gif"))
    assert _rows(tracking_world["database_url"]) == snapshot


def test_click_redirects_to_the_target_and_stores_the_first_click(
    served: str, tracking_world: dict
):
    url = tracking_world["database_url"]
    session_id, token, target, _ = _sent(url)[-1]
    assert target and target.startswith("https://")
    answer = httpx.get(f"{served}/api/first-session/r/{token}", follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"] == target
    assert "no-store" in answer.headers["cache-control"]
    row = next(r for r in _rows(url) if r[0] == session_id)
    clicked = row[3]
    assert clicked is not None and row[2] is not None  # a click is an open too

    snapshot = _rows(url)
    again = httpx.get(f"{served}/api/first-session/r/{token}", follow_redirects=False)
    assert again.status_code == 302 and again.headers["location"] == target
    assert _rows(url) == snapshot, "a repeated click changed something"


@pytest.mark.parametrize(
    "token", [secrets.token_urlsafe(32), "x", "b" * 300, "..%2F..%2Fetc", "%0A", "%26%C3%B2Q%18"]
)
def test_unknown_click_goes_to_the_platform_page_and_writes_nothing(
    served: str, tracking_world: dict, token: str
):
    snapshot = _rows(tracking_world["database_url"])
    answer = httpx.get(f"{served}/api/first-session/r/{token}", follow_redirects=False)
    assert answer.status_code == 302
    assert answer.headers["location"] == PLATFORM_URL
    assert _rows(tracking_world["database_url"]) == snapshot


def test_tracking_needs_no_key_but_the_read_endpoints_still_do(served: str):
    assert httpx.get(f"{served}/api/first-session/analytics/summary").status_code == 401
    assert httpx.get(f"{served}/api/first-session/dashboard").status_code == 401
    gif = httpx.get(f"{served}/api/first-session/t/{secrets.token_urlsafe(32)}.gif")
    assert gif.status_code == 200


@pytest.mark.parametrize("document", ["/docs.json", "/api/first-session/openapi.json"])
def test_every_documented_refusal_is_json(served: str, document: str):
    """The dashboard answers HTML and the open image a GIF, but their refusals (422 for
    a wrong `now`, 401, 503) are JSON bodies, and both documents say so."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    spec = httpx.get(served + document, headers=auth).json()
    refusals = {
        f"{method} {path} {status}": sorted(response.get("content", {}))
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict)
        for status, response in operation.get("responses", {}).items()
        if status >= "400" and path != "/readyz"
    }
    assert refusals and all(types == ["application/json"] for types in refusals.values()), {
        k: v for k, v in refusals.items() if v != ["application/json"]
    }
    answer = httpx.get(served + "/api/first-session/dashboard", params={"now": "AAA"}, headers=auth)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/json")
