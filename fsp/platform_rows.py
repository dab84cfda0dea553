"""Rows read from the platform are checked before they are scored.

A real platform's tables may hold what its own schema allows but the model cannot
use: an empty subject, a time zone no table knows, a NULL where a value is
needed, a session of a tutor the tutors table lacks. One such row must never stop
the hourly scoring of everyone else: it is set aside with a named reason, counted,
logged, and the rest are scored."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fsp.calendar import known_zone
from fsp.features import TutorHistory

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "session_id",
    "tutor_id",
    "student_id",
    "subject",
    "scheduled_start",
    "timezone",
    "birth_date",
)
MAX_TEXT_LENGTH = 128
"""Longest subject or identifier scored (the API's limit too)."""


@dataclass(frozen=True)
class CheckedSessions:
    """The sessions fit to score, and how many were set aside for which reason."""

    sessions: pd.DataFrame
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)


def _problems(sessions: pd.DataFrame, history: TutorHistory | None) -> list[str | None]:
    """Per row: the first reason it cannot be scored, or None."""
    reasons: list[str | None] = [None] * len(sessions)
    zones_ok = {z: isinstance(z, str) and known_zone(z) for z in set(sessions["timezone"])}
    for i, row in enumerate(sessions.to_dict("records")):
        missing = next((c for c in REQUIRED_COLUMNS if _is_missing(row.get(c))), None)
        if missing:
            reasons[i] = f"missing {missing}"
        elif not str(row["subject"]).strip():
            reasons[i] = "empty subject"
        elif len(str(row["subject"])) > MAX_TEXT_LENGTH:
            reasons[i] = f"subject longer than {MAX_TEXT_LENGTH} characters"
        elif not zones_ok[row["timezone"]]:
            reasons[i] = "unknown time zone"
        elif history is not None and not history.knows(row["tutor_id"]):
            reasons[i] = "tutor not in platform.tutors"
    return reasons


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


def check_sessions(sessions: pd.DataFrame, history: TutorHistory | None) -> CheckedSessions:
    """Split platform rows into those fit to score and counted, named reasons for the
    rest (each reason logged once, with one example session id)."""
    if sessions.empty:
        return CheckedSessions(sessions)
    reasons = _problems(sessions, history)
    bad = [r is not None for r in reasons]
    if not any(bad):
        return CheckedSessions(sessions)
    counts = Counter(r for r in reasons if r is not None)
    examples = {
        reason: str(sessions["session_id"].iloc[reasons.index(reason)]) for reason in counts
    }
    for reason, count in counts.items():
        log.warning("skipped %d session(s): %s (e.g. %r)", count, reason, examples[reason])
    good = sessions[~np.array(bad)].reset_index(drop=True)
    return CheckedSessions(good, dict(counts), examples)
