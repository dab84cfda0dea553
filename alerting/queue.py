"""Alert delivery state in PostgreSQL (fsp.alert_deliveries): each high-risk session is
emailed at most once and, barring an uncertain relay, exactly once, whatever crashes,
reruns or concurrent runs happen. One email (a letter) may carry several sessions of
the same tutor; the state stays one row per session.

The state machine (one row per session):

    enqueue ──► holdout                       (deterministic share, no email, final)
           └──► pending ──claim──► sending ──► sent        (+ prediction.alert_sent)
                   ▲                  │  └───► failed      (max attempts / uncertain)
                   └──── back-off ◄───┘
                pending ──► cancelled  (session started, left the platform /
                                         no longer high-risk, start out of range)

- The rows of one letter are claimed together by ONE run: `SELECT ... FOR UPDATE
  SKIP LOCKED` over the letter's sessions, then one UPDATE flips those it got to
  `sending` with the letter's Message-ID, committed before the message leaves, so
  a concurrent run never picks them up again. Two runs racing for the same letter
  may split it (each claims, and sends, the rows it locked): never a session twice.
- Each letter has a deterministic Message-ID (letter_message_id: the session's own
  id for a letter of one), stored on its rows at claim time. A run that died
  between sending and recording leaves them in `sending`; once the lease has
  expired the next run asks the mailer whether that Message-ID was delivered: the
  outbox can tell (the file is named after it) and the rows are settled as sent or
  retried; an SMTP relay cannot, so they are failed as "delivery uncertain" and are
  NOT resent (at-most-once: a tutor never gets the same email twice).
- The holdout is decided per session at enqueue time, as before letters existed.
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
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import psycopg

from alerting.record import tutor_records
from alerting.render import letter_message_id, message_id_for
from fsp.constants import EARLIEST_START, LATEST_START
from fsp.features import read_frame

HOLDOUT_BUCKETS = 10_000
TOKEN_BYTES = 24
"""Random bytes of a tracking token (32 URL-safe characters)."""
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
SELECT d.session_id, d.message_id, d.recipient, d.attempts, d.tracking_token, p.tutor_id,
       t.name AS tutor_name, p.scheduled_start, p.subject, p.risk_level, p.risk_score,
       p.risk_probability, p.model_version, p.top_risk_factors, p.features, st.timezone,
       p.prediction_date
FROM fsp.alert_deliveries d
JOIN fsp.first_session_predictions p ON p.session_id = d.session_id
JOIN {PLATFORM_SESSION} AND s.status = 'scheduled'
LEFT JOIN platform.tutors t ON t.tutor_id = p.tutor_id
LEFT JOIN platform.students st ON st.student_id = p.student_id
WHERE d.status = 'pending' AND d.next_attempt_at <= %(wall)s AND {IN_RANGE}
ORDER BY d.next_attempt_at, d.session_id
"""  # noqa: S608  (SQL text from our own constants; values bound as parameters)
"""Pending deliveries that are due, of sessions the platform still holds as scheduled
first sessions (cancel_stale, which runs first, has already cancelled those that
started, left the platform or fell out of range)."""


