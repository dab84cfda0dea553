"""The email a session would get, rendered now from its stored prediction: what
`fsp preview SESSION_ID` prints, for a person checking the words before tutors do.

Reads only (nothing is queued, claimed or marked) and never tracks: the preview's
links lead straight to the platform and it carries no open-tracking image, so
opening it in a browser counts as nobody's open."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import psycopg

from alerting.queue import with_records
from alerting.render import LinkPolicy, letter_facts, message_id_for, render
from fsp.errors import FspError
from fsp.features import read_frame
from fsp.settings import Settings


class UnknownSession(FspError):
    """A session id with no stored prediction (never scored, or mistyped)."""


PREDICTION = """
SELECT p.session_id, p.tutor_id, t.name AS tutor_name, t.email AS recipient,
       p.scheduled_start, p.subject, p.risk_level, p.risk_score, p.risk_probability,
       p.model_version, p.top_risk_factors, p.features, p.prediction_date,
       coalesce(st.timezone, 'UTC') AS timezone
FROM fsp.first_session_predictions p
LEFT JOIN platform.tutors t ON t.tutor_id = p.tutor_id
LEFT JOIN platform.students st ON st.student_id = p.student_id
WHERE p.session_id = %(id)s AND p.scheduled_start IS NOT NULL
"""


def preview_row(conn: psycopg.Connection, session_id: str) -> dict[str, Any]:
    """The stored prediction of `session_id` with the tutor's record as of its scoring;
    UnknownSession when there is none."""
    frame: pd.DataFrame = with_records(conn, read_frame(conn, PREDICTION, {"id": session_id}))
    if frame.empty:
        raise UnknownSession(
            f"unknown session {session_id!r}: no stored prediction (score it first)"
        )
    return {str(k): v for k, v in frame.to_dict("records")[0].items()}


def preview_html(
    conn: psycopg.Connection,
    session_id: str,
    settings: Settings,
    now: datetime | None = None,
) -> str:
    """The HTML of the email `session_id` would get, as a letter of its own, rendered
    as of `now` (default: the clock; it only changes "starts in ...") from the stored
    prediction and the tutor's record as of the moment it was scored.

    `conn`: any connection to the fsp database (read only). Raises UnknownSession
    (an FspError: one line naming the session) when no prediction is stored for it."""
    row = preview_row(conn, session_id)
    sender = settings.smtp_from_email
    row["message_id"] = message_id_for(session_id, sender)
    links = LinkPolicy(track=False, session_url_template=settings.session_url_template)
    return render(letter_facts([row], now or datetime.now(UTC), sender, links)).html
