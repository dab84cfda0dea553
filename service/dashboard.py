"""The operations page, GET /api/first-session/dashboard: one server-rendered HTML page
for the people who act on the risk, with small inline SVG charts drawn here.

It reads through the very `RiskService` methods the JSON endpoints answer with
(`upcoming`, `summary`, `model_performance`), so the page and the JSON always agree;
only the delivery figures the JSON does not carry (held out, opened, each upcoming
session's alert status) are read here, from fsp.alert_deliveries. The page loads
nothing from anywhere: no script, no font, no image but its inline SVG (its
Content-Security-Policy says so to the browser too)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Final

import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from fsp.constants import RISK_BANDS
from fsp.errors import DatabaseUnavailable
from fsp.settings import PROJECT_ROOT
from service.api import Days, Now
from service.config import LOOKAHEAD_HOURS_MAX

if TYPE_CHECKING:  # the CLI reads this module's importer for configuration: no psycopg
    import psycopg

    from service.worker import Worker

TEMPLATES_DIR: Final = PROJECT_ROOT / "templates"
TEMPLATE: Final = "dashboard.html.j2"
DASHBOARD_PATH: Final = "/dashboard"
"""Route inside the read app (so API_PREFIX + DASHBOARD_PATH from outside)."""

DEFAULT_LOOKAHEAD_HOURS: Final = 24.0
"""The page's upcoming window by default: the same as /predict-upcoming's."""
DEFAULT_DAYS: Final = 30
"""The page's window of past predictions, alerts and evaluations by default: the same
as the analytics endpoints'."""
MAX_SESSION_ROWS: Final = 200
"""Most upcoming sessions listed one by one (the counts per level cover them all)."""
FACTORS_SHOWN: Final = 3
"""Top factors listed per upcoming session."""

LEVELS: Final = tuple(name for name, _ in RISK_BANDS)
LEVEL_COLOURS: Final = {
    "LOW": "#4c9a5b",
    "MEDIUM": "#d9a600",
    "HIGH": "#e0702a",
    "CRITICAL": "#c0392b",
}
SERIES_COLOURS: Final = {"AUC": "#2866b1", "precision": "#8e44ad"}
ALERT_STATUSES: Final = ("sent", "holdout", "pending", "sending", "failed", "cancelled")

PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""The page shows tutors' and students' ids: never cached; and it may load nothing
from outside (styles inline, no scripts at all)."""

Lookahead = Annotated[
    float, Query(gt=0, le=LOOKAHEAD_HOURS_MAX, description="upcoming window in hours")
]

OPENED_COLUMN: Final = "first_opened_at"
"""Column of fsp.alert_deliveries holding an alert's first open (where open tracking
is installed); without it the page says opens are not tracked."""


# -- what the page shows ------------------------------------------------------------------


@dataclass(frozen=True)
class Deliveries:
    """Alert deliveries of the predictions made in the window, and of each upcoming
    session: statuses, and first opens where tracked (`opened` None: not tracked)."""

    by_status: dict[str, int]
    opened: int | None
    of_session: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class DashboardData:
    """Everything the page shows: the JSON endpoints' answers and the deliveries."""

    upcoming: dict[str, Any]
    summary: dict[str, Any]
    performance: dict[str, Any]
    deliveries: Deliveries


def _tracks_opens(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'fsp'"
        " AND table_name = 'alert_deliveries' AND column_name = %s)",
        (OPENED_COLUMN,),
    ).fetchone()
    return bool(row and row[0])


def read_deliveries(
    conn: psycopg.Connection, since: datetime, until: datetime, session_ids: list[str]
) -> Deliveries:
    """Delivery counts by status (and opens) of predictions made in (since, until], and
    the status (and first open) of each of `session_ids`."""
    tracked = _tracks_opens(conn)
    opened = f"d.{OPENED_COLUMN}" if tracked else "NULL::timestamptz"
    rows = conn.execute(
        f"SELECT d.status, count(*), count({opened}) FROM fsp.alert_deliveries d"  # noqa: S608  (column name from our own constant; values bound as parameters)
        " JOIN fsp.first_session_predictions p USING (session_id)"
        " WHERE p.prediction_date > %s AND p.prediction_date <= %s GROUP BY 1",
        (since, until),
    ).fetchall()
    sessions = conn.execute(
        f"SELECT d.session_id, d.status, {opened} FROM fsp.alert_deliveries d"  # noqa: S608  (column name from our own constant; values bound as parameters)
        " WHERE d.session_id = ANY(%s)",
        (session_ids,),
    ).fetchall()
    return Deliveries(
        by_status={status: int(n) for status, n, _ in rows},
        opened=sum(int(n) for _, _, n in rows) if tracked else None,
        of_session={sid: (status, at) for sid, status, at in sessions},
    )


