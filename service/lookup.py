"""Tutor history as of request time, with its cost amortised over many requests.

Reading a tutor's history and computing its features (`training.features`) costs
about a second for the whole platform and ~1.4 ms even for one tutor, far more
than scoring (microseconds). But the history features of *every* tutor can be
computed in one vectorised call of the shared code in ~10 ms once the history is
loaded. So each worker keeps a **feature snapshot**: `load_history(conn, t)` +
`TutorHistory.features(all tutors, t)` at a moment `t`, rebuilt in the background
every `SNAPSHOT_REFRESH_SECONDS`. For a request at `now >= t` the shared code
itself answers with the features at `t` (it clamps moments to what the history
knows), so a lookup in the snapshot *is* the shared code's answer, and no feature
is defined twice. What a request can miss is at most the last few minutes of
platform activity, which moves aggregates built from months of sessions by
nothing measurable.

The same background thread checks, every `DB_CHECK_SECONDS`, that the database
answers: readiness and the 503s of the API follow it, and it recovers by itself
when the database returns. Requests never wait on the database except to store
a prediction or read the fsp tables (through a small pool)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

from service.config import (
    DB_CHECK_SECONDS,
    DB_CONNECTION_OPTIONS,
    POOL_MAX_SIZE,
    POOL_TIMEOUT_SECONDS,
    SNAPSHOT_REFRESH_SECONDS,
)
from training.errors import DatabaseUnavailable, UnknownTutor
from training.features import local_calendar

log = logging.getLogger("bentoml.fsp")  # under "bentoml": shown by its log config

DATABASE_UNAVAILABLE = "database unavailable"
"""What a caller is told while the database does not answer (503)."""

STUDENTS_SQL = "SELECT student_id, birth_date, timezone FROM platform.students"
ONE_STUDENT_SQL = STUDENTS_SQL + " WHERE student_id = %s"


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
    history: object  # training.features.TutorHistory, for predict-upcoming
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


def build_snapshot(conn: psycopg.Connection, moment: datetime) -> FeatureSnapshot:
    """Load the platform history as of `moment` and compute every tutor's features once."""
    from training.features import TUTOR_HISTORY_COLUMNS, load_history

    started = time.perf_counter()
    history = load_history(conn, moment)
    tutor_ids = list(history.tutor_codes)
    table = history.features(tutor_ids, [moment] * len(tutor_ids))
    students = {
        sid: Student.of(birth, zone) for sid, birth, zone in conn.execute(STUDENTS_SQL).fetchall()
    }
    return FeatureSnapshot(
        known_until=moment,
        tutor_index={t: i for i, t in enumerate(tutor_ids)},
        tutor_features=table[list(TUTOR_HISTORY_COLUMNS)].to_numpy(dtype=float),
        students=students,
        history=history,
        build_seconds=time.perf_counter() - started,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def matched_history(
    snapshot: FeatureSnapshot, tutor_ids: Sequence[str], subjects, ages: np.ndarray
) -> np.ndarray:
    """The tutor's history matched to each session (its subject, its student's age band)
    as of the snapshot's moment: the shared feature code's own arithmetic
    (`TutorHistory.matched_at`), which `build_model_input` calls too. These depend on
    the session, so unlike the tutor's own history they cannot be kept per tutor."""
    history = snapshot.history
    codes = np.array([history.tutor_codes[t] for t in tutor_ids], dtype=np.int64)  # type: ignore[attr-defined]
    seconds = np.full(len(codes), (snapshot.known_until - _EPOCH) // _SECOND, dtype=np.int64)
    return history.matched_at(codes, [str(s) for s in subjects], ages, seconds)  # type: ignore[attr-defined]


def local_contexts(
    starts: Sequence[datetime],
    zones: Sequence[str],
    ages: Sequence[int | None],
    births: Sequence[tuple[int, int] | None],
) -> np.ndarray:
    """(local_hour, local_dow, student_age) per session, rows in order: the shared
    feature code's calendar (`training.features.local_calendar`, as `build_model_input`
    computes them); the age is given, or counted from (birth year, month * 100 + day)
    on the session's local date."""
    seconds = [(start - _EPOCH) // _SECOND for start in starts]
    local = local_calendar(seconds, zones)
    given = np.array([np.nan if age is None else age for age in ages], dtype=float)
    if np.isnan(given).any():
        year, month_day = np.array([b or (0, 0) for b in births], dtype=np.int64).reshape(-1, 2).T
        given = np.where(np.isnan(given), local.age(year, month_day), given)
    return np.column_stack([local.hour, local.dow, given])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class SnapshotKeeper:
    """Owns one worker's feature snapshot, its database health and its request pool.

    `resolve_url` and `clock` are passed in so tests can point it anywhere."""

    resolve_url: Callable[[], str]
    clock: Callable[[], datetime]
    refresh_seconds: float = SNAPSHOT_REFRESH_SECONDS
    check_seconds: float = DB_CHECK_SECONDS
    snapshot: FeatureSnapshot | None = None
    db_error: str | None = "not checked yet"
    refresh_error: str | None = None
    _url: str | None = None
    _health: psycopg.Connection | None = None
    _pool: object | None = None
    _extra_students: dict[str, Student] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _refreshed_at: float = 0.0

    # -- state -----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Model input can be built and the database answers."""
        return self.snapshot is not None and self.db_error is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why requests cannot be answered now, in words a caller may read: never where
        the database is (the detail, host and port included, goes to the log)."""
        if self.db_error is not None:
            return DATABASE_UNAVAILABLE
        if self.snapshot is None:
            reason = "loading failed, retrying" if self.refresh_error else "still loading"
            return f"tutor feature snapshot not loaded: {reason}"
        return None

    def now(self) -> datetime:
        """The moment requests are answered as of (request validation asks it)."""
        return self.clock()

    def current(self) -> FeatureSnapshot:
        """The snapshot, or DatabaseUnavailable when there is none yet."""
        snapshot = self.snapshot
        if snapshot is None:
            raise DatabaseUnavailable(self.not_ready_reason or "not ready")
        return snapshot

    def require_database(self) -> None:
        """Raise DatabaseUnavailable when the last health check failed."""
        if self.db_error is not None:
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE)

    def _database_failed(self, exc: BaseException) -> None:
        """Remember the failure; log it (with where) once per outage."""
        detail = _first_line(exc)
        if self.db_error is None or self.db_error == "not checked yet":
            log.warning("database unavailable: %s", detail)
        self.db_error = detail

    # -- reference checks used during request validation -----------------------------
    def check_tutor(self, tutor_id: str) -> str | None:
        snapshot = self.snapshot
        if snapshot is None or tutor_id in snapshot.tutor_index:
            return None
        return f"unknown tutor_id {tutor_id!r}"

    def unknown_tutors(self, tutor_ids: set[str]) -> dict[str, str]:
        """`check_tutor` for many tutors at once: the problem of each unknown one."""
        snapshot = self.snapshot
        if snapshot is None:
            return {}
        known = snapshot.tutor_index  # (a set minus dict keys would copy every key)
        return {t: f"unknown tutor_id {t!r}" for t in tutor_ids if t not in known}

    def unknown_students(self, student_ids: set[str]) -> dict[str, str]:
        """`check_student` for many students at once (the snapshot answers for most)."""
        known = self.snapshot.students if self.snapshot else {}
        missing = [s for s in student_ids if s not in known]
        return {s: problem for s in missing if (problem := self.check_student(s))}

    def check_student(self, student_id: str) -> str | None:
        try:
            self.student(student_id)
        except KeyError:
            return f"unknown student_id {student_id!r}"
        except DatabaseUnavailable as exc:
            return f"cannot be looked up now ({exc})"
        return None

    def students(self, student_ids: Sequence[str]) -> list[Student]:
        """`student` for many ids, in order (one dictionary lookup each when known)."""
        known = self.current().students
        found = [known.get(student_id) for student_id in student_ids]
        if None in found:
            return [f or self.student(sid) for f, sid in zip(found, student_ids, strict=True)]
        return found  # type: ignore[return-value]

    def student(self, student_id: str) -> Student:
        """The student's record: from the snapshot, else read once and remembered
        (students who signed up after the snapshot). KeyError when unknown."""
        snapshot = self.current()
        found = snapshot.students.get(student_id) or self._extra_students.get(student_id)
        if found is not None:
            return found
        with self.connection() as conn:
            row = conn.execute(ONE_STUDENT_SQL, (student_id,)).fetchone()
        if row is None:
            raise KeyError(student_id)
        found = Student.of(row[1], row[2])
        self._extra_students[student_id] = found
        return found

    # -- database ----------------------------------------------------------------------
    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one unit of work; DatabaseUnavailable when none."""
        from psycopg_pool import PoolTimeout

        self.require_database()
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE)
        try:
            with pool.connection(timeout=POOL_TIMEOUT_SECONDS) as conn:  # type: ignore[attr-defined]
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._database_failed(exc)
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE) from exc

    def _open_pool(self, url: str) -> None:
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs=dict(DB_CONNECTION_OPTIONS),
            name="fsp-service",
        )
        pool.open(wait=False)
        self._pool = pool

    def check_database(self) -> bool:
        """One health check on the dedicated connection, reconnecting when needed."""
        try:
            if self._url is None:
                self._url = self.resolve_url()
                self._open_pool(self._url)
            if self._health is None or self._health.closed:
                options = make_conninfo(self._url, **DB_CONNECTION_OPTIONS)
                self._health = psycopg.connect(options, autocommit=True)
            self._health.execute("SELECT 1")
        except Exception as exc:  # any failure means the same to a caller: not answering
            self._database_failed(exc)
            if self._health is not None:
                self._health.close()
                self._health = None
            return False
        if self.db_error is not None and self.db_error != "not checked yet":
            log.warning("database answers again")
            self._renew_pool()
        self.db_error = None
        return True

    def _renew_pool(self) -> None:
        """After an outage: the pooled connections are dead and the pool may be waiting
        out its reconnection backoff, so requests would still time out. Check them now
        (the broken ones are replaced) before requests are let through again."""
        pool = self._pool
        if pool is None:
            return
        try:
            pool.check()  # type: ignore[attr-defined]
        except Exception as exc:  # the next health check decides; requests still answer 503
            log.warning("pool check after the outage failed: %s", _first_line(exc))

    def refresh(self) -> FeatureSnapshot:
        """Rebuild the snapshot now (on the health connection, outside any request)."""
        if self._health is None:
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE)
        moment = self.clock()
        with self._health.transaction():
            snapshot = build_snapshot(self._health, moment)
        first = self.snapshot is None
        self.snapshot = snapshot
        self._extra_students = {}
        self._refreshed_at = time.monotonic()
        self.refresh_error = None
        log.info(
            "tutor feature snapshot as of %s: %d tutors, %d students, %.2f s",
            moment.isoformat(),
            len(snapshot.tutor_index),
            len(snapshot.students),
            snapshot.build_seconds,
        )
        if first:
            gc.collect()
            gc.freeze()  # long-lived objects out of the collector's way (fewer long pauses)
        return snapshot

    def tick(self) -> None:
        """One round: check the database, rebuild the snapshot when missing or old."""
        if not self.check_database():
            return
        due = time.monotonic() - self._refreshed_at >= self.refresh_seconds
        if self.snapshot is None or due:
            try:
                self.refresh()
            except Exception as exc:  # keep serving the previous snapshot; say why
                self.refresh_error = _first_line(exc)
                log.warning("snapshot refresh failed: %s", self.refresh_error)
                self._refreshed_at = time.monotonic() - self.refresh_seconds + self.check_seconds

    def start(self) -> None:
        """Run `tick` in a daemon thread until `stop`."""
        self._thread = threading.Thread(target=self._loop, name="fsp-snapshot", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # never let the keeper die: readiness would freeze
                log.exception("snapshot keeper round failed")
            self._stop.wait(self.check_seconds)

    def stop(self) -> None:
        """Stop the thread and close every connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.close()  # type: ignore[attr-defined]
        if self._health is not None:
            self._health.close()
