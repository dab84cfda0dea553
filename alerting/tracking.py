"""Open and click tracking of the alert emails: pure database functions that the
Bento's tracking endpoints call, and the figures the analytics report.

An email carries a 1×1 image `GET /api/first-session/t/{token}.gif` and links
`GET /api/first-session/r/{token}`; the token is a delivery's random
`tracking_token` (fsp.alert_deliveries), the only thing in the URL. An open counts
for the whole email (every session it lists); a click counts for the session whose
link it was, and also as an open (the image may have been blocked). Only the FIRST
open and click are stored: a repeated token changes nothing, and an unknown or
malformed one writes nothing at all (the endpoint answers the same image, or a
redirect to a safe page, either way)."""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime
from typing import Any, Final

import psycopg

from fsp.outcomes import Z_95

log = logging.getLogger(__name__)

TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{20,128}")
"""What a token can look like (secrets.token_urlsafe, or the migration's hex); anything
else is answered without a database query."""
SAFE_LANDING_PAGE: Final = "https://tutoring.example/"
"""Where a click with an unknown token leads unless the caller names the platform's
own page (pass `fallback=settings.platform_url`)."""

PIXEL_GIF: Final = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
"""A transparent 1×1 GIF: the same bytes for every token, known or not."""

OPEN_LETTER = """
UPDATE fsp.alert_deliveries SET first_opened_at = %(at)s, updated_at = now()
WHERE first_opened_at IS NULL AND letter_message_id = (
  SELECT letter_message_id FROM fsp.alert_deliveries WHERE tracking_token = %(token)s
)
"""
KNOWN = (
    "SELECT click_target FROM fsp.alert_deliveries"
    " WHERE tracking_token = %s AND letter_message_id IS NOT NULL"
)


def well_formed(token: Any) -> bool:
    """Whether `token` can be a tracking token at all (type, length, alphabet)."""
    return isinstance(token, str) and TOKEN_PATTERN.fullmatch(token) is not None


def record_open(conn: psycopg.Connection, token: str, at: datetime) -> bool:
    """Record the first open of the email carrying `token` (every session it lists).

    Returns True when the token belongs to an email that was sent (whether or not this
    is its first open), False for an unknown or malformed token, which writes nothing.
    `at` is the request's time (aware datetime)."""
    if not well_formed(token):
        return False
    with conn.transaction():
        if conn.execute(KNOWN, (token,)).fetchone() is None:
            return False
        conn.execute(OPEN_LETTER, {"token": token, "at": at})
    return True


def _safe_target(target: str | None, fallback: str) -> str:
    """The stored target when it is an http(s) URL, else the fallback page."""
    if target and target.startswith(("https://", "http://")):
        return target
    return fallback


def record_click(
    conn: psycopg.Connection, token: str, at: datetime, fallback: str = SAFE_LANDING_PAGE
) -> str:
    """Record the first click of the link carrying `token` (and the email's open), and
    return where to redirect: the session's page on the platform. An unknown or
    malformed token writes nothing and returns `fallback`."""
    if not well_formed(token):
        return fallback
    with conn.transaction():
        row = conn.execute(KNOWN, (token,)).fetchone()
        if row is None:
            return fallback
        conn.execute(
            "UPDATE fsp.alert_deliveries SET first_clicked_at = %(at)s, updated_at = now()"
            " WHERE tracking_token = %(token)s AND first_clicked_at IS NULL",
            {"token": token, "at": at},
        )
        conn.execute(OPEN_LETTER, {"token": token, "at": at})
    return _safe_target(row[0], fallback)


EMAIL_RATES = """
SELECT count(DISTINCT letter_message_id),
       count(DISTINCT letter_message_id) FILTER (WHERE first_opened_at IS NOT NULL),
       count(DISTINCT letter_message_id) FILTER (WHERE first_clicked_at IS NOT NULL),
       count(*), count(*) FILTER (WHERE first_clicked_at IS NOT NULL)
FROM fsp.alert_deliveries
WHERE status = 'sent' AND letter_message_id IS NOT NULL
  AND sent_at > %(since)s AND sent_at <= %(until)s
"""

OUTCOMES_BY_ARM = """
SELECT CASE WHEN d.status = 'holdout' THEN 'holdout'
            WHEN d.first_opened_at IS NOT NULL THEN 'alerted_opened'
            ELSE 'alerted_not_opened' END AS arm,
       count(*), count(*) FILTER (WHERE p.actual_poor_session)
FROM fsp.alert_deliveries d JOIN fsp.first_session_predictions p USING (session_id)
WHERE d.status IN ('sent', 'holdout') AND p.actual_poor_session IS NOT NULL
  AND p.scheduled_start > %(since)s AND p.scheduled_start <= %(until)s
GROUP BY 1
"""
ARMS: Final = ("alerted_opened", "alerted_not_opened", "holdout")


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _arm(poor: int, n: int) -> dict[str, Any]:
    return {"sessions": n, "poor": poor, "poor_rate": _share(poor, n)}


def _difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Poor-rate difference a - b with a 95 % Wald interval (None when an arm is empty)."""
    if not a["sessions"] or not b["sessions"]:
        return {"difference": None, "ci95": None}
    p_a, p_b = a["poor"] / a["sessions"], b["poor"] / b["sessions"]
    se = math.sqrt(p_a * (1 - p_a) / a["sessions"] + p_b * (1 - p_b) / b["sessions"])
    diff = p_a - p_b
    return {
        "difference": round(diff, 4),
        "ci95": [round(diff - Z_95 * se, 4), round(diff + Z_95 * se, 4)],
    }


def tracking_summary(conn: psycopg.Connection, since: datetime, until: datetime) -> dict[str, Any]:
    """Open and click rates of the emails sent in (since, until], and the poor-session
    rate of high-risk sessions that started in (since, until] and were rated, split
    into alerted-and-opened, alerted-not-opened and holdout, with each alerted arm's
    difference to the holdout (negative: better than no email).

    Opened-vs-not is not randomised (tutors who read their email may differ anyway):
    read it as a description, the alerted-vs-holdout comparison as the causal one."""
    row = conn.execute(EMAIL_RATES, {"since": since, "until": until}).fetchone()
    emails, opened, clicked, sessions, sessions_clicked = (int(v or 0) for v in row or (0,) * 5)
    found = {
        arm: (int(n), int(poor))
        for arm, n, poor in conn.execute(OUTCOMES_BY_ARM, {"since": since, "until": until})
    }
    arms = {arm: _arm(found.get(arm, (0, 0))[1], found.get(arm, (0, 0))[0]) for arm in ARMS}
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "emails_sent": emails,
        "emails_opened": opened,
        "emails_clicked": clicked,
        "open_rate": _share(opened, emails),
        "click_rate": _share(clicked, emails),
        "sessions_emailed": sessions,
        "sessions_clicked": sessions_clicked,
        "outcomes": arms,
        "opened_vs_holdout": _difference(arms["alerted_opened"], arms["holdout"]),
        "not_opened_vs_holdout": _difference(arms["alerted_not_opened"], arms["holdout"]),
    }