def holdout_bucket(session_id: str) -> float:
    """A stable number in [0, 1) per session id (same on every machine and run)."""
    digest = hashlib.sha256(f"fsp-holdout:{session_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % HOLDOUT_BUCKETS) / HOLDOUT_BUCKETS


def new_token() -> str:
    """An unguessable tracking token: the only thing a tracking URL carries."""
    return secrets.token_urlsafe(TOKEN_BYTES)


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
                None if held else new_token(),
            )
            for r, held in zip(rows.to_dict("records"), holdout, strict=True)
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fsp.alert_deliveries (session_id, tutor_id, recipient, message_id,"
                " status, risk_probability, alert_threshold, model_version, enqueued_for,"
                " next_attempt_at, tracking_token)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
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
"""  # noqa: S608  (SQL text from our own constants; values bound as parameters)


def cancel_stale(conn: psycopg.Connection, now: datetime) -> int:
    """Pending alerts are cancelled, with the reason, when their session has started,
    left the platform (or is no longer a scheduled first session of that tutor there),
    has a start out of range, or re-scoring took it below the threshold (an email
    after the start, or about a session the platform does not hold, is no use)."""
    with conn.transaction():
        return conn.execute(CANCEL_STALE, {"now": now, **_RANGE}).rowcount


def due_alerts(conn: psycopg.Connection, wall_now: datetime) -> pd.DataFrame:
    """Pending deliveries whose next attempt is due, with everything the email needs:
    `record` is the tutor's record as of the moment the session was scored."""
    due = read_frame(conn, DUE, {"wall": wall_now, **_RANGE})
    return with_records(conn, due)


def with_records(conn: psycopg.Connection, rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (tutor_id, prediction_date) with a `record` column (None when unknown)."""
    rows = rows.copy()
    if rows.empty:
        rows["record"] = pd.Series(dtype=object)
        return rows
    asked = list(zip(rows["tutor_id"].astype(str), rows["prediction_date"], strict=True))
    records = tutor_records(conn, asked)
    rows["record"] = pd.Series([records.get(key) for key in asked], index=rows.index, dtype=object)
    return rows


@dataclass(frozen=True)
class Claim:
    """The deliveries of one letter this run holds in `sending`."""

    session_ids: tuple[str, ...]
    message_id: str
    attempts: int

    @property
    def session_id(self) -> str:
        """The first session of the letter (a letter of one: its session)."""
        return self.session_ids[0]


CLAIMABLE = f"""
SELECT d.session_id FROM fsp.alert_deliveries d
JOIN fsp.first_session_predictions p ON p.session_id = d.session_id
JOIN {PLATFORM_SESSION} AND s.status = 'scheduled' {{starts_after}}
WHERE d.status = 'pending' AND d.next_attempt_at <= %(wall)s AND d.session_id = ANY(%(ids)s)
ORDER BY d.session_id FOR UPDATE OF d SKIP LOCKED
"""  # noqa: S608  (SQL text from our own constants; values bound as parameters)


def claim_letter(
    conn: psycopg.Connection,
    wall_now: datetime,
    session_ids: list[str],
    sender: str,
    now: datetime | None = None,
    targets: dict[str, str] | None = None,
) -> Claim | None:
    """Atomically move every claimable row of `session_ids` (one letter) to `sending`
    under the letter's Message-ID (committed), or None when none is claimable.
    `targets`: where each session's tracked link leads (kept for the redirect).

    Only a row whose session the platform still holds, at this moment, as a scheduled
    first session of the same tutor is claimed (and, given the run's `now`, one that
    starts after it); a row another run holds locked is skipped, never waited for."""
    starts_after = "AND s.scheduled_start > %(now)s" if now is not None else ""
    params = {"wall": wall_now, "ids": list(session_ids), "now": now}
    with conn.transaction():
        got = [r[0] for r in conn.execute(CLAIMABLE.format(starts_after=starts_after), params)]
        if not got:
            return None
        message_id = letter_message_id(got, sender)
        rows = conn.execute(
            "UPDATE fsp.alert_deliveries SET status = 'sending', attempts = attempts + 1,"
            " claimed_at = %(wall)s, letter_message_id = %(mid)s, updated_at = now()"
            " WHERE session_id = ANY(%(got)s) RETURNING attempts",
            {"wall": wall_now, "mid": message_id, "got": got},
        ).fetchall()
        if targets:
            _keep_targets(conn, {sid: targets[sid] for sid in got if sid in targets})
    return Claim(tuple(sorted(got)), message_id, max(int(r[0]) for r in rows))


def _keep_targets(conn: psycopg.Connection, targets: dict[str, str]) -> None:
    conn.execute(
        "UPDATE fsp.alert_deliveries d SET click_target = t.target"
        " FROM unnest(%s::text[], %s::text[]) AS t(session_id, target)"
        " WHERE d.session_id = t.session_id",
        (list(targets), list(targets.values())),
    )


def claim_next(
    conn: psycopg.Connection,
    wall_now: datetime,
    session_ids: list[str],
    now: datetime | None = None,
    sender: str = "alerts@localhost",
) -> Claim | None:
    """Claim the first claimable row of `session_ids` as a letter of one, or None."""
    for session_id in sorted(session_ids):
        claim = claim_letter(conn, wall_now, [session_id], sender, now)
        if claim is not None:
            return claim
    return None


SENT_SQL = (
    "UPDATE fsp.alert_deliveries SET status = 'sent', sent_at = %(wall)s,"
    " last_error = NULL, updated_at = now()"
    " WHERE session_id = ANY(%(ids)s) AND status = 'sending'"
)
PREDICTION_SENT_SQL = (
    "UPDATE fsp.first_session_predictions SET alert_sent = true,"
    " alert_sent_at = %(wall)s, updated_at = now()"
    " WHERE session_id = ANY(%(ids)s) AND NOT alert_sent"
)


def mark_sent(
    conn: psycopg.Connection, session_ids: str | tuple[str, ...] | list[str], wall_now: datetime
) -> None:
    """Record a delivery on the letter's rows and their predictions, together."""
    ids = [session_ids] if isinstance(session_ids, str) else list(session_ids)
    with conn.transaction():
        conn.execute(SENT_SQL, {"wall": wall_now, "ids": ids})
        conn.execute(PREDICTION_SENT_SQL, {"wall": wall_now, "ids": ids})


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """Exponential back-off after `attempts` failed tries: base, 2 base, 4 base, ..."""
    return timedelta(seconds=base_seconds * 2 ** max(0, attempts - 1))


FAILED_ATTEMPT = """
UPDATE fsp.alert_deliveries SET
  status = CASE WHEN %(uncertain)s OR attempts >= %(max)s THEN 'failed' ELSE 'pending' END,
  last_error = left(CASE
    WHEN %(uncertain)s THEN 'delivery uncertain, not resent (at-most-once): ' || %(reason)s
    WHEN attempts >= %(max)s THEN 'gave up after ' || attempts || ' attempts: ' || %(reason)s
    ELSE %(reason)s END, 2000),
  next_attempt_at = %(wall)s + %(base)s * interval '1 second' * power(2, greatest(attempts - 1, 0)),
  claimed_at = NULL, updated_at = now()
WHERE session_id = ANY(%(ids)s) AND status = 'sending'
RETURNING status
"""
"""A failed send of a letter, per row: back to pending with exponential back-off
(see `backoff`), or failed for good after max attempts or when uncertain."""


def mark_failed_attempt(
    conn: psycopg.Connection,
    claim: Claim,
    reason: str,
    wall_now: datetime,
    *,
    max_attempts: int,
    backoff_seconds: float,
    uncertain: bool = False,
) -> dict[str, int]:
    """Settle each row of a letter whose send failed; returns rows per new status."""
    params = {
        "uncertain": uncertain,
        "max": max_attempts,
        "reason": reason,
        "wall": wall_now,
        "base": backoff_seconds,
        "ids": list(claim.session_ids),
    }
    with conn.transaction():
        rows = conn.execute(FAILED_ATTEMPT, params).fetchall()
    counts: dict[str, int] = {}
    for (status,) in rows:
        counts[status] = counts.get(status, 0) + 1
    return counts


def mark_undeliverable(conn: psycopg.Connection, session_id: str, reason: str) -> None:
    """A pending row that can never be sent (no or invalid address): failed, visibly."""
    with conn.transaction():
        conn.execute(
            "UPDATE fsp.alert_deliveries SET status = 'failed', last_error = %s,"
            " updated_at = now() WHERE session_id = %s AND status = 'pending'",
            (reason[:2000], session_id),
        )


RECOVERY_KEYS = ("recovered_sent", "recovered_retry", "recovered_failed", "recovered_uncertain")


def recover_interrupted(
    conn: psycopg.Connection,
    delivered: Callable[[str], bool | None],
    wall_now: datetime,
    lease_seconds: float,
    max_attempts: int,
) -> dict[str, int]:
    """Settle rows left in `sending` by a run that stopped (its lease expired), letter
    by letter: `delivered(message_id)` answers True/False, or None when the transport
    cannot tell (SMTP): then the rows are failed as uncertain rather than risk a
    duplicate. Counts are of rows (sessions)."""
    counts = dict.fromkeys(RECOVERY_KEYS, 0)
    stale_before = wall_now - timedelta(seconds=lease_seconds)
    with conn.transaction():
        rows = conn.execute(
            "SELECT session_id, coalesce(letter_message_id, message_id), attempts"
            " FROM fsp.alert_deliveries WHERE status = 'sending' AND claimed_at <= %s"
            " ORDER BY session_id FOR UPDATE SKIP LOCKED",
            (stale_before,),
        ).fetchall()
        letters: dict[str, list[tuple[str, int]]] = {}
        for session_id, message_id, attempts in rows:
            letters.setdefault(message_id, []).append((session_id, int(attempts)))
        for message_id, members in letters.items():
            answer = delivered(message_id)
            for session_id, attempts in members:
                counts[
                    _settle_recovered(conn, session_id, attempts, answer, wall_now, max_attempts)
                ] += 1
    return counts


def _settle_recovered(
    conn: psycopg.Connection,
    session_id: str,
    attempts: int,
    answer: bool | None,
    wall_now: datetime,
    max_attempts: int,
) -> str:
    """One interrupted row settled by the mailer's answer; returns the counter's key."""
    if answer is True:
        _settle_sent(conn, session_id, wall_now)
        return "recovered_sent"
    if answer is False and attempts < max_attempts:
        _settle(conn, session_id, "pending", "interrupted before delivery; retrying")
        return "recovered_retry"
    if answer is False:
        _settle(conn, session_id, "failed", f"gave up after {attempts} attempts")
        return "recovered_failed"
    _settle(conn, session_id, "failed", UNCERTAIN_AFTER_CRASH)
    return "recovered_uncertain"


def _settle(conn: psycopg.Connection, session_id: str, status: str, error: str) -> None:
    conn.execute(
        "UPDATE fsp.alert_deliveries SET status = %s, last_error = %s, claimed_at = NULL,"
        " updated_at = now() WHERE session_id = %s",
        (status, error, session_id),
    )


def _settle_sent(conn: psycopg.Connection, session_id: str, wall_now: datetime) -> None:
    conn.execute(SENT_SQL, {"wall": wall_now, "ids": [session_id]})
    conn.execute(PREDICTION_SENT_SQL, {"wall": wall_now, "ids": [session_id]})


def status_counts(conn: psycopg.Connection) -> dict[str, int]:
    """How many deliveries are in each state (for summaries and dashboards)."""
    rows = conn.execute(
        "SELECT status, count(*) FROM fsp.alert_deliveries GROUP BY status ORDER BY status"
    ).fetchall()
    return {status: int(n) for status, n in rows}


def letters_sent(conn: psycopg.Connection) -> int:
    """How many emails have been sent in all (a letter counts once, whatever it carried)."""
    row = conn.execute(
        "SELECT count(DISTINCT coalesce(letter_message_id, message_id))"
        " FROM fsp.alert_deliveries WHERE status = 'sent'"
    ).fetchone()
    return int(row[0]) if row else 0
