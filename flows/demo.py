"""`fsp demo`: the whole operating loop, end to end, on the embedded defaults.

demo data (when the platform is empty) → train → package the Bento → score the
next 24 hours → alerts (outbox) → a simulated passage of time in which the
platform records what happened → reconcile → monitor; then a short summary.
Nothing here needs DATABASE_URL, MLFLOW_TRACKING_URI or SMTP: the embedded
PostgreSQL, the local MLflow store and the outbox folder are used when unset."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import psycopg
from scipy.special import expit, logit

from fsp.constants import MONITOR_WINDOW_DAYS
from fsp.db import connection, ensure_platform_schema, platform_is_empty, upgrade
from fsp.errors import PlatformNotEmpty
from fsp.settings import Settings

DEMO_DAYS: Final = 120
DEMO_SEED: Final = 7
DEMO_LOOKAHEAD_HOURS: Final = 24.0
TIME_PASSES: Final = timedelta(days=2)
"""How long the demo lets pass after scoring: every scored session has ended and
most ratings have arrived."""
DEMO_EMAIL_DOMAIN: Final = "@tutors.example"
"""Every tutor the demo-data generator writes has an address here; the simulation
refuses to touch a platform that holds anyone else."""

# The simulated platform's behaviour after scoring (see simulate_platform_outcomes).
STUDENT_CANCEL_RATE: Final = 0.05
TUTOR_RESCHEDULE_RATE: Final = 0.05
TUTOR_NO_SHOW_RATE: Final = 0.02
RATED_SHARE: Final = 0.80
RATING_DELAY_MEAN_HOURS: Final = 8.0
OUTCOME_NOISE_SD: Final = 0.6
ALERT_ODDS_EFFECT: Final = 0.8
"""An alerted tutor's odds of a poor session are multiplied by this (the effect the
holdout arm exists to measure)."""


def data_now(conn: psycopg.Connection) -> datetime:
    """The moment the demo history ends: the generator books nothing later than one
    minute before its `now`, so the latest booking + 1 minute recovers it."""
    row = conn.execute("SELECT max(created_at) FROM platform.sessions").fetchone()
    if not row or row[0] is None:
        raise PlatformNotEmpty("the platform has no sessions to run the demo on")
    return (row[0] + timedelta(minutes=1)).replace(second=0, microsecond=0)


def ensure_demo_platform(conn: psycopg.Connection, tutors: int) -> tuple[datetime, bool]:
    """Fill an empty platform with demo data; return (the data's now, generated?)."""
    from fsp import demo_data

    upgrade(conn)
    ensure_platform_schema(conn)
    if platform_is_empty(conn):
        spec = demo_data.DemoSpec(tutors, DEMO_DAYS, DEMO_SEED, demo_data.default_now())
        demo_data.write(conn, demo_data.generate(spec))
        return spec.now, True
    others = conn.execute(
        "SELECT count(*) FROM platform.tutors WHERE email NOT LIKE %s",
        (f"%{DEMO_EMAIL_DOMAIN}",),
    ).fetchone()
    if others and others[0]:
        raise PlatformNotEmpty(
            "the platform holds tutors that are not demo data; `fsp demo` only runs on an"
            " empty platform or on `fsp demo-data` output"
        )
    return data_now(conn), False


@dataclass(frozen=True)
class _Outcomes:
    """What the demo platform draws for each scored session: its final status, whether
    it was rated, the stars, and how long after its end the rating came."""

    status: np.ndarray
    rated: np.ndarray
    stars: np.ndarray
    delay_hours: np.ndarray


def _draw_outcomes(rows: list, rng: np.random.Generator) -> _Outcomes:
    """Poor with probability sigmoid(logit(risk) + noise), an alert shifting the odds."""
    n = len(rows)
    risk = np.clip(np.array([r[3] for r in rows], dtype=float), 1e-4, 1 - 1e-4)
    alerted = np.array([bool(r[4]) for r in rows])
    odds_shift = np.where(alerted, np.log(ALERT_ODDS_EFFECT), 0.0)
    poor = rng.random(n) < expit(logit(risk) + odds_shift + rng.normal(0, OUTCOME_NOISE_SD, n))
    u = rng.random(n)
    status = np.select(
        [
            u < STUDENT_CANCEL_RATE,
            u < STUDENT_CANCEL_RATE + TUTOR_RESCHEDULE_RATE,
            u < STUDENT_CANCEL_RATE + TUTOR_RESCHEDULE_RATE + TUTOR_NO_SHOW_RATE,
        ],
        ["cancelled", "rescheduled", "no_show"],
        "completed",
    )
    rated = (status == "completed") & (rng.random(n) < RATED_SHARE)
    stars_good = rng.integers(3, 6, n)
    stars_poor = rng.integers(1, 3, n)
    delay_hours = rng.exponential(RATING_DELAY_MEAN_HOURS, n)
    return _Outcomes(status, rated, np.where(poor, stars_poor, stars_good), delay_hours)


def simulate_platform_outcomes(
    conn: psycopg.Connection, scored_after: datetime, until: datetime, seed: int = DEMO_SEED
) -> dict[str, int]:
    """DEMO ONLY — plays the tutoring platform for the time between scoring and `until`:
    each scored first session that started by `until` gets its final status, and a
    rating when the student rated it and the rating was submitted by `until`.

    This is the only place outside the demo-data generator that writes platform.*,
    and it refuses any platform that is not demo data (`ensure_demo_platform`).
    The demo cannot know the generator's hidden tutor traits, so a completed
    session is poor with probability sigmoid(logit(predicted risk) + noise), and an
    alerted tutor's odds are multiplied by ALERT_ODDS_EFFECT; the demo's live AUC
    therefore shows the loop working, not the model's real-world quality.
    Idempotent: a session already moved out of 'scheduled' is left alone."""
    rows = conn.execute(
        "SELECT s.session_id, s.scheduled_start, s.duration_minutes, p.risk_probability,"
        " p.alert_sent FROM platform.sessions s"
        " JOIN fsp.first_session_predictions p USING (session_id)"
        " WHERE s.status = 'scheduled' AND s.scheduled_start > %s AND s.scheduled_start <= %s"
        " ORDER BY s.session_id",
        (scored_after, until),
    ).fetchall()
    if not rows:
        return {"sessions_ended": 0, "ratings_arrived": 0}
    outcome = _draw_outcomes(rows, np.random.default_rng(seed))
    feedback = []
    with conn.transaction():
        for i, (session_id, start, minutes, _, _) in enumerate(rows):
            conn.execute(
                "UPDATE platform.sessions SET status = %s WHERE session_id = %s"
                " AND status = 'scheduled'",
                (str(outcome.status[i]), session_id),
            )
            delay = timedelta(minutes=int(minutes), hours=float(outcome.delay_hours[i]))
            if outcome.rated[i] and start + delay <= until:
                feedback.append((session_id, int(outcome.stars[i]), start + delay))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO platform.feedback (session_id, rating, submitted_at)"
                " VALUES (%s, %s, %s) ON CONFLICT (session_id) DO NOTHING",
                feedback,
            )
    return {"sessions_ended": len(rows), "ratings_arrived": len(feedback)}


