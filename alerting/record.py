"""The tutor's track record as plain counts from the platform's tables, as of the moment
a session was scored: what the email states as fact.

The model's features smooth small samples toward the platform's typical values (a
tutor with 1 good first session out of 3 has a feature of about 0.7); that is right
for a model and wrong for a sentence addressed to a person. These counts follow the
feature code's point-in-time rule (an event counts once its whole second is before
the moment), so "3 rated first sessions" here is the feature's
`n_rated_first_sessions`, but the shares are the real ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from fsp.constants import POOR_RATING_BELOW

BEFORE = "ceil(extract(epoch FROM {event})) < floor(extract(epoch FROM a.as_of))"
"""An event counts when its second (rounded up) is strictly before the moment's (rounded
down): the same rule as the feature code."""

RECORDS = f"""
WITH asked AS (
  SELECT DISTINCT tutor_id, as_of
  FROM unnest(%(tutors)s::text[], %(moments)s::timestamptz[]) AS x(tutor_id, as_of)
)
SELECT a.tutor_id, a.as_of,
       floor(extract(epoch FROM a.as_of - t.onboarded_at) / 86400)::int AS tenure_days,
       r.first_rated, r.first_good, r.later_rated, r.later_sum,
       s.completed, s.rescheduled, s.no_show, e.score AS engagement, {{zone}} AS tutor_zone
FROM asked a
JOIN platform.tutors t ON t.tutor_id = a.tutor_id
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE x.is_first_session) AS first_rated,
         count(*) FILTER (WHERE x.is_first_session AND f.rating >= %(good)s) AS first_good,
         count(*) FILTER (WHERE NOT x.is_first_session) AS later_rated,
         coalesce(sum(f.rating) FILTER (WHERE NOT x.is_first_session), 0) AS later_sum
  FROM platform.sessions x JOIN platform.feedback f ON f.session_id = x.session_id
  WHERE x.tutor_id = a.tutor_id AND {BEFORE.format(event="f.submitted_at")}
) r
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE x.status = 'completed') AS completed,
         count(*) FILTER (WHERE x.status = 'rescheduled') AS rescheduled,
         count(*) FILTER (WHERE x.status = 'no_show') AS no_show
  FROM platform.sessions x
  WHERE x.tutor_id = a.tutor_id AND x.status IN ('completed', 'rescheduled', 'no_show')
    AND {BEFORE.format(event="x.scheduled_start + x.duration_minutes * interval '1 minute'")}
) s
LEFT JOIN LATERAL (
  SELECT g.score FROM platform.tutor_engagement g
  WHERE g.tutor_id = a.tutor_id
    AND ceil(extract(epoch FROM g.as_of)) <= floor(extract(epoch FROM a.as_of))
  ORDER BY g.as_of DESC LIMIT 1
) e ON true
"""  # noqa: S608  (SQL text from our own constants; values bound as parameters)

TUTOR_ZONE_COLUMN = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'platform' AND table_name = 'tutors'
                 AND column_name = 'timezone')
"""
"""The platform's tutors table has no time zone in the shared schema; a platform that
adds a `timezone` column gets the session time in the tutor's own zone too."""


@dataclass(frozen=True)
class TutorRecord:
    """What the platform's tables say about a tutor as of one moment."""

    tenure_days: int
    completed: int
    rescheduled: int
    no_show: int
    first_rated: int
    first_good: int
    later_rated: int
    later_sum: float
    engagement: float | None = None
    tutor_zone: str | None = None

    @property
    def ended(self) -> int:
        """Sessions that reached a final state the tutor is accountable for."""
        return self.completed + self.rescheduled + self.no_show

    @property
    def average_rating(self) -> float | None:
        """The plain mean of returning students' ratings (None without any)."""
        return self.later_sum / self.later_rated if self.later_rated else None


def _record(row: dict[str, Any]) -> TutorRecord:
    return TutorRecord(
        tenure_days=max(0, int(row["tenure_days"] or 0)),
        completed=int(row["completed"]),
        rescheduled=int(row["rescheduled"]),
        no_show=int(row["no_show"]),
        first_rated=int(row["first_rated"]),
        first_good=int(row["first_good"]),
        later_rated=int(row["later_rated"]),
        later_sum=float(row["later_sum"]),
        engagement=None if row["engagement"] is None else float(row["engagement"]),
        tutor_zone=row["tutor_zone"] or None,
    )


def tutor_records(
    conn: psycopg.Connection, asked: list[tuple[str, datetime]]
) -> dict[tuple[str, datetime], TutorRecord]:
    """Records of each (tutor_id, moment) asked; a tutor the platform does not hold is
    absent from the answer."""
    if not asked:
        return {}
    has_zone = bool((conn.execute(TUTOR_ZONE_COLUMN).fetchone() or (False,))[0])
    sql = RECORDS.format(zone="t.timezone" if has_zone else "NULL::text")
    params = {
        "tutors": [t for t, _ in asked],
        "moments": [m for _, m in asked],
        "good": POOR_RATING_BELOW,
    }
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(sql, params).fetchall()  # type: ignore[arg-type]
    return {(r["tutor_id"], r["as_of"]): _record(r) for r in rows}
