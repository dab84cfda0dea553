"""Model input from requests: the tutor's history from the feature snapshot, the local
hour, weekday and age from the session and the student (given, or from the student's
record), and the tutor's history matched to the session's subject and age band, in the
layout `service.fastpath.ModelRows` holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from fsp.calendar import local_calendar
from fsp.errors import InvalidInput, UnknownTutor
from service.fastpath import ModelRows
from service.references import StudentRecords
from service.schemas import StudentContext
from service.snapshot import FeatureSnapshot

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def local_contexts(
    starts: Sequence[datetime],
    zones: Sequence[str],
    ages: Sequence[int | None],
    births: Sequence[tuple[int, int] | None],
) -> np.ndarray:
    """(local_hour, local_dow, student_age) per session, rows in order: the shared
    feature code's calendar (`fsp.calendar.local_calendar`, as `build_model_input`
    computes them); the age is given, or counted from (birth year, month * 100 + day)
    on the session's local date."""
    seconds = [(start - _EPOCH) // _SECOND for start in starts]
    local = local_calendar(seconds, zones)
    given = np.array([np.nan if age is None else age for age in ages], dtype=float)
    if np.isnan(given).any():
        year, month_day = np.array([b or (0, 0) for b in births], dtype=np.int64).reshape(-1, 2).T
        given = np.where(np.isnan(given), local.age(year, month_day), given)
    return np.column_stack([local.hour, local.dow, given])


def tutor_positions(snapshot: FeatureSnapshot, tutor_ids: Sequence[str]) -> np.ndarray:
    """Each requested tutor's row in the snapshot. A tutor a request names that the
    snapshot does not know is a wrong field of the request (InvalidInput), whatever
    endpoint it came through."""
    try:
        return snapshot.positions_of(tutor_ids)
    except UnknownTutor as exc:
        raise InvalidInput(str(exc)) from None


@dataclass(frozen=True)
class ModelInputBuilder:
    """Builds raw model input for requests as of the snapshot's moment."""

    records: StudentRecords

    def for_contexts(
        self,
        contexts: Sequence[StudentContext],
        tutor_ids: Sequence[str],
        snapshot: FeatureSnapshot,
    ) -> ModelRows:
        """Raw model input for validated requests (one context per tutor)."""
        rows = [
            {
                "scheduled_start": c.scheduled_start,
                "subject": c.subject,
                "student_id": c.student_id,
                "student_age": c.student_age,
                "timezone": c.timezone,
            }
            for c in contexts
        ]
        return self.for_rows(rows, snapshot, tutor_positions(snapshot, tutor_ids))

    def for_rows(
        self, rows: Sequence[dict[str, Any]], snapshot: FeatureSnapshot, tutor_rows: np.ndarray
    ) -> ModelRows:
        """Raw model input for parsed batch rows (`service.batchio.SessionRow` dicts),
        whose tutors are `tutor_rows` of the snapshot."""
        ages = [r.get("student_age") for r in rows]
        zones = [r.get("timezone") for r in rows]
        births = self._fill_from_records(rows, ages, zones)
        starts = [r["scheduled_start"] for r in rows]
        context = local_contexts(starts, zones, ages, births)  # type: ignore[arg-type]
        subjects = np.array([r["subject"] for r in rows], dtype=object)
        history = snapshot.tutor_features[tutor_rows]
        matched = snapshot.matched_rows(tutor_rows, subjects, context[:, 2])
        return ModelRows(numeric=np.hstack([history, context, matched]), subjects=subjects)

    def _fill_from_records(
        self, rows: Sequence[dict[str, Any]], ages: list, zones: list
    ) -> list[tuple[int, int] | None]:
        """For rows naming the student by record: its zone into `zones`, and the birth
        (year, month * 100 + day) to count the age from (None for the other rows)."""
        births: list[tuple[int, int] | None] = [None] * len(rows)
        by_record = [i for i, zone in enumerate(zones) if zone is None and ages[i] is None]
        if not by_record:
            return births
        students = self._students([rows[i]["student_id"] or "" for i in by_record])
        for i, student in zip(by_record, students, strict=True):
            zones[i] = student.timezone
            births[i] = (student.birth_year, student.birth_month_day)
        return births

    def _students(self, student_ids: Sequence[str]):
        """The students' records, in order; InvalidInput names the first unknown one."""
        try:
            return self.records.students(student_ids)
        except KeyError as exc:
            raise InvalidInput(f"student_id: unknown student_id {exc.args[0]!r}") from None