def gather(
    worker: Worker, now: datetime | None, lookahead_hours: float, days: int
) -> DashboardData:
    """The page's data, through the JSON endpoints' own functions. Without `now`, each
    reads as of the clock (upcoming from the served snapshot, as its endpoint does)."""
    upcoming = worker.reads.upcoming(now, lookahead_hours)
    summary = worker.reads.summary(days, now)
    performance = worker.reads.model_performance(days, now)
    until = datetime.fromisoformat(summary["now"])
    ids = [p["session_id"] for p in upcoming["predictions"]]
    with worker.pool.connection() as conn:
        deliveries = read_deliveries(conn, until - timedelta(days=days), until, ids)
    return DashboardData(upcoming, summary, performance, deliveries)


# -- numbers in words -----------------------------------------------------------------------


def percent(value: float | None) -> str:
    """A rate as the page prints it: 12.3 %, or n/a."""
    return "n/a" if value is None else f"{value * 100:.1f} %"


def decimal3(value: float | None) -> str:
    """A metric (AUC, precision) as the page prints it: 0.712, or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def points(value: float | None) -> str:
    """A difference of two rates, in percentage points: -4.2 pts, or n/a."""
    return "n/a" if value is None else f"{value * 100:+.1f} pts"


def _when(text: str | None) -> str:
    """An ISO time as 2026-11-01 14:00 UTC (the stored times are UTC)."""
    if not text:
        return "n/a"
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M UTC")


# -- inline SVG charts -----------------------------------------------------------------------


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    return Markup(  # noqa: S704  (numbers we format and labels passed through escape())
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def bar_chart(title: str, bars: list[tuple[str, float, str]], shown: list[str]) -> Markup:
    """Horizontal bars: (label, value, colour) each, `shown` the value's text."""
    width, row, label_w, text_w = 360, 24, 90, 60
    top = max((v for _, v, _ in bars), default=0) or 1
    body = []
    for i, ((label, value, colour), text) in enumerate(zip(bars, shown, strict=True)):
        y = i * row
        length = (width - label_w - text_w) * value / top
        body.append(
            f'<text x="0" y="{y + 16}" font-size="12">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="16"'
            f' fill="{colour}"/>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + 16}" font-size="12">'
            f"{escape(text)}</text>"
        )
    return _svg(width, max(row * len(bars), row), title, body)


def line_chart(title: str, series: dict[str, list[tuple[datetime, float]]]) -> Markup:
    """Lines over time on a 0-1 scale (AUC, precision), a dot per evaluation."""
    width, height, left, bottom = 420, 180, 34, 36
    moments = sorted({t for line in series.values() for t, _ in line})
    if not moments:
        return _svg(width, 30, title, ['<text x="0" y="18" font-size="12">no evaluations</text>'])
    first, span = moments[0], (moments[-1] - moments[0]).total_seconds() or 1.0
    inner_w, inner_h = width - left - 10, height - bottom - 10

    def x(t: datetime) -> float:
        offset = (t - first).total_seconds() / span if len(moments) > 1 else 0.5
        return left + offset * inner_w

    def y(v: float) -> float:
        return 10 + (1 - v) * inner_h

    body = _axes(left, width, y, moments[0], moments[-1])
    for n, (name, line) in enumerate(series.items()):
        colour = SERIES_COLOURS.get(name, "#555")
        xy = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line)
        body.append(f'<polyline points="{xy}" fill="none" stroke="{colour}" stroke-width="2"/>')
        body += [
            f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>' for t, v in line
        ]
        body.append(
            f'<text x="{left + 8 + n * 90}" y="{height - 4}" font-size="11" fill="{colour}">'
            f"■ {escape(name)}</text>"
        )
    return _svg(width, height, title, body)


