"""Read the demo's emails as tutors would, and print the open and click figures.

After `make demo` (tracking on, emails in the outbox folder): serve the demo's Bento
where the emails point (FSP_PUBLIC_BASE_URL), open a share of the outbox's emails in
headless Chromium (Debian's `chromium` through Playwright: the email's 1×1 image is
fetched from the Bento), follow the first link of a share of the opened ones, and
print the `email_tracking` block of GET /api/first-session/analytics/summary.

Which emails are read is decided by their order in the folder (sorted by file name),
so a rerun reads the same ones; a repeated open or click changes nothing.

    .venv/bin/python scripts/read_demo_emails.py [--open-share 0.6] [--click-share 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import sync_playwright

from fsp.settings import PROJECT_ROOT, get_settings

CHROMIUM = "/usr/bin/chromium"
READY_TIMEOUT_S = 300.0
TRACKED_LINK = re.compile(r'href="([^"]*/api/first-session/r/[^"]*)"')


def html_of(path: Path) -> str:
    """The HTML part of an outbox email."""
    message = message_from_bytes(path.read_bytes(), policy=default_policy)
    part = message.get_body(preferencelist=("html",))
    if part is None:
        raise SystemExit(f"{path}: no HTML part")
    return str(part.get_content())


@contextmanager
def served(port: int) -> Iterator[str]:
    """`fsp serve` of the demo's Bento on `port`; yields its base URL once ready."""
    command = [str(Path(sys.executable).parent / "fsp"), "serve", "--port", str(port)]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fsp serve did not get ready on {base}")
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def open_in_chromium(emails: list[Path]) -> None:
    """Each email rendered by Chromium, its images loaded (the tracking image too)."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        for path in emails:
            page.set_content(html_of(path), wait_until="load")
        browser.close()


def click_first_link(path: Path) -> int:
    """Follow the email's first tracked link (the redirect is not followed: its target
    is the platform, not on this machine); the answer's status."""
    found = TRACKED_LINK.search(html_of(path))
    if found is None:
        raise SystemExit(f"{path}: no tracked link (was the demo run with FSP_TRACK_OPENS?)")
    return httpx.get(found.group(1), follow_redirects=False).status_code


def _key() -> dict[str, str]:
    """The read endpoints' key header, when FSP_API_KEY is set (its first key)."""
    keys = os.environ.get("FSP_API_KEY", "").split(",")
    return {"Authorization": f"Bearer {keys[0].strip()}"} if keys[0].strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open-share", type=float, default=0.6)
    parser.add_argument("--click-share", type=float, default=0.5)
    parser.add_argument(
        "--now", help="the moment to ask the summary as of (ISO 8601; the demo's clock runs ahead)"
    )
    args = parser.parse_args()
    settings = get_settings()
    emails = sorted(settings.outbox_dir.glob("*.eml"))
    if not emails:
        raise SystemExit(f"no emails in {settings.outbox_dir}: run `make demo` first")
    opened = emails[: math.ceil(args.open_share * len(emails))]
    clicked = opened[: math.ceil(args.click_share * len(opened))]
    port = urlsplit(settings.public_base_url).port or 80
    with served(port) as base:
        open_in_chromium(opened)
        statuses = [click_first_link(path) for path in clicked]
        params = {"now": args.now} if args.now else {}
        summary = httpx.get(
            f"{base}/api/first-session/analytics/summary", params=params, headers=_key()
        ).json()
    print(
        f"outbox: {len(emails)} emails; opened in Chromium: {len(opened)};"
        f" first link followed: {len(clicked)} (statuses {sorted(set(statuses))})"
    )
    print(json.dumps(summary["email_tracking"], indent=2))


if __name__ == "__main__":
    main()