def ensure_champion(settings: Settings, now: datetime) -> dict[str, Any]:
    """Train as of the data's now unless a champion already exists (a rerun is quick)."""
    from flows.train import train_flow
    from fsp.constants import CHAMPION_ALIAS
    from fsp.model_store import alias_version, make_client

    champion = alias_version(make_client(settings), settings.model_name, CHAMPION_ALIAS)
    if champion is not None:
        return {
            "version": str(champion.version),
            "model": champion.tags.get("model_type", "?"),
            "holdout_auc": float(champion.tags.get("holdout_auc_roc", "nan")),
            "trained": False,
        }
    summary = train_flow(as_of=now)
    return {
        "version": str(summary["version"]),
        "model": summary["model"],
        "holdout_auc": summary["holdout_auc"],
        "trained": True,
    }


Step = Callable[[str], AbstractContextManager[object]]
"""Wraps each step (a progress display); given the step's label."""

STEP_LABELS: Final = {
    "demo data": "demo data: the platform's history",
    "train": "train: candidates, MLflow runs, the promotion gate",
    "package": "package: the champion's Bento",
    "score": "score: the next 24 hours of first sessions",
    "alerts": "alerts: emails to the tutors of high-risk sessions",
    "time passes": "time passes: sessions end, ratings arrive (simulated)",
    "reconcile": "reconcile: predictions meet their outcomes",
    "monitor": "monitor: live performance, drift, retrain",
}


