"""One alerts run, without Prefect: settle what a stopped run left, take on new
high-risk sessions, render every due email, deliver them, and say what happened.

Due sessions are grouped into one letter per tutor (and address). Order matters:
every letter of the batch is rendered BEFORE the first is sent, so a template error
fails the run with nothing sent and nothing marked. The delivery state machine
(claims, leases, exactly once) is in `alerting.queue`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderDefect, HeaderParseError
from email.message import EmailMessage
from typing import Any

import pandas as pd
import psycopg
from jinja2 import Environment

from alerting import queue
from alerting.delivery import DeliveryFailed, Mailer
from alerting.headers import InvalidRecipient
from alerting.render import LinkPolicy, compose, compose_letter, environment
from fsp.settings import Settings

log = logging.getLogger(__name__)

SET_ASIDE = (InvalidRecipient, HeaderParseError, HeaderDefect)
"""Errors that set one email aside (its data cannot make a safe message); any other
error while rendering is a template fault and stops the batch."""


def wall_clock() -> datetime:
    """The real time: retries, leases and 'sent at' are about it, not the business `now`."""
    return datetime.now(UTC)


def link_policy(settings: Settings) -> LinkPolicy:
    """Where the emails' links lead and whether opens and clicks are tracked."""
    return LinkPolicy(
        track=settings.track_opens,
        base_url=settings.public_base_url,
        session_url_template=settings.session_url_template,
    )


@dataclass(frozen=True)
class Letter:
    """One rendered email to one tutor, and the due rows it was rendered from (kept
    to re-render it for the sessions a claim actually got)."""

    session_ids: tuple[str, ...]
    message: EmailMessage
    rows: tuple[dict[str, Any], ...]


@dataclass
class Batch:
    """Rendered letters, and sessions that can never be emailed (with why)."""

    letters: list[Letter] = field(default_factory=list)
    undeliverable: dict[str, str] = field(default_factory=dict)

    @property
    def messages(self) -> dict[str, EmailMessage]:
        """Each rendered session's email (sessions of one letter share it)."""
        return {sid: letter.message for letter in self.letters for sid in letter.session_ids}


def _records(due: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in raw.items()} for raw in due.to_dict("records")]


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Due rows by (tutor, address): one letter each, in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (str(row.get("tutor_id") or row["session_id"]), str(row["recipient"]))
        groups.setdefault(key, []).append(row)
    return groups


