"""What a request refers to, checked against the feature snapshot: are its tutors and
students known? `StudentRecords` finds a student's record (the snapshot's, else one
read and remembered); `ReferenceData` answers request validation
(`service.schemas.ReferenceCheck`) with a problem in words, or None."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fsp.errors import DatabaseUnavailable
from service.database import RequestPool
from service.lookup import SnapshotKeeper
from service.snapshot import Student, read_student


@dataclass
class StudentRecords:
    """Student records by id: from the snapshot, else read once through the pool and
    remembered until the next snapshot (students who signed up after it)."""

    keeper: SnapshotKeeper
    pool: RequestPool
    _late: dict[str, Student] = field(default_factory=dict)
    _late_of: object = None  # the snapshot `_late` was read against

    def students(self, student_ids: Sequence[str]) -> list[Student]:
        """`student` for many ids, in order (one dictionary lookup each when known)."""
        known = self.keeper.current().students
        found = [known.get(student_id) for student_id in student_ids]
        if None in found:
            return [f or self.student(sid) for f, sid in zip(found, student_ids, strict=True)]
        return found  # type: ignore[return-value]

    def student(self, student_id: str) -> Student:
        """The student's record; KeyError when the platform has no such student."""
        snapshot = self.keeper.current()
        if self._late_of is not snapshot:  # a new snapshot holds the late sign-ups
            self._late, self._late_of = {}, snapshot
        found = snapshot.students.get(student_id) or self._late.get(student_id)
        if found is not None:
            return found
        with self.pool.connection() as conn:
            found = read_student(conn, student_id)
        if found is None:
            raise KeyError(student_id)
        self._late[student_id] = found
        return found


@dataclass
class ReferenceData:
    """Request validation's questions about reference data (`ReferenceCheck`). Before
    the first snapshot nothing is refused here: the database gate answers 503 then."""

    keeper: SnapshotKeeper
    records: StudentRecords
    clock: Callable[[], datetime]

    def now(self) -> datetime:
        """The moment requests are answered as of (the start window is checked on it)."""
        return self.clock()

    def check_tutor(self, tutor_id: str) -> str | None:
        snapshot = self.keeper.snapshot
        if snapshot is None or tutor_id in snapshot.tutor_index:
            return None
        return f"unknown tutor_id {tutor_id!r}"

    def unknown_tutors(self, tutor_ids: set[str]) -> dict[str, str]:
        """`check_tutor` for many tutors at once: the problem of each unknown one."""
        snapshot = self.keeper.snapshot
        if snapshot is None:
            return {}
        known = snapshot.tutor_index  # (a set minus dict keys would copy every key)
        return {t: f"unknown tutor_id {t!r}" for t in tutor_ids if t not in known}

    def unknown_students(self, student_ids: set[str]) -> dict[str, str]:
        """`check_student` for many students at once (the snapshot answers for most)."""
        snapshot = self.keeper.snapshot
        known = snapshot.students if snapshot else {}
        missing = [s for s in student_ids if s not in known]
        return {s: problem for s in missing if (problem := self.check_student(s))}

    def check_student(self, student_id: str) -> str | None:
        try:
            self.records.student(student_id)
        except KeyError:
            return f"unknown student_id {student_id!r}"
        except DatabaseUnavailable as exc:  # the caller is told; the outage is logged once
            return f"cannot be looked up now ({exc})"
        return None
