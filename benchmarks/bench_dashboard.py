"""Load time of the operations page (GET /api/first-session/dashboard) over HTTP.

    .venv/bin/python benchmarks/bench_dashboard.py [-n N] [--url BASE --key KEY] [--now ISO]

With --url, times N loads of a server already running there (sending --key, if any,
as `Authorization: Bearer`). Without it, serves the latest Bento built by `fsp
package` (or `fsp demo`) with the configured settings on a free loopback port, with a
made-up FSP_API_KEY, times the loads, and stops it. Each load is one GET of the whole
page, one after the other on a fresh connection (as a browser's first view): the
figures are the server's whole work (scoring the upcoming sessions, the summary and
evaluation queries, rendering) plus one loopback round trip. Prints median and p95.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DASHBOARD = "/api/first-session/dashboard"
DEFAULT_LOADS = 30
READY_PATH = "/readyz"


def page_url(base: str, params: dict[str, str] | None = None) -> str:
    """The page's address on a server, with its query parameters."""
    query = f"?{urlencode(params)}" if params else ""
    return f"{base.rstrip('/')}{DASHBOARD}{query}"


def time_loads(url: str, headers: dict[str, str], loads: int) -> dict[str, float]:
    """Seconds of each of `loads` sequential GETs of `url` (each must answer 200 with
    HTML): median, p95, min and max, in milliseconds."""
    seconds = []
    for _ in range(loads):
        started = time.perf_counter()
        response = httpx.get(url, headers=headers, timeout=30)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200 or "text/html" not in response.headers["content-type"]:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    ms = sorted(s * 1000 for s in seconds)
    return {
        "loads": loads,
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[max(0, round(0.95 * len(ms)) - 1)], 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
        "bytes": len(response.content),
    }


def report(figures: dict[str, float]) -> str:
    """One line of the figures."""
    return (
        f"dashboard: {figures['loads']} loads, median {figures['median_ms']} ms,"
        f" p95 {figures['p95_ms']} ms (min {figures['min_ms']}, max {figures['max_ms']});"
        f" page {figures['bytes']} bytes"
    )


def serve_and_time(loads: int, params: dict[str, str]) -> dict[str, float]:
    """Serve the latest Bento with the configured settings, time the page, stop it."""
    # Imported here: timing a running server (--url) needs neither settings nor pandas.
    from bench_serving import free_port, start

    from fsp.settings import get_settings
    from service.packaging import bentoml_home, latest_bento, serve_command, serving_env

    settings = get_settings()
    home = bentoml_home(settings)
    key = secrets.token_urlsafe(24)
    port = free_port()
    env = {**serving_env(settings, home), "FSP_API_KEY": key}
    server = start("dashboard", serve_command(latest_bento(home), port), env, port, READY_PATH)
    try:
        print(f"Bento ready in {server.ready_seconds:.1f} s on port {port}")
        url = page_url(f"http://127.0.0.1:{port}", params)
        return time_loads(url, {"Authorization": f"Bearer {key}"}, loads)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--loads", type=int, default=DEFAULT_LOADS)
    parser.add_argument("--url", help="base URL of a running server (else serve one here)")
    parser.add_argument("--key", default=os.environ.get("FSP_API_KEY", "").split(",")[0])
    parser.add_argument("--now", help="the page's `now` (ISO 8601 with offset)")
    args = parser.parse_args()
    if args.loads < 1:
        parser.error("--loads: must be at least 1")
    params = {"now": args.now} if args.now else {}
    if args.url:
        headers = {"Authorization": f"Bearer {args.key.strip()}"} if args.key.strip() else {}
        figures = time_loads(page_url(args.url, params), headers, args.loads)
    else:
        figures = serve_and_time(args.loads, params)
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
