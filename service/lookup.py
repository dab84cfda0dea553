"""The feature snapshot kept fresh: one background thread per worker checks, every
`DB_CHECK_SECONDS`, that the database answers (readiness and the API's 503s follow
it), and rebuilds the snapshot (`service.snapshot`) every `SNAPSHOT_REFRESH_SECONDS`.
What a request can miss is at most the last few minutes of platform activity, which
moves aggregates built from months of sessions by nothing measurable."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from fsp.errors import DatabaseUnavailable
from service.config import DB_CHECK_SECONDS, SNAPSHOT_REFRESH_SECONDS
from service.database import DATABASE_UNAVAILABLE, DatabaseHealth, first_line
from service.snapshot import FeatureSnapshot, build_snapshot

log = logging.getLogger(__name__)


@dataclass
class SnapshotKeeper:
    """Owns one worker's feature snapshot and the thread that keeps it (and the
    database's health verdict) up to date. `clock` is passed in so tests can set it."""

    database: DatabaseHealth
    clock: Callable[[], datetime]
    refresh_seconds: float = SNAPSHOT_REFRESH_SECONDS
    check_seconds: float = DB_CHECK_SECONDS
    snapshot: FeatureSnapshot | None = None
    refresh_error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _refreshed_at: float = 0.0

    @property
    def ready(self) -> bool:
        """Model input can be built and the database answers."""
        return self.snapshot is not None and self.database.up

    @property
    def not_ready_reason(self) -> str | None:
        """Why requests cannot be answered now, in words a caller may read: never where
        the database is (the detail, host and port included, goes to the log)."""
        if not self.database.up:
            return DATABASE_UNAVAILABLE
        if self.snapshot is None:
            reason = "loading failed, retrying" if self.refresh_error else "still loading"
            return f"tutor feature snapshot not loaded: {reason}"
        return None

    def current(self) -> FeatureSnapshot:
        """The snapshot, or DatabaseUnavailable when there is none yet."""
        snapshot = self.snapshot
        if snapshot is None:
            raise DatabaseUnavailable(self.not_ready_reason or "not ready")
        return snapshot

    def refresh(self) -> FeatureSnapshot:
        """Rebuild the snapshot now (on the health connection, outside any request)."""
        conn = self.database.connection
        if conn is None:
            raise DatabaseUnavailable(DATABASE_UNAVAILABLE)
        moment = self.clock()
        with conn.transaction():
            snapshot = build_snapshot(conn, moment)
        first = self.snapshot is None
        self.snapshot, self.refresh_error = snapshot, None
        self._refreshed_at = time.monotonic()
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
        if not self.database.check():
            return
        due = time.monotonic() - self._refreshed_at >= self.refresh_seconds
        if self.snapshot is None or due:
            try:
                self.refresh()
            except Exception as exc:  # keep serving the previous snapshot; say why
                self.refresh_error = first_line(exc)
                log.warning("snapshot refresh skipped, retrying: %s", self.refresh_error)
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
                log.exception("snapshot keeper round failed; the next round retries")
            self._stop.wait(self.check_seconds)

    def stop(self) -> None:
        """Stop the thread (the connections are closed by their owners)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