def _axes(left: int, width: int, y, start: datetime, end: datetime) -> list[str]:
    """Grid lines at 0, 0.5, 1 and the first and last evaluation dates."""
    body = []
    for v in (0.0, 0.5, 1.0):
        body.append(  # noqa: PERF401  (one grid line per value, readable)
            f'<line x1="{left}" x2="{width - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}"'
            ' stroke="#ddd"/>'
            f'<text x="2" y="{y(v) + 4:.1f}" font-size="10">{v:.1f}</text>'
        )
    body.append(
        f'<text x="{left}" y="{y(0) + 14:.1f}" font-size="10">{start:%m-%d}</text>'
        f'<text x="{width - 10}" y="{y(0) + 14:.1f}" font-size="10" text-anchor="end">'
        f"{end:%m-%d}</text>"
    )
    return body


def interval_chart(title: str, difference: float | None, ci95: list[float] | None) -> Markup:
    """The alerted − holdout difference of poor-session rates with its 95 % interval,
    on a scale centred at 0 (left of 0: alerted sessions went better)."""
    width, height, pad = 360, 56, 20
    if difference is None or ci95 is None:
        return _svg(width, 30, title, ['<text x="0" y="18" font-size="12">not enough data</text>'])
    reach = max(abs(ci95[0]), abs(ci95[1]), 0.05) * 1.1

    def x(v: float) -> float:
        return pad + (v + reach) / (2 * reach) * (width - 2 * pad)

    body = [
        f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="4" y2="36" stroke="#999"'
        ' stroke-dasharray="3,3"/>',
        f'<line x1="{x(ci95[0]):.1f}" x2="{x(ci95[1]):.1f}" y1="20" y2="20" stroke="#2866b1"'
        ' stroke-width="3"/>',
        f'<circle cx="{x(difference):.1f}" cy="20" r="5" fill="#2866b1"/>',
        f'<text x="{x(-reach):.1f}" y="{height - 4}" font-size="10">{-reach * 100:+.0f} pts</text>',
        f'<text x="{x(0):.1f}" y="{height - 4}" font-size="10" text-anchor="middle">0</text>',
        f'<text x="{x(reach):.1f}" y="{height - 4}" font-size="10" text-anchor="end">'
        f"{reach * 100:+.0f} pts</text>",
    ]
    return _svg(width, height, title, body)


# -- the view the template fills in --------------------------------------------------------


def level_counts(upcoming: dict[str, Any]) -> dict[str, int]:
    """Upcoming sessions per risk level, every level present."""
    counted = Counter(p["risk_level"] for p in upcoming["predictions"])
    return {level: counted.get(level, 0) for level in LEVELS}


def alert_status(prediction: dict[str, Any], deliveries: Deliveries) -> str:
    """What became of a session's alert, in words: its delivery's status (and first
    open), else whether the score calls for one that has not been queued yet."""
    found = deliveries.of_session.get(prediction["session_id"])
    if found is not None:
        status, opened = found
        words = "held out (no email)" if status == "holdout" else status
        return words + (f", opened {opened:%Y-%m-%d %H:%M}" if opened else "")
    return "alert due, not queued yet" if prediction["should_send_alert"] else "no alert"


def session_rows(data: DashboardData) -> list[dict[str, Any]]:
    """The upcoming sessions, riskiest first, as the table lists them."""
    ordered = sorted(
        data.upcoming["predictions"], key=lambda p: (-p["risk_probability"], p["session_id"])
    )
    return [
        {
            "start": _when(p["scheduled_start"]),
            "session_id": p["session_id"],
            "tutor_id": p["tutor_id"],
            "subject": p["subject"],
            "level": p["risk_level"],
            "score": p["risk_score"],
            "factors": [
                f"{f['label']} ({'↑' if f['direction'] == 'raises risk' else '↓'})"
                for f in p["top_risk_factors"][:FACTORS_SHOWN]
            ],
            "alert": alert_status(p, data.deliveries),
        }
        for p in ordered[:MAX_SESSION_ROWS]
    ]


def alert_figures(data: DashboardData) -> dict[str, int | None]:
    """Alerts of the window's predictions: sent (the summary's count), held out,
    waiting, failed, opened (None: opens are not tracked)."""
    by_status = data.deliveries.by_status
    return {
        "sent": int(data.summary["alerts_sent"]),
        "held out": by_status.get("holdout", 0),
        "waiting": by_status.get("pending", 0) + by_status.get("sending", 0),
        "failed": by_status.get("failed", 0),
        "opened": data.deliveries.opened,
    }


