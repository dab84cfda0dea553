"""The alerts flow (after each scoring): tutors of high-risk upcoming sessions get one
preparation email each; a deterministic holdout share gets none.

Order matters: every due email of the batch is rendered BEFORE the first is sent,
so a template error fails the run with nothing sent and nothing marked. The
delivery state machine (exactly once) is in `alerting.queue`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderDefect, HeaderParseError
from email.message import EmailMessage
from typing import Any

import pandas as pd
import psycopg
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from alerting import queue
from alerting.delivery import DeliveryFailed, Mailer, make_mailer
from alerting.render import InvalidRecipient, compose, environment
from flows.common import parse_moment
from flows.retrying import RETRYING
from fsp.db import connect, connection, database_url
from fsp.settings import Settings, get_settings


def wall_clock() -> datetime:
    """The real time: retries, leases and 'sent at' are about it, not the business `now`."""
    return datetime.now(UTC)


@dataclass
class Batch:
    """Rendered emails by session id, and rows that can never be sent (with why)."""

    messages: dict[str, EmailMessage] = field(default_factory=dict)
    undeliverable: dict[str, str] = field(default_factory=dict)


def render_batch(due: pd.DataFrame, now: datetime, sender: str) -> Batch:
    """Render every due email. A bad recipient address only sets that row aside;
    a template error propagates and stops the whole batch."""
    batch = Batch()
    env = environment()
    for raw in due.to_dict("records"):
        row = {str(k): v for k, v in raw.items()}
        session_id = str(row["session_id"])
        if not row.get("recipient"):
            batch.undeliverable[session_id] = "the tutor has no email address"
            continue
        try:
            _, message = compose(row, now, sender, env)
        except (InvalidRecipient, HeaderParseError, HeaderDefect) as exc:
            batch.undeliverable[session_id] = str(exc)
            continue
        batch.messages[session_id] = message
    return batch


def deliver(
    conn: psycopg.Connection,
    mailer: Mailer,
    batch: Batch,
    settings: Settings,
    wall_now: datetime,
    clock: Callable[[], datetime] = wall_clock,
    now: datetime | None = None,
) -> dict[str, int]:
    """Claim, send and record each message of the batch, one at a time; given the
    run's `now`, a session that has started by then is never claimed.

    Stops early when the relay is down: the rest stay pending, attempts untouched.
    `conn` must be in autocommit mode so that each claim is committed before its
    email leaves (that commit is what keeps a concurrent run away from it)."""
    if not conn.autocommit:
        raise ValueError("deliver() needs an autocommit connection (each claim must commit)")
    counts = {"sent": 0, "retry_later": 0, "failed": 0, "undeliverable": 0}
    for session_id, reason in batch.undeliverable.items():
        queue.mark_undeliverable(conn, session_id, reason)
        counts["undeliverable"] += 1
    ids = list(batch.messages)
    while ids and (claim := queue.claim_next(conn, wall_now, ids, now=now)) is not None:
        try:
            mailer.send(batch.messages[claim.session_id])
        except DeliveryFailed as exc:
            status = queue.mark_failed_attempt(
                conn,
                claim,
                exc.reason,
                wall_now,
                max_attempts=settings.alert_max_attempts,
                backoff_seconds=settings.alert_backoff_seconds,
                uncertain=exc.uncertain,
            )
            counts["retry_later" if status == "pending" else "failed"] += 1
            if exc.relay_down:
                break
            continue
        queue.mark_sent(conn, claim.session_id, clock())
        counts["sent"] += 1
    return counts


def run_alerts(
    conn: psycopg.Connection,
    mailer: Mailer,
    settings: Settings,
    now: datetime,
    wall_now: datetime,
) -> dict[str, Any]:
    """The whole alerts step without Prefect (tests and concurrency checks call it)."""
    recovered = recover(conn, mailer, settings, wall_now)
    queued = queue.enqueue(
        conn, now, wall_now, settings.alert_holdout_share, settings.smtp_from_email
    )
    cancelled = queue.cancel_stale(conn, now)
    batch = render_batch(queue.due_alerts(conn, wall_now), now, settings.smtp_from_email)
    delivered = deliver(conn, mailer, batch, settings, wall_now, now=now)
    return summarize(now, mailer, recovered, queued, cancelled, delivered, conn)


def recover(
    conn: psycopg.Connection, mailer: Mailer, settings: Settings, wall_now: datetime
) -> dict[str, int]:
    """Settle deliveries a previous run left half-done (see alerting.queue)."""
    return queue.recover_interrupted(
        conn,
        mailer.was_delivered,
        wall_now,
        settings.alert_send_lease_seconds,
        settings.alert_max_attempts,
    )


def summarize(
    now: datetime,
    mailer: Mailer,
    recovered: dict[str, int],
    queued: dict[str, int],
    cancelled: int,
    delivered: dict[str, int],
    conn: psycopg.Connection,
) -> dict[str, Any]:
    """What an alerts run did, and where every delivery stands now."""
    return {
        "now": now.isoformat(),
        "delivery": mailer.describe(),
        **queued,
        "cancelled": cancelled,
        **{k: v for k, v in recovered.items() if v},
        **delivered,
        "totals": queue.status_counts(conn),
    }


@task(cache_policy=NO_CACHE, **RETRYING)
def recover_interrupted(settings: Settings, mailer: Mailer, wall_now: datetime) -> dict:
    """Settle rows a crashed run left in `sending` (outbox: by file; SMTP: uncertain)."""
    with connection(settings) as conn:
        return recover(conn, mailer, settings, wall_now)


@task(cache_policy=NO_CACHE, **RETRYING)
def enqueue_high_risk(settings: Settings, now: datetime, wall_now: datetime) -> dict:
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
def render_emails(due: pd.DataFrame, now: datetime, sender: str) -> Batch:
    """All emails of the batch, rendered before any is sent (no retries: a template
    error is not transient)."""
    return render_batch(due, now, sender)


@task(cache_policy=NO_CACHE, **RETRYING)
def send_emails(
    settings: Settings, mailer: Mailer, batch: Batch, wall_now: datetime, now: datetime
) -> dict:
    """Claim-send-record each message; a retry after a lost DB connection is safe
    (claimed rows stay `sending` until recovered, so nothing goes out twice)."""
    with connect(database_url(settings), autocommit=True) as conn:
        return deliver(conn, mailer, batch, settings, wall_now, now=now)


@task(cache_policy=NO_CACHE, **RETRYING)
def delivery_totals(settings: Settings) -> dict[str, int]:
    """Deliveries per state after this run."""
    with connection(settings) as conn:
        return queue.status_counts(conn)


@flow(name="fsp-alerts", log_prints=True)
def alerts_flow(now: str | datetime | None = None) -> dict[str, Any]:
    """Email tutors of high-risk upcoming sessions that have no alert yet."""
    settings = get_settings()
    moment = parse_moment(now)
    wall_now = wall_clock()
    mailer = make_mailer(settings)
    recovered = recover_interrupted(settings, mailer, wall_now)
    queued = enqueue_high_risk(settings, moment, wall_now)
    cancelled = cancel_stale_alerts(settings, moment)
    due = load_due(settings, wall_now)
    batch = render_emails(due, moment, settings.smtp_from_email)
    delivered = send_emails(settings, mailer, batch, wall_now, moment)
    return {
        "now": moment.isoformat(),
        "delivery": mailer.describe(),
        **queued,
        "cancelled": cancelled,
        **{k: v for k, v in recovered.items() if v},
        **delivered,
        "totals": delivery_totals(settings),
    }
