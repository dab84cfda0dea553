"""The feature snapshot: every tutor's history features as of one moment, and the
student records the model needs, computed once and looked up per request.

Reading a tutor's history and computing its features (`fsp.features`) costs about a
second for the whole platform and ~1.4 ms even for one tutor, far more than scoring
(microseconds). But the history features of *every* tutor come out of one vectorised
call of the shared code in ~10 ms once the history is loaded. For a request at
`now >= t` the shared code itself answers with the features at `t` (it clamps
moments to what the history knows), so a lookup in the snapshot *is* the shared
code's answer, and no feature is defined twice. `service.lookup.SnapshotKeeper`
rebuilds it in the background."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

import numpy as np
import psycopg

from fsp.errors import UnknownTutor
from fsp.features import TUTOR_HISTORY_COLUMNS, TutorHistory, load_history

STUDENTS_SQL = "SELECT student_id, birth_date, timezone FROM platform.students"
ONE_STUDENT_SQL = STUDENTS_SQL + " WHERE student_id = %s"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Student(NamedTuple):
    """What the model needs of a student record (the birth date split as the age needs it)."""

    timezone: str
    birth_year: int
    birth_month_day: int  # month * 100 + day

    @classmethod
    def of(cls, birth_date: date, timezone: str) -> Student:
        return cls(timezone, birth_date.year, birth_date.month * 100 + birth_date.day)


@dataclass(frozen=True)
class FeatureSnapshot:
    """The shared feature code's answer for every tutor as of `known_until`."""

    known_until: datetime
    tutor_index: dict[str, int]
    tutor_features: np.ndarray  # (tutors, TUTOR_HISTORY_COLUMNS)
    students: dict[str, Student]
    history: TutorHistory  # for predict-upcoming and the session-matched history
    build_seconds: float

    def rows_of(self, tutor_ids: Sequence[str]) -> np.ndarray:
        """History features of each tutor (UnknownTutor names the first unknown one)."""
        return self.tutor_features[self.positions_of(tutor_ids)]

    def positions_of(self, tutor_ids: Sequence[str]) -> np.ndarray:
        """Each tutor's row in `tutor_features` (UnknownTutor names the first unknown one)."""
        try:
            return np.array([self.tutor_index[t] for t in tutor_ids], dtype=np.intp)
        except KeyError as exc:
            raise UnknownTutor(f"unknown tutor_id {exc.args[0]!r}") from None

    def matched_rows(self, positions: np.ndarray, subjects: np.ndarray, ages) -> np.ndarray:
        """The tutor's history matched to each session (its subject, its student's age
        band) as of the snapshot's moment, for the tutors at `positions`: the shared
        feature code's own arithmetic (`TutorHistory.matched_at`), which
        `build_model_input` calls too. These depend on the session, so unlike the
        tutor's own history they cannot be kept per tutor. A tutor's position is its
        history code: `build_snapshot` lays the rows out in the history's tutor order."""
        codes = np.asarray(positions, dtype=np.int64)
        moment = (self.known_until - _EPOCH) // timedelta(seconds=1)
        seconds = np.full(len(codes), moment, dtype=np.int64)
        return self.history.matched_at(codes, [str(s) for s in subjects], ages, seconds)


def read_students(conn: psycopg.Connection) -> dict[str, Student]:
    """Every student record, by id."""
    rows = conn.execute(STUDENTS_SQL).fetchall()
    return {student_id: Student.of(birth, zone) for student_id, birth, zone in rows}


def read_student(conn: psycopg.Connection, student_id: str) -> Student | None:
    """One student record, or None when the platform has no such student."""
    row = conn.execute(ONE_STUDENT_SQL, (student_id,)).fetchone()
    return None if row is None else Student.of(row[1], row[2])


def build_snapshot(conn: psycopg.Connection, moment: datetime) -> FeatureSnapshot:
    """Load the platform history as of `moment` and compute every tutor's features once."""
    started = time.perf_counter()
    history = load_history(conn, moment)
    tutor_ids = list(history.tutor_codes)
    table = history.features(tutor_ids, [moment] * len(tutor_ids))
    return FeatureSnapshot(
        known_until=moment,
        tutor_index={t: i for i, t in enumerate(tutor_ids)},
        tutor_features=table[list(TUTOR_HISTORY_COLUMNS)].to_numpy(dtype=float),
        students=read_students(conn),
        history=history,
        build_seconds=time.perf_counter() - started,
    )
