"""Alert delivery state in PostgreSQL (fsp.alert_deliveries): exactly one email per
high-risk session, whatever crashes, reruns or concurrent runs happen.

The state machine (one row per session):

    enqueue ──► holdout                       (deterministic share, no email, final)
           └──► pending ──claim──► sending ──► sent        (+ prediction.alert_sent)
                   ▲                  │  └───► failed      (max attempts / uncertain)
                   └──── back-off ◄───┘
                pending ──► cancelled  (session started, left the platform /
                                         no longer high-risk, start out of range)

- A row is claimed for sending by ONE run: `UPDATE ... WHERE session_id = (SELECT
  ... FOR UPDATE SKIP LOCKED LIMIT 1)` flips it to `sending` and commits before
  the message leaves, so a concurrent run never picks it up again.
- Each row carries a deterministic Message-ID. A run that died between sending
  and recording leaves the row in `sending`; once its lease has expired the next
  run asks the mailer whether that Message-ID was delivered: the outbox can tell
  (the file is named after it) and the row is settled as sent or retried; an
  SMTP relay cannot, so the row is marked failed as "delivery uncertain" and is
  NOT resent (at-most-once: a tutor never gets the same email twice).
- A certain failure (relay down, refused) goes back to pending with exponential
  back-off; after the configured number of attempts it is failed, visibly.

Only sessions the platform holds are emailed: a prediction is taken on, rendered and
claimed only while platform.sessions has it as a scheduled first session of the same
tutor starting after `now` (whatever fsp.first_session_predictions holds: the API
or an older version may have stored rows of sessions that do not exist).

Times: eligibility ("is the session still upcoming?") uses the flow's `now`;
retries and leases use the wall clock (`wall_now`), passed in so tests control it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import psycopg

from alerting.render import message_id_for
from fsp.constants import EARLIEST_START, LATEST_START
from fsp.features import read_frame

HOLDOUT_BUCKETS = 10_000
UNCERTAIN_AFTER_CRASH = (
    "delivery uncertain: the run sending it stopped before recording the result and the"
    " relay cannot be asked; not resent so that the tutor never gets it twice"
)

_RANGE = {"earliest": EARLIEST_START, "latest": LATEST_START}
IN_RANGE = "p.scheduled_start >= %(earliest)s AND p.scheduled_start < %(latest)s"

PLATFORM_SESSION = (
    "platform.sessions s ON s.session_id = p.session_id AND s.tutor_id = p.tutor_id"
    " AND s.is_first_session"
)
"""The platform's first session of the prediction's own tutor. The alerts flow emails
only sessions the platform holds as scheduled first sessions starting after `now`
(README.md, "What the API may write"), whatever rows fsp holds."""

STILL_SCHEDULED = (
    "s.status = 'scheduled' AND s.scheduled_start > %(now)s AND s.scheduled_start < %(latest)s"
)

CANDIDATES = f"""
FROM fsp.first_session_predictions p
LEFT JOIN {PLATFORM_SESSION}
LEFT JOIN platform.tutors t ON t.tutor_id = p.tutor_id
LEFT JOIN fsp.alert_deliveries d ON d.session_id = p.session_id
WHERE d.session_id IS NULL AND NOT p.alert_sent
  AND p.alert_threshold IS NOT NULL AND p.risk_probability >= p.alert_threshold
  AND p.scheduled_start > %(now)s
"""
"""High-risk predictions of upcoming sessions that no delivery row has taken on yet."""

ELIGIBLE = f"""
SELECT p.session_id, p.tutor_id, t.email AS recipient, p.risk_probability,
       p.alert_threshold, p.model_version
{CANDIDATES}
  AND {IN_RANGE} AND {STILL_SCHEDULED}