def _no_progress(label: str) -> AbstractContextManager[object]:
    return nullcontext()


@dataclass
class DemoResult:
    """Everything the summary prints."""

    seconds: float
    now: datetime
    later: datetime
    generated: bool
    platform: dict[str, int]
    champion: dict[str, Any]
    bento: dict[str, Any]
    scored: dict[str, Any]
    alerts: dict[str, Any]
    outcomes: dict[str, int]
    reconciled: dict[str, Any]
    monitored: dict[str, Any]
    outbox: Path | None
    timings: dict[str, float]


def platform_counts(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM platform.tutors), (SELECT count(*) FROM platform.sessions),"
        " (SELECT count(*) FROM platform.sessions WHERE is_first_session)"
    ).fetchone()
    tutors, sessions, first = row or (0, 0, 0)
    return {"tutors": int(tutors), "sessions": int(sessions), "first_sessions": int(first)}


def run_loop(settings: Settings, step: Step = _no_progress) -> DemoResult:
    """The demo's steps, in order; returns what happened (no printing but `step`'s
    progress display around each one)."""
    from flows.alerts import alerts_flow
    from flows.monitor import monitor_flow
    from flows.reconcile import reconcile_flow
    from flows.retrain import package_champion_bento
    from flows.score import score_flow

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        with step(STEP_LABELS.get(name, name)):
            result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 1)
        return result

    with connection(settings) as conn:
        now, generated = timed("demo data", ensure_demo_platform, conn, settings.demo_tutors)
        counts = platform_counts(conn)
    champion = timed("train", ensure_champion, settings, now)
    bento = timed("package", package_champion_bento, settings)
    scored = timed("score", score_flow, now=now, lookahead_hours=DEMO_LOOKAHEAD_HOURS)
    alerts = timed("alerts", alerts_flow, now=now)
    later = now + TIME_PASSES
    with connection(settings) as conn:
        outcomes = timed("time passes", simulate_platform_outcomes, conn, now, later)
    reconciled = timed("reconcile", reconcile_flow, now=later)
    monitored = timed("monitor", monitor_flow, now=later, window_days=MONITOR_WINDOW_DAYS)
    outbox = None if settings.smtp_host else settings.outbox_dir
    return DemoResult(
        time.perf_counter() - started,
        now,
        later,
        generated,
        counts,
        champion,
        bento,
        scored,
        alerts,
        outcomes,
        reconciled,
        monitored,
        outbox,
        timings,
    )


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


def summary_lines(r: DemoResult, settings: Settings) -> list[str]:
    """The printed summary, line by line."""
    m = r.monitored
    live = next((p for p in m["performance"] if p["model_version"] == m["champion_version"]), None)
    drift = m["reports"].get("data_drift")
    a = r.alerts
    emails = a.get("emails_total", 0)  # one email per tutor may list several sessions
    lines = [
        f"fsp demo: the whole loop in {r.seconds:.0f} s",
        f"  platform    {r.platform['tutors']} tutors, {r.platform['sessions']} sessions"
        f" ({r.platform['first_sessions']} first sessions), history up to {r.now.isoformat()}"
        + (" (generated now)" if r.generated else " (already there)"),
        f"  champion    version {r.champion['version']} ({r.champion['model']}), holdout AUC"
        f" {r.champion['holdout_auc']:.3f}"
        + ("" if r.champion["trained"] else " (trained earlier)"),
        "  bento       " + _bento_line(r.bento),
        f"  scored      {r.scored['sessions_scored']} first sessions in the next"
        f" {DEMO_LOOKAHEAD_HOURS:g} h; {r.scored['above_threshold']} at or above the alert"
        f" threshold {r.scored['alert_threshold']:.3f}",
        f"  emails      {emails} sent, {a.get('totals', {}).get('holdout', 0)} held out (no email)"
        f" → {a['delivery']}",
        f"  time passes {r.now:%Y-%m-%d %H:%M} → {r.later:%Y-%m-%d %H:%M} UTC:"
        f" {r.outcomes['sessions_ended']} sessions ended, {r.outcomes['ratings_arrived']}"
        " ratings arrived (simulated)",
        f"  reconciled  {r.reconciled['reconciled']} predictions now carry their outcome",
    ]
    if live:
        lines.append(
            f"  live        AUC {_fmt(live['auc_roc'])}, precision {_fmt(live['precision'])},"
            f" recall {_fmt(live['recall'])} on {live['sample_size']} rated sessions"
        )
    if drift:
        lines.append(
            f"  drift       {drift['drifted_columns_count']} of 13 features drifted"
            f" ({drift['drift_share']:.0%}; retrain above {drift['drift_share_threshold']:.0%})"
        )
    lines.append(
        "  retrain     "
        + (
            "not needed"
            if not m["retrain_reasons"]
            else "; ".join(m["retrain_reasons"]) + f" → {m['retrain']}"
        )
    )
    for kind, rep in m["reports"].items():
        lines.append(f"  report      {kind}: {rep['html']} ({_mb(rep.get('html_bytes'))})")
    if r.outbox is not None:
        files = sorted(r.outbox.glob("*.eml"))
        if files:
            lines.append(f"  an email    {files[0]}")
    lines.append("  timings     " + ", ".join(f"{k} {v:g} s" for k, v in r.timings.items()))
    return lines + hint_lines(where_things_are(settings, r.outbox))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _bento_line(bento: dict[str, Any]) -> str:
    if "skipped" in bento:
        return f"not built: {bento['skipped']}"
    tag = bento.get("bento_tag") or bento.get("tag") or "built"
    where = bento.get("bento_path")
    return f"{tag} (serve it: fsp serve)" + (f"  {where}" if where else "")


