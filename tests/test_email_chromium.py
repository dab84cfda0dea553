"""The email as a phone and a desktop mail client show it: rendered in headless
Chromium (Debian's `chromium`, driven by Playwright) at 375 px and 800 px wide. No
horizontal scroll, every section present; screenshots saved under
.fsp/screenshots/ (paths and sizes printed)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import SCREENSHOTS

from alerting.record import TutorRecord
from alerting.render import LinkPolicy, compose_letter

pytestmark = pytest.mark.services

CHROMIUM = "/usr/bin/chromium"
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
WIDTHS = (375, 800)
SECTIONS = ("#intro", "#session-1", "#record", "#practices", "#footer")


def _row(session_id: str, hours: int, factor: str, **change) -> dict:
    row = {
        "session_id": session_id,
        "message_id": f"<{session_id}@tutoring.example>",
        "recipient": "maria@tutors.example",
        "tutor_id": "T1",
        "tutor_name": "Maria-Alexandrovna Konstantinopolskaya-Vasquez",
        "scheduled_start": NOW + timedelta(hours=hours),
        "subject": "computer_science_and_advanced_placement_statistics",
        "timezone": "America/Argentina/ComodRivadavia",
        "risk_level": "CRITICAL",
        "risk_score": 83,
        "model_version": "12",
        "tracking_token": f"tok{session_id}-0123456789abcdefghij",
        "features": {"student_age": 8},
        "record": TutorRecord(9, 2, 1, 0, 3, 1, 4, 13.0, engagement=0.2, tutor_zone="Asia/Tokyo"),
        "top_risk_factors": [
            {"feature": factor, "contribution": 0.8},
            {"feature": "student_age", "contribution": 0.3},
            {"feature": "reschedule_rate", "contribution": 0.2},
        ],
    }
    row.update(change)
    return row


def letters() -> dict[str, str]:
    """A letter of one session and one of three, with long words everywhere."""
    links = LinkPolicy(track=True, base_url="https://first-session-risk.tutoring.example")
    one_session = [_row("S0000001", 20, "first_session_success_rate")]
    three = [
        _row("S0000002", 30, "local_hour"),
        _row("S0000003", 54, "avg_rating", subject="algebra"),
        _row("S0000004", 80, "a_feature_added_later", risk_level="HIGH", risk_score=61),
    ]
    return {
        name: compose_letter(rows, NOW, "alerts@tutoring.example", links=links)[1]
        .get_body(("html",))
        .get_content()
        for name, rows in (("one-session", one_session), ("three-sessions", three))
    }


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["one-session", "three-sessions"])
def test_email_fits_the_screen_with_every_section(browser, name: str, width: int) -> None:
    html = letters()[name]
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.route("**/*", lambda route: route.abort())  # no network: the pixel stays unloaded
        page.set_content(html, wait_until="domcontentloaded")
        scroll_width = page.evaluate("document.scrollingElement.scrollWidth")
        inner_width = page.evaluate("window.innerWidth")
        assert scroll_width <= inner_width, f"{name} at {width}px scrolls sideways"
        for selector in SECTIONS:
            assert page.locator(selector).is_visible(), f"{selector} missing in {name}"
        sessions = page.locator("td.session").count()
        assert sessions == (1 if name == "one-session" else 3)
        assert page.locator(".tip").count() >= sessions
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"email-{name}-{width}px.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    print(f"\nscreenshot {shot} ({shot.stat().st_size} bytes, {width}px wide)")
    assert shot.stat().st_size > 10_000