ORDER BY p.session_id
"""

SKIPPED = f"""
SELECT count(*) FILTER (WHERE NOT ({IN_RANGE})),
       count(*) FILTER (WHERE {IN_RANGE} AND s.session_id IS NULL),
       count(*) FILTER (WHERE {IN_RANGE} AND s.session_id IS NOT NULL
                          AND NOT ({STILL_SCHEDULED}))
{CANDIDATES}
"""
SKIP_REASONS = (
    "skipped_start_out_of_range",
    "skipped_not_on_platform",
    "skipped_not_scheduled",
)
"""Why the other candidates get no email (counted per run; they stay candidates, so a
session the platform books later, or a re-scored start, becomes eligible)."""

DUE = f"""
SELECT d.session_id, d.message_id, d.recipient, d.attempts, p.tutor_id, t.name AS tutor_name,
       p.scheduled_start, p.subject, p.risk_level, p.risk_score, p.risk_probability,
       p.model_version, p.top_risk_factors, p.features, st.timezone
FROM fsp.alert_deliveries d
JOIN fsp.first_session_predictions p ON p.session_id = d.session_id
JOIN {PLATFORM_SESSION} AND s.status = 'scheduled'
LEFT JOIN platform.tutors t ON t.tutor_id = p.tutor_id
LEFT JOIN platform.students st ON st.student_id = p.student_id
WHERE d.status = 'pending' AND d.next_attempt_at <= %(wall)s AND {IN_RANGE}
ORDER BY d.next_attempt_at, d.session_id
"""
"""Pending deliveries that are due, of sessions the platform still holds as scheduled
first sessions (cancel_stale, which runs first, has already cancelled those that
started, left the platform or fell out of range)."""


def holdout_bucket(session_id: str) -> float:
    """A stable number in [0, 1) per session id (same on every machine and run)."""
    digest = hashlib.sha256(f"fsp-holdout:{session_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % HOLDOUT_BUCKETS) / HOLDOUT_BUCKETS


def in_holdout(session_id: str, share: float) -> bool:
    """True for the deterministic `share` of sessions that get no email."""
    return holdout_bucket(session_id) < share


def enqueue(
    conn: psycopg.Connection, now: datetime, wall_now: datetime, holdout_share: float, sender: str
) -> dict[str, int]:
    """Take on every newly high-risk upcoming session the platform holds as a scheduled
    first session: holdout or pending. Idempotent. The other candidates are counted
    by reason (SKIP_REASONS) in the answer."""
    params = {"now": now, **_RANGE}
    with conn.transaction():
        skipped = dict(
            zip(SKIP_REASONS, conn.execute(SKIPPED, params).fetchone() or (), strict=True)
        )
        rows = read_frame(conn, ELIGIBLE, params)
        if rows.empty:
            return {"enqueued": 0, "holdout": 0, **skipped}
        holdout = [in_holdout(s, holdout_share) for s in rows["session_id"]]
        records = [
            (
                str(r["session_id"]),
                str(r["tutor_id"]),
                r["recipient"],
                message_id_for(str(r["session_id"]), sender),
                "holdout" if held else "pending",
                float(r["risk_probability"]),
                float(r["alert_threshold"]),
                str(r["model_version"]),
                now,
                wall_now,
            )
            for r, held in zip(rows.to_dict("records"), holdout, strict=True)
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fsp.alert_deliveries (session_id, tutor_id, recipient, message_id,"
                " status, risk_probability, alert_threshold, model_version, enqueued_for,"
                " next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (session_id) DO NOTHING",
                records,
            )
        held_ids = [r[0] for r in records if r[4] == "holdout"]
        if held_ids:
            conn.execute(
                "UPDATE fsp.first_session_predictions SET alert_holdout = true"
                " WHERE session_id = ANY(%s) AND NOT alert_holdout",
                (held_ids,),
            )
    return {"enqueued": len(records) - len(held_ids), "holdout": len(held_ids), **skipped}


CANCEL_STALE = f"""
UPDATE fsp.alert_deliveries d SET status = 'cancelled', updated_at = now(),
  last_error = CASE
    WHEN NOT ({IN_RANGE}) THEN 'scheduled_start out of range (not a real session start)'
    WHEN s.session_id IS NULL THEN 'session not on the platform as a first session of this tutor'
    WHEN s.status <> 'scheduled' THEN 'session no longer scheduled on the platform: ' || s.status
    WHEN p.scheduled_start <= %(now)s OR s.scheduled_start <= %(now)s
      THEN 'session started before the alert could be delivered'
    ELSE 'no longer above the alert threshold after re-scoring' END