def where_things_are(settings: Settings, outbox: Path | None) -> dict[str, str]:
    """The stores and folders this run really used, read from the live settings (the
    user's PREFECT_HOME, PREFECT_API_URL or MLFLOW_TRACKING_URI win over the defaults)."""
    places = {
        "mlflow_ui": f"mlflow ui --backend-store-uri {settings.resolved_mlflow_uri}",
        "prefect_ui": prefect_ui_hint(),
        "reports": str(settings.reports_dir.resolve()),
    }
    if outbox is not None:
        places["outbox"] = str(outbox.resolve())
    return places


def prefect_ui_hint() -> str:
    """How to see the flow runs: the server they were sent to, or the command that
    serves the ephemeral API's database they were recorded in."""
    from prefect.settings import get_current_settings

    prefect = get_current_settings()
    if prefect.api.url:
        return f"{prefect.ui_url or prefect.api.url} (the Prefect server the runs were sent to)"
    database = prefect.server.database.connection_url
    url = database.get_secret_value() if database else ""
    env = f"PREFECT_HOME={prefect.home}"
    if url != f"sqlite+aiosqlite:///{prefect.home}/prefect.db":
        env += f" PREFECT_SERVER_DATABASE_CONNECTION_URL='{url}'"
    ui = prefect.server.ui.api_url or "http://127.0.0.1:4200/api"
    return f"{env} prefect server start  (then {ui.removesuffix('/api')})"


def hint_lines(places: dict[str, str]) -> list[str]:
    """The closing hints: where to look at what the run did."""
    lines = [f"  MLflow UI   {places['mlflow_ui']}", f"  Prefect UI  {places['prefect_ui']}"]
    if "outbox" in places:
        lines.append(f"  outbox      {places['outbox']}")
    return [*lines, f"  reports     {places['reports']}"]


def demo_json(r: DemoResult, settings: Settings) -> dict[str, Any]:
    """The demo's result for scripts: every step's own result and where things are."""
    return {
        "seconds": round(r.seconds, 1),
        "now": r.now.isoformat(),
        "later": r.later.isoformat(),
        "generated": r.generated,
        "platform": r.platform,
        "champion": r.champion,
        "bento": r.bento,
        "scored": r.scored,
        "alerts": r.alerts,
        "outcomes": r.outcomes,
        "reconciled": r.reconciled,
        "monitored": r.monitored,
        "timings": r.timings,
        "places": where_things_are(settings, r.outbox),
    }


def run_demo(settings: Settings, as_json: bool = False, step: Step = _no_progress) -> None:
    """`fsp demo`: run the loop (each step inside `step`) and print the summary."""
    result = run_loop(settings, step)
    if as_json:
        print(json.dumps(demo_json(result, settings), indent=2, default=str))
    else:
        print("\n".join(summary_lines(result, settings)))
