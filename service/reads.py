"""The read endpoints' answers (mounted under /api/first-session/ by `service.api`):
upcoming sessions scored as the scoring flow scores them, a tutor's history, the
monitoring flow's evaluations and a summary of stored predictions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import psycopg

from alerting.tracking import tracking_summary
from fsp.errors import UnknownTutor
from fsp.features import TUTOR_HISTORY_COLUMNS, load_history
from fsp.outcomes import holdout_comparison
from fsp.predictions import model_input_as_of, upcoming_sessions
from service.database import RequestPool
from service.fastpath import ModelRows, scored
from service.lookup import SnapshotKeeper
from service.served_model import ServedModel
from service.snapshot import FeatureSnapshot
from service.store import (
    HIGH_RISK_LEVELS,
    as_json,
    performance_logs,
    prediction_summary,
    tutor_exists,
    tutor_predictions,
)


def _history_for(
    conn: psycopg.Connection,
    snapshot: FeatureSnapshot,
    sessions: pd.DataFrame,
    moment: datetime,
    explicit: bool,
) -> object:
    """The history to answer from: read as of `moment` when it was given explicitly or
    a session was booked by a tutor newer than the snapshot, else the snapshot's."""
    newer_tutor = not sessions.empty and not set(sessions["tutor_id"]).issubset(
        snapshot.tutor_index
    )
    if explicit or newer_tutor:
        return load_history(conn, moment)
    return snapshot.history


def _stats(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and accuracy of a tutor's stored predictions."""
    judged = [p for p in predictions if p["prediction_correct"] is not None]
    correct = sum(bool(p["prediction_correct"]) for p in judged)
    return {
        "total_predictions": len(predictions),
        "high_risk_predictions": sum(p["risk_level"] in HIGH_RISK_LEVELS for p in predictions),
        "alerts_sent": sum(bool(p["alert_sent"]) for p in predictions),
        "accuracy": correct / len(judged) if judged else None,
    }


@dataclass(frozen=True)
class ReadViews:
    """Answers of the read endpoints; every one reads through the request pool."""

    model: ServedModel
    keeper: SnapshotKeeper
    pool: RequestPool
    clock: Callable[[], datetime]

    def upcoming(self, now: datetime | None, lookahead_hours: float) -> dict[str, Any]:
        """Score the scheduled first sessions starting in (now, now + H], as the scoring
        flow does (same query, same `model_input_as_of`), without storing them. With an
        explicit `now` the history is read as of that moment; else the snapshot serves."""
        snapshot = self.keeper.current()
        moment = now or self.clock()
        with self.pool.connection() as conn:
            sessions = upcoming_sessions(conn, moment, lookahead_hours)
            history = _history_for(conn, snapshot, sessions, moment, now is not None)
        known_until = getattr(history, "known_until", moment)
        return {
            "now": moment.isoformat(),
            "lookahead_hours": lookahead_hours,
            "features_as_of": min(moment, known_until).isoformat(),
            "model_version": self.model.mlflow_version,
            "count": len(sessions),
            "predictions": self._scored_sessions(history, sessions, moment),
        }

    def _scored_sessions(
        self, history: object, sessions: pd.DataFrame, moment: datetime
    ) -> list[dict[str, Any]]:
        if sessions.empty:
            return []
        X = model_input_as_of(history, sessions, moment)  # type: ignore[arg-type]
        model = self.model
        results = scored(
            model.scorer, ModelRows.from_frame(X), model.threshold, model.mlflow_version
        )
        return [
            {
                "session_id": record["session_id"],
                "tutor_id": record["tutor_id"],
                "student_id": record["student_id"],
                "subject": record["subject"],
                "scheduled_start": as_json(record["scheduled_start"]),
                **result,
            }
            for record, result in zip(sessions.to_dict("records"), results, strict=True)
        ]

    def tutor_history(self, tutor_id: str, days: int, now: datetime | None) -> dict[str, Any]:
        """The tutor's features now and stored predictions of the last `days` days."""
        snapshot = self.keeper.current()
        moment = now or self.clock()
        known = tutor_id in snapshot.tutor_index
        with self.pool.connection() as conn:
            if not known and not tutor_exists(conn, tutor_id):
                raise UnknownTutor(f"unknown tutor_id {tutor_id!r}")
            predictions = tutor_predictions(conn, tutor_id, moment, days)
        features = None
        if known:
            values = snapshot.rows_of([tutor_id])[0]
            features = dict(zip(TUTOR_HISTORY_COLUMNS, map(float, values), strict=True))
        return {
            "tutor_id": tutor_id,
            "now": moment.isoformat(),
            "days": days,
            "features_as_of": snapshot.known_until.isoformat(),
            "features": features,
            **_stats(predictions),
            "predictions": [{k: as_json(v) for k, v in p.items()} for p in predictions],
        }

    def model_performance(self, days: int, now: datetime | None) -> dict[str, Any]:
        """Evaluations logged by the monitoring flow in the last `days` days."""
        moment = now or self.clock()
        with self.pool.connection() as conn:
            logs = performance_logs(conn, moment, days)
        return {
            "now": moment.isoformat(),
            "days": days,
            "count": len(logs),
            "evaluations": [{k: as_json(v) for k, v in row.items()} for row in logs],
        }

    def summary(self, days: int, now: datetime | None) -> dict[str, Any]:
        """Prediction volume, high-risk rate, alert rate and accuracy over `days` days; the
        alerted-vs-holdout comparison; the emails' open and click rates, with the
        comparison split by opened / not opened."""
        moment = now or self.clock()
        with self.pool.connection() as conn:
            figures = prediction_summary(conn, moment, days)
            since = moment - timedelta(days=days)
            figures["alerted_vs_holdout"] = holdout_comparison(conn, since, moment)
            figures["email_tracking"] = tracking_summary(conn, since, moment)
        return {"now": moment.isoformat(), "days": days, **figures}
