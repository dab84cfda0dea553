"""Reasons that tell what a student's record holds, kept out of API answers.

The age (and the tutor's history with the age's band, which hints at it) and the local
time (which tells the time zone) are reasons like any other.
When the student's record supplied them (the caller gave a student_id, not an age and
zone), the served answer leaves these reasons out: an API caller learns the risk,
never a student's personal data. Stored predictions keep every reason."""

from __future__ import annotations

import re
from typing import Any

PERSONAL_FEATURES = (
    "student_age",
    "local_hour",
    "local_dow",
    "n_first_sessions_in_age_band",
    "poor_rate_in_age_band",
)
"""The reasons an answer scored from a student's record leaves out."""

_PERSONAL_FACTOR = (
    r'\{"feature":"(?:' + "|".join(PERSONAL_FEATURES) + r')","label":"[^"]*",'
    r'"value":[^,{}]*,"contribution":[^,{}]*,"direction":"[a-z ]*"\}'
)
_PERSONAL_JSON = re.compile(rf"(?<=\[){_PERSONAL_FACTOR},?|,{_PERSONAL_FACTOR}")
"""A personal reason in an answer's JSON text, with the comma that joins it (a subject,
the only free text there, is JSON-escaped and cannot hold an unescaped quote)."""


def by_record(row: dict[str, Any]) -> bool:
    """A batch row whose student's age and zone come from the record."""
    return row.get("student_age") is None and row.get("timezone") is None


def without_personal(factors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reasons, the personal ones left out."""
    return [f for f in factors if f["feature"] not in PERSONAL_FEATURES]


def without_personal_json(text: str) -> str:
    """An answer's JSON text, the personal reasons left out."""
    return _PERSONAL_JSON.sub("", text)