def _renderable(
    rows: list[dict[str, Any]], now: datetime, sender: str, env: Environment, links: LinkPolicy
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rows that make a safe email on their own, and the others with why: one bad
    value (an address, a header) sets aside its session, not the tutor's other ones."""
    good: list[dict[str, Any]] = []
    bad: dict[str, str] = {}
    for row in rows:
        try:
            compose(row, now, sender, env, links)
        except SET_ASIDE as exc:
            bad[str(row["session_id"])] = str(exc)
            log.warning("alert for session %s set aside: %s", row["session_id"], exc)
            continue
        good.append(row)
    return good, bad


def render_batch(
    due: pd.DataFrame, now: datetime, sender: str, links: LinkPolicy | None = None
) -> Batch:
    """Render every due letter. A bad recipient address or header value only sets that
    session aside; a template error propagates and stops the whole batch."""
    batch, env, links = Batch(), environment(), links or LinkPolicy()
    rows = _records(due)
    for row in rows:
        if not row.get("recipient"):
            batch.undeliverable[str(row["session_id"])] = "the tutor has no email address"
    for group in _groups([r for r in rows if r.get("recipient")]).values():
        good, bad = _renderable(group, now, sender, env, links)
        batch.undeliverable.update(bad)
        if good:
            letter, message = compose_letter(good, now, sender, env, links)
            batch.letters.append(Letter(letter.session_ids, message, tuple(good)))
    return batch


def _message_for(claim: queue.Claim, letter: Letter, now: datetime, sender: str, links) -> Any:
    """The letter as rendered, or re-rendered for the sessions the claim got (another
    run holds the rest, or they stopped qualifying since rendering)."""
    if claim.session_ids == tuple(sorted(letter.session_ids)):
        return letter.message
    rows = [r for r in letter.rows if str(r["session_id"]) in claim.session_ids]
    log.info("letter re-rendered for %d of its %d sessions", len(rows), len(letter.rows))
    return compose_letter(rows, now, sender, None, links)[1]


@dataclass
class Delivery:
    """What `deliver` did, in emails and in sessions."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("emails_sent", "sent", "retry_later", "failed", "undeliverable"), 0
        )
    )


def _send_one(
    conn: psycopg.Connection,
    mailer: Mailer,
    claim: queue.Claim,
    message: EmailMessage,
    settings: Settings,
    wall_now: datetime,
    clock: Callable[[], datetime],
    counts: dict[str, int],
) -> bool:
    """Send one claimed letter and record the outcome; False when the relay is down."""
    try:
        mailer.send(message)
    except DeliveryFailed as exc:
        settled = queue.mark_failed_attempt(
            conn,
            claim,
            exc.reason,
            wall_now,
            max_attempts=settings.alert_max_attempts,
            backoff_seconds=settings.alert_backoff_seconds,
            uncertain=exc.uncertain,
        )
        counts["retry_later"] += settled.get("pending", 0)
        counts["failed"] += settled.get("failed", 0)
        log.warning("email %s not delivered (%s): %s", claim.message_id, settled, exc.reason)
        return not exc.relay_down
    queue.mark_sent(conn, claim.session_ids, clock())
    counts["emails_sent"] += 1
    counts["sent"] += len(claim.session_ids)
    return True


def deliver(
    conn: psycopg.Connection,
    mailer: Mailer,
    batch: Batch,
    settings: Settings,
    wall_now: datetime,
    clock: Callable[[], datetime] = wall_clock,
    now: datetime | None = None,
) -> dict[str, int]:
    """Claim, send and record each letter of the batch, one at a time; given the run's
    `now`, a session that has started by then is never claimed.

    Stops early when the relay is down: the rest stay pending, attempts untouched.
    `conn` must be in autocommit mode so that each claim is committed before its
    email leaves (that commit is what keeps a concurrent run away from it)."""
    if not conn.autocommit:
        raise ValueError("deliver() needs an autocommit connection (each claim must commit)")
    counts = Delivery().counts
    for session_id, reason in batch.undeliverable.items():
        queue.mark_undeliverable(conn, session_id, reason)
        counts["undeliverable"] += 1
    sender, links = settings.smtp_from_email, link_policy(settings)
    for letter in batch.letters:
        targets = {sid: links.target(sid) for sid in letter.session_ids}
        claim = queue.claim_letter(conn, wall_now, list(letter.session_ids), sender, now, targets)
        if claim is None:
            log.info("letter %s: nothing left to claim (another run or stale)", letter.session_ids)
            continue
        try:
            message = _message_for(claim, letter, now or wall_now, sender, links)
        except Exception:
            queue.mark_failed_attempt(
                conn,
                claim,
                "re-rendering failed",
                wall_now,
                max_attempts=settings.alert_max_attempts,
                backoff_seconds=settings.alert_backoff_seconds,
            )
            raise
        if not _send_one(conn, mailer, claim, message, settings, wall_now, clock, counts):
            log.warning("relay down: the rest of the batch waits for the next run")
            break
    return counts


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
    totals: dict[str, int],
    emails_total: int,
) -> dict[str, Any]:
    """What an alerts run did, where every delivery stands now (`totals`: sessions per
    state) and how many emails have been sent in all (`emails_total`)."""
    return {
        "now": now.isoformat(),
        "delivery": mailer.describe(),
        **queued,
        "cancelled": cancelled,
        **{k: v for k, v in recovered.items() if v},
        **delivered,
        "totals": totals,
        "emails_total": emails_total,
    }


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
    due = queue.due_alerts(conn, wall_now)
    batch = render_batch(due, now, settings.smtp_from_email, link_policy(settings))
    delivered = deliver(conn, mailer, batch, settings, wall_now, now=now)
    totals, emails_total = queue.status_counts(conn), queue.letters_sent(conn)
    return summarize(now, mailer, recovered, queued, cancelled, delivered, totals, emails_total)