def evaluated_series(data: DashboardData) -> tuple[str | None, dict[str, list]]:
    """AUC and precision over time of one model version: the served one when it was
    evaluated in the window, else the most recently evaluated one."""
    evaluations = data.performance["evaluations"]
    versions = [e["model_version"] for e in evaluations]
    served = data.upcoming["model_version"]
    version = served if served in versions else (versions[0] if versions else None)
    chosen = sorted(
        (e for e in evaluations if e["model_version"] == version),
        key=lambda e: e["evaluation_date"],
    )
    series: dict[str, list] = {"AUC": [], "precision": []}
    for e in chosen:
        moment = datetime.fromisoformat(e["evaluation_date"])
        for name, key in (("AUC", "auc_roc"), ("precision", "precision")):
            if e[key] is not None:
                series[name].append((moment, float(e[key])))
    return version, series


def charts(data: DashboardData, levels: dict[str, int], alerts: dict[str, int | None]):
    """The page's four inline SVG charts."""
    version, series = evaluated_series(data)
    comparison = data.summary["alerted_vs_holdout"]
    arms = [
        (name, comparison[key]) for name, key in (("alerted", "alerted"), ("holdout", "holdout"))
    ]
    alert_bars = [(k, float(v), "#2866b1") for k, v in alerts.items() if v is not None]
    return {
        "levels": bar_chart(
            "Upcoming first sessions per risk level",
            [(level, float(n), LEVEL_COLOURS[level]) for level, n in levels.items()],
            [str(n) for n in levels.values()],
        ),
        "alerts": bar_chart(
            "Alerts of the window", alert_bars, [str(int(v)) for _, v, _ in alert_bars]
        ),
        "performance": line_chart(f"Live AUC and precision of version {version}", series),
        "rates": bar_chart(
            "Poor-session rate, alerted vs holdout",
            [(name, arm["poor_rate"] or 0.0, "#7f8c8d") for name, arm in arms],
            [percent(arm["poor_rate"]) for _, arm in arms],
        ),
        "difference": interval_chart(
            "Alerted minus holdout poor-session rate, 95 % interval",
            comparison["difference"],
            comparison["ci95"],
        ),
    }


def view(data: DashboardData) -> dict[str, Any]:
    """What the template sees."""
    levels = level_counts(data.upcoming)
    alerts = alert_figures(data)
    version, _ = evaluated_series(data)
    return {
        "upcoming": data.upcoming,
        "summary": data.summary,
        "levels": levels,
        "sessions": session_rows(data),
        "more_sessions": max(0, len(data.upcoming["predictions"]) - MAX_SESSION_ROWS),
        "alerts": alerts,
        "evaluations": data.performance["evaluations"],
        "evaluated_version": version,
        "comparison": data.summary["alerted_vs_holdout"],
        "charts": charts(data, levels, alerts),
        "as_of": _when(data.upcoming["now"]),
    }


@cache
def environment() -> Environment:
    """The page's Jinja2 environment (HTML-escaped, a missing value is an error)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined
    )
    env.filters.update(percent=percent, points=points, decimal3=decimal3, when=_when)
    return env


def render_page(data: DashboardData) -> str:
    """The page's HTML."""
    return environment().get_template(TEMPLATE).render(**view(data))


# -- the route ---------------------------------------------------------------------------------


def _worker() -> Worker:
    """The parts of the worker serving this request (as the read endpoints reach them)."""
    try:
        return bentoml.get_current_service().worker
    except BentoMLException as exc:
        raise DatabaseUnavailable("service is starting") from exc


def dashboard(
    lookahead_hours: Lookahead = DEFAULT_LOOKAHEAD_HOURS,
    days: Days = DEFAULT_DAYS,
    now: Now = None,
) -> HTMLResponse:
    """The operations page: upcoming first sessions by risk level with their top
    factors and alert status; alerts sent, held out, opened; live AUC and precision
    over time; alerted vs holdout poor-session rates with their interval. The same
    numbers as /predict-upcoming, /analytics/summary and /analytics/model-performance
    with the same parameters."""
    data = gather(_worker(), now, lookahead_hours, days)
    return HTMLResponse(render_page(data), headers=PAGE_HEADERS)


def add_dashboard(app: FastAPI) -> None:
    """Serve the page at DASHBOARD_PATH of `app` (the read endpoints' app). Added as a
    route of its own, not through `include_router`: FastAPI 0.150 keeps an included
    router as one opaque route without a path, which the service's route labels
    (service.service.RouteLabels) cannot see, so its paths would answer 404."""
    app.add_api_route(
        DASHBOARD_PATH,
        dashboard,
        methods=["GET"],
        response_class=HTMLResponse,
        responses={200: {"content": {"text/html": {}}, "description": "the operations page"}},
    )
