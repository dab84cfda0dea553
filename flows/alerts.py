"""The alerts flow (after each scoring): each tutor of high-risk upcoming first sessions
gets one preparation email listing them; a deterministic holdout share gets none.

A table of contents: each step is a small task over `alerting.dispatch` and
`alerting.queue`, where the logic lives. The run logs what it did and publishes a
markdown artifact (`fsp-alerts-summary`) with the emails sent, held out, failed and
undeliverable."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from alerting import dispatch, queue
from alerting.delivery import Mailer, make_mailer
from flows.common import parse_moment
from flows.retrying import RETRYING
from fsp.db import connect, connection, database_url
from fsp.settings import Settings, get_settings

ARTIFACT_KEY: Final = "fsp-alerts-summary"

# Kept importable from here for callers written before alerting.dispatch existed.
Batch = dispatch.Batch
deliver = dispatch.deliver
render_batch = dispatch.render_batch
run_alerts = dispatch.run_alerts
wall_clock = dispatch.wall_clock


@task(cache_policy=NO_CACHE, **RETRYING)
def recover_interrupted(settings: Settings, mailer: Mailer, wall_now: datetime) -> dict[str, int]:
    """Settle rows a crashed run left in `sending` (outbox: by file; SMTP: uncertain)."""
    with connection(settings) as conn:
        return dispatch.recover(conn, mailer, settings, wall_now)


@task(cache_policy=NO_CACHE, **RETRYING)
def enqueue_high_risk(settings: Settings, now: datetime, wall_now: datetime) -> dict[str, int]:
    """New high-risk upcoming sessions → holdout or pending (idempotent)."""
    with connection(settings) as conn:
        return queue.enqueue(
            conn, now, wall_now, settings.alert_holdout_share, settings.smtp_from_email
        )


@task(cache_policy=NO_CACHE, **RETRYING)
def cancel_stale_alerts(settings: Settings, now: datetime) -> int:
    """Pending alerts for sessions that started or stopped qualifying."""
    with connection(settings) as conn:
        return queue.cancel_stale(conn, now)


@task(cache_policy=NO_CACHE, **RETRYING)
def load_due(settings: Settings, wall_now: datetime) -> pd.DataFrame:
    """Pending deliveries that are due, with what each email needs."""
    with connection(settings) as conn:
        return queue.due_alerts(conn, wall_now)


@task(cache_policy=NO_CACHE)
def render_emails(due: pd.DataFrame, now: datetime, settings: Settings) -> dispatch.Batch:
    """All letters of the batch, rendered before any is sent (no retries: a template
    error is not transient)."""
    return dispatch.render_batch(due, now, settings.smtp_from_email, dispatch.link_policy(settings))


@task(cache_policy=NO_CACHE, **RETRYING)
def send_emails(
    settings: Settings, mailer: Mailer, batch: dispatch.Batch, wall_now: datetime, now: datetime
) -> dict[str, int]:
    """Claim-send-record each letter; a retry after a lost DB connection is safe
    (claimed rows stay `sending` until recovered, so nothing goes out twice)."""
    with connect(database_url(settings), autocommit=True) as conn:
        return dispatch.deliver(conn, mailer, batch, settings, wall_now, now=now)


@task(cache_policy=NO_CACHE, **RETRYING)
def delivery_totals(settings: Settings) -> tuple[dict[str, int], int]:
    """Sessions per delivery state after this run, and the emails sent in all."""
    with connection(settings) as conn:
        return queue.status_counts(conn), queue.letters_sent(conn)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The run's artifact: this run's figures, then where every delivery stands."""
    rows = [
        ("Emails sent", summary.get("emails_sent", 0)),
        ("Sessions alerted", summary.get("sent", 0)),
        ("Sessions held out (no email)", summary.get("holdout", 0)),
        ("Sessions failed for good", summary.get("failed", 0)),
        ("Sessions to retry later", summary.get("retry_later", 0)),
        ("Sessions undeliverable (address)", summary.get("undeliverable", 0)),
        ("Sessions cancelled (stale)", summary.get("cancelled", 0)),
    ]
    totals = summary.get("totals", {})
    lines = [
        f"# Alerts run as of {summary['now']}",
        "",
        f"Delivery: {summary['delivery']}; emails sent in all: {summary['emails_total']}",
        "",
        "| this run | count |",
        "| --- | ---: |",
        *(f"| {label} | {value} |" for label, value in rows),
        "",
        "| all deliveries by state | count |",
        "| --- | ---: |",
        *(f"| {state} | {n} |" for state, n in sorted(totals.items())),
    ]
    return "\n".join(lines)


@flow(name="fsp-alerts")
def alerts_flow(now: str | datetime | None = None) -> dict[str, Any]:
    """Email tutors of high-risk upcoming sessions that have no alert yet."""
    log = get_run_logger()
    settings = get_settings()
    moment = parse_moment(now)
    wall_now = dispatch.wall_clock()
    mailer = make_mailer(settings)
    log.info("alerts as of %s, delivering to %s", moment.isoformat(), mailer.describe())
    recovered = recover_interrupted(settings, mailer, wall_now)
    queued = enqueue_high_risk(settings, moment, wall_now)
    log.info("taken on: %s", queued)
    cancelled = cancel_stale_alerts(settings, moment)
    due = load_due(settings, wall_now)
    batch = render_emails(due, moment, settings)
    log.info("%d due session(s) → %d email(s)", len(due), len(batch.letters))
    delivered = send_emails(settings, mailer, batch, wall_now, moment)
    totals, emails_total = delivery_totals(settings)
    summary = dispatch.summarize(
        moment, mailer, recovered, queued, cancelled, delivered, totals, emails_total
    )
    log.info("delivered: %s; totals: %s", delivered, summary["totals"])
    create_markdown_artifact(
        key=ARTIFACT_KEY, markdown=summary_markdown(summary), description="Alerts run summary"
    )
    return summary
