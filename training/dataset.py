"""The point-in-time training set: labelled first sessions before a cut-off, each
featurised as of its own start from what was known then."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg

from fsp.constants import POOR_RATING_BELOW
from fsp.errors import NotEnoughData
from fsp.features import build_model_input, load_history, read_frame

LABELLED_FIRST_SESSIONS = """
SELECT s.session_id, s.tutor_id, s.student_id, s.subject, s.scheduled_start,
       st.timezone, st.birth_date, f.rating
FROM platform.sessions s
JOIN platform.students st USING (student_id)
JOIN platform.feedback f USING (session_id)
WHERE s.is_first_session AND s.status = 'completed'
  AND s.scheduled_start < %(t)s AND f.submitted_at < %(t)s
ORDER BY s.scheduled_start, s.session_id
"""


@dataclass(frozen=True)
class TrainingSet:
    """Model input, labels and the context needed to split and trace them."""

    X: pd.DataFrame
    y: np.ndarray
    starts: pd.Series
    session_ids: np.ndarray
    cutoff: datetime

    @property
    def fingerprint(self) -> str:
        """A hash of exactly the rows and values trained on (lineage in MLflow)."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.session_ids).encode())
        digest.update(np.ascontiguousarray(self.y).tobytes())
        digest.update(pd.util.hash_pandas_object(self.X, index=False).to_numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def window(self) -> tuple[str, str]:
        """First and last session start trained on, ISO 8601."""
        return self.starts.min().isoformat(), self.starts.max().isoformat()


def build_training_set(conn: psycopg.Connection, cutoff: datetime) -> TrainingSet:
    """Every first session rated before `cutoff`, with features as of its start."""
    rows = read_frame(conn, LABELLED_FIRST_SESSIONS, {"t": cutoff})
    if rows.empty:
        raise NotEnoughData(f"no labelled first sessions before {cutoff.isoformat()}")
    history = load_history(conn, cutoff)
    starts = pd.to_datetime(rows["scheduled_start"], utc=True)
    X = build_model_input(history, rows, starts)
    y = (rows["rating"].to_numpy() < POOR_RATING_BELOW).astype(int)
    return TrainingSet(
        X=X, y=y, starts=starts, session_ids=rows["session_id"].to_numpy(), cutoff=cutoff
    )
