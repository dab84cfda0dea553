"""Storing what /predict and /predict_batch scored for sessions that carry a
session_id (`service.store.store_predictions` decides which are stored)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from service.database import RequestPool
from service.fastpath import ModelRows
from service.schemas import SessionRequest
from service.store import store_predictions


def _sessions_frame(sessions: Sequence[SessionRequest]) -> pd.DataFrame:
    """The sessions as the prediction store takes them."""
    return pd.DataFrame(
        {
            "session_id": [s.session_id for s in sessions],
            "tutor_id": [s.tutor_id for s in sessions],
            "student_id": [s.student_id for s in sessions],
            "scheduled_start": [s.scheduled_start for s in sessions],
            "subject": [s.subject for s in sessions],
        }
    )


def _scored_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The answers as the prediction store takes them."""
    return pd.DataFrame(
        {
            "risk_probability": [r["risk_probability"] for r in results],
            "risk_score": [r["risk_score"] for r in results],
            "risk_level": [r["risk_level"] for r in results],
            "risk_prediction": [int(r["should_send_alert"]) for r in results],
            "model_version": [r["model_version"] for r in results],
            "top_risk_factors": [r["top_risk_factors"] for r in results],
        }
    )


@dataclass(frozen=True)
class PredictionRecorder:
    """Stores the answers of sessions with a session_id, through the request pool."""

    pool: RequestPool
    threshold: float

    def record(
        self,
        sessions: Sequence[SessionRequest],
        rows: ModelRows,
        results: list[dict[str, Any]],
        now: datetime,
    ) -> dict[str, str]:
        """{session_id: prediction_id} of the sessions this call stored."""
        keep = [i for i, s in enumerate(sessions) if s.session_id]
        if not keep:
            return {}
        chosen = [sessions[i] for i in keep]
        X = rows.frame().iloc[keep].reset_index(drop=True)
        scored = _scored_frame([results[i] for i in keep])
        with self.pool.connection() as conn:
            return store_predictions(conn, _sessions_frame(chosen), X, scored, now, self.threshold)