FROM fsp.first_session_predictions p
LEFT JOIN {PLATFORM_SESSION}
WHERE p.session_id = d.session_id AND d.status = 'pending'
  AND (NOT ({IN_RANGE}) OR s.session_id IS NULL OR s.status <> 'scheduled'
       OR p.scheduled_start <= %(now)s OR s.scheduled_start <= %(now)s
       OR p.risk_probability < p.alert_threshold)
"""


def cancel_stale(conn: psycopg.Connection, now: datetime) -> int:
    """Pending alerts are cancelled, with the reason, when their session has started,
    left the platform (or is no longer a scheduled first session of that tutor there),
    has a start out of range, or re-scoring took it below the threshold (an email
    after the start, or about a session the platform does not hold, is no use)."""
    with conn.transaction():
        return conn.execute(CANCEL_STALE, {"now": now, **_RANGE}).rowcount


def due_alerts(conn: psycopg.Connection, wall_now: datetime) -> pd.DataFrame:
    """Pending deliveries whose next attempt is due, with everything the email needs."""
    return read_frame(conn, DUE, {"wall": wall_now, **_RANGE})


@dataclass(frozen=True)
class Claim:
    """A delivery this run holds in `sending`."""

    session_id: str
    message_id: str
    attempts: int


def claim_next(
    conn: psycopg.Connection,
    wall_now: datetime,
    session_ids: list[str],
    now: datetime | None = None,
) -> Claim | None:
    """Atomically move one due row of `session_ids` to `sending` (committed), or None.

    Only a row whose session the platform still holds, at this moment, as a scheduled
    first session of the same tutor is claimed (and, given the run's `now`, one that
    starts after it; without it the run's cancel_stale has checked the start)."""
    starts_after = "AND s.scheduled_start > %(now)s" if now is not None else ""
    with conn.transaction():
        row = conn.execute(
            "UPDATE fsp.alert_deliveries SET status = 'sending', attempts = attempts + 1,"
            " claimed_at = %(wall)s, updated_at = now()"
            " WHERE session_id = (SELECT d.session_id FROM fsp.alert_deliveries d"
            "   JOIN fsp.first_session_predictions p ON p.session_id = d.session_id"
            f"  JOIN {PLATFORM_SESSION} AND s.status = 'scheduled' {starts_after}"
            "   WHERE d.status = 'pending' AND d.next_attempt_at <= %(wall)s"
            "   AND d.session_id = ANY(%(ids)s)"
            "   ORDER BY d.next_attempt_at, d.session_id FOR UPDATE OF d SKIP LOCKED LIMIT 1)"
            " RETURNING session_id, message_id, attempts",
            {"wall": wall_now, "ids": session_ids, "now": now},
        ).fetchone()
    return Claim(*row) if row else None


def mark_sent(conn: psycopg.Connection, session_id: str, wall_now: datetime) -> None:
    """Record a delivery on both the delivery row and the prediction, together."""
    with conn.transaction():
        conn.execute(
            "UPDATE fsp.alert_deliveries SET status = 'sent', sent_at = %(wall)s,"
            " last_error = NULL, updated_at = now()"
            " WHERE session_id = %(id)s AND status = 'sending'",
            {"wall": wall_now, "id": session_id},
        )
        conn.execute(
            "UPDATE fsp.first_session_predictions SET alert_sent = true,"
            " alert_sent_at = %(wall)s, updated_at = now()"
            " WHERE session_id = %(id)s AND NOT alert_sent",
            {"wall": wall_now, "id": session_id},
        )


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Exponential back-off after `attempts` failed tries: base, 2 base, 4 base, ..."""
    return timedelta(seconds=base_seconds * 2 ** max(0, attempts - 1))


def mark_failed_attempt(
    conn: psycopg.Connection,
    claim: Claim,
    reason: str,
    wall_now: datetime,
    *,
    max_attempts: int,
    backoff_seconds: float,
    uncertain: bool = False,
) -> str:
    """Back to pending with back-off, or failed for good; returns the new status."""
    if uncertain:
        status, error = "failed", f"delivery uncertain, not resent (at-most-once): {reason}"
    elif claim.attempts >= max_attempts:
        status, error = "failed", f"gave up after {claim.attempts} attempts: {reason}"
    else:
        status, error = "pending", reason
    with conn.transaction():
        conn.execute(
            "UPDATE fsp.alert_deliveries SET status = %(status)s, last_error = %(error)s,"
            " next_attempt_at = %(next)s, claimed_at = NULL, updated_at = now()"
            " WHERE session_id = %(id)s AND status = 'sending'",
            {
                "status": status,
                "error": error[:2000],
                "next": wall_now + backoff(claim.attempts, backoff_seconds),
                "id": claim.session_id,
            },
        )
    return status


def mark_undeliverable(conn: psycopg.Connection, session_id: str, reason: str) -> None:
    """A pending row that can never be sent (no or invalid address): failed, visibly."""
    with conn.transaction():
        conn.execute(
            "UPDATE fsp.alert_deliveries SET status = 'failed', last_error = %s,"
            " updated_at = now() WHERE session_id = %s AND status = 'pending'",
            (reason[:2000], session_id),
        )


def recover_interrupted(
    conn: psycopg.Connection,
    delivered: Any,
    wall_now: datetime,
    lease_seconds: float,
    max_attempts: int,
) -> dict[str, int]:
    """Settle rows left in `sending` by a run that stopped (its lease expired).

    `delivered(message_id)` answers True/False, or None when the transport cannot
    tell (SMTP): then the row is failed as uncertain rather than risk a duplicate."""
    counts = dict.fromkeys(
        ("recovered_sent", "recovered_retry", "recovered_failed", "recovered_uncertain"), 0
    )
    stale_before = wall_now - timedelta(seconds=lease_seconds)
    with conn.transaction():
        rows = conn.execute(
            "SELECT session_id, message_id, attempts FROM fsp.alert_deliveries"
            " WHERE status = 'sending' AND claimed_at <= %s"
            " ORDER BY session_id FOR UPDATE SKIP LOCKED",
            (stale_before,),
        ).fetchall()
        for session_id, message_id, attempts in rows:
            answer = delivered(message_id)
            if answer is True:
                _settle_sent(conn, session_id, wall_now)
                counts["recovered_sent"] += 1
            elif answer is False and attempts < max_attempts:
                _settle(conn, session_id, "pending", "interrupted before delivery; retrying")
                counts["recovered_retry"] += 1
            elif answer is False:
                _settle(conn, session_id, "failed", f"gave up after {attempts} attempts")
                counts["recovered_failed"] += 1
            else:
                _settle(conn, session_id, "failed", UNCERTAIN_AFTER_CRASH)
                counts["recovered_uncertain"] += 1
    return counts


def _settle(conn: psycopg.Connection, session_id: str, status: str, error: str) -> None:
    conn.execute(
        "UPDATE fsp.alert_deliveries SET status = %s, last_error = %s, claimed_at = NULL,"
        " updated_at = now() WHERE session_id = %s",
        (status, error, session_id),
    )


def _settle_sent(conn: psycopg.Connection, session_id: str, wall_now: datetime) -> None:
    conn.execute(
        "UPDATE fsp.alert_deliveries SET status = 'sent', sent_at = %s, last_error = NULL,"
        " updated_at = now() WHERE session_id = %s",
        (wall_now, session_id),
    )
    conn.execute(
        "UPDATE fsp.first_session_predictions SET alert_sent = true, alert_sent_at = %s,"
        " updated_at = now() WHERE session_id = %s AND NOT alert_sent",
        (wall_now, session_id),
    )


def status_counts(conn: psycopg.Connection) -> dict[str, int]:
    """How many deliveries are in each state (for summaries and dashboards)."""
    rows = conn.execute(
        "SELECT status, count(*) FROM fsp.alert_deliveries GROUP BY status ORDER BY status"
    ).fetchall()
    return {status: int(n) for status, n in rows}
