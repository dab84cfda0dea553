"""The service's logic, free of BentoML: model input from requests, scores, reasons,
storage and the read endpoints. `service/service.py` and `service/api.py` are thin
HTTP fronts to it; the in-process tests drive it directly."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from service.config import BENTO_MODEL_ARTIFACT, FAST_PATH_FILE
from service.fastpath import (
    FastLinearScorer,
    LinearAnswerWriter,
    LinearParams,
    ModelRows,
    SklearnScorer,
    scored,
    scored_json,
)
from service.lookup import (
    FeatureSnapshot,
    SnapshotKeeper,
    Student,
    local_contexts,
    matched_history,
)
from service.schemas import (
    PredictionResponse,
    RankedTutor,
    RankRequest,
    RankResponse,
    SessionRequest,
    StudentContext,
)
from service.store import (
    HIGH_RISK_LEVELS,
    as_json,
    performance_logs,
    prediction_summary,
    store_predictions,
    tutor_exists,
    tutor_predictions,
)
from training.errors import InvalidInput, UnknownTutor
from training.outcomes import holdout_comparison


@dataclass(frozen=True)
class ServedModel:
    """The model a Bento carries, with the MLflow identity it was built from."""

    name: str
    mlflow_version: str
    run_id: str
    model_type: str
    threshold: float
    bento_model: str
    scorer: FastLinearScorer | SklearnScorer

    @property
    def fast(self) -> bool:
        return isinstance(self.scorer, FastLinearScorer)


def load_served_model(path: Path, tag: str, labels: dict[str, str], metadata: dict) -> ServedModel:
    """Open a packaged model folder: the numpy fast path when packaging wrote one (no
    sklearn or MLflow import, so a worker starts fast), else the logged MLflow model."""
    version = labels["mlflow_version"]
    threshold = float(metadata["alert_threshold"])
    scorer: FastLinearScorer | SklearnScorer
    if (path / FAST_PATH_FILE).exists():
        scorer = FastLinearScorer(LinearParams.load(path / FAST_PATH_FILE))
    else:
        from training.registry import load_sklearn
        from training.scoring import TOP_FACTORS, ScoringModel

        model = ScoringModel(
            model=load_sklearn(str(path / BENTO_MODEL_ARTIFACT)),
            version=version,
            threshold=threshold,
            run_id=labels.get("mlflow_run_id", ""),
            name=labels.get("mlflow_model", ""),
        )
        scorer = SklearnScorer(model, TOP_FACTORS)
    return ServedModel(
        name=labels.get("mlflow_model", ""),
        mlflow_version=version,
        run_id=labels.get("mlflow_run_id", ""),
        model_type=str(metadata.get("model_type", "")),
        threshold=threshold,
        bento_model=tag,
        scorer=scorer,
    )


def _frame(sessions: Sequence[SessionRequest], students: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": [s.session_id for s in sessions],
            "tutor_id": [s.tutor_id for s in sessions],
            "student_id": students,
            "scheduled_start": [s.scheduled_start for s in sessions],
            "subject": [s.subject for s in sessions],
        }
    )


_ANSWER: TypeAdapter = TypeAdapter(dict[str, Any])

PERSONAL_FEATURES = (
    "student_age",
    "local_hour",
    "local_dow",
    "n_first_sessions_in_age_band",
    "poor_rate_in_age_band",
)
"""Reasons that tell what a student's record holds: the age (and the tutor's history
with the age's band, which hints at it), and the local time (which tells the time zone). When the record supplied them (the caller gave a student_id,
not an age and zone), the answer leaves these reasons out: an API caller learns the
risk, never a student's personal data. Stored predictions keep every reason."""

_PERSONAL_FACTOR = (
    r'\{"feature":"(?:' + "|".join(PERSONAL_FEATURES) + r')","label":"[^"]*",'
    r'"value":[^,{}]*,"contribution":[^,{}]*,"direction":"[a-z ]*"\}'
)
_PERSONAL_JSON = re.compile(rf"(?<=\[){_PERSONAL_FACTOR},?|,{_PERSONAL_FACTOR}")
"""A personal reason in an answer's JSON text, with the comma that joins it (a subject,
the only free text there, is JSON-escaped and cannot hold an unescaped quote)."""


def _by_record(row: dict[str, Any]) -> bool:
    return row.get("student_age") is None and row.get("timezone") is None


def _without_personal(factors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in factors if f["feature"] not in PERSONAL_FEATURES]


class RiskService:
    """Scores sessions as of request time with the served model and the feature snapshot."""

    def __init__(
        self,
        model: ServedModel,
        keeper: SnapshotKeeper,
        clock: Callable[[], datetime],
        hide_record_reasons: bool = False,
    ) -> None:
        self.model = model
        self.keeper = keeper
        self.clock = clock
        self.hide_record_reasons = hide_record_reasons
        """True in the served API: answers scored from a student's record leave out the
        reasons that tell what it holds (PERSONAL_FEATURES)."""
        self.writer = (
            LinearAnswerWriter(model.scorer, model.threshold, model.mlflow_version)
            if isinstance(model.scorer, FastLinearScorer)
            else None
        )

    # -- model input -----------------------------------------------------------------
    def model_rows(
        self,
        contexts: Sequence[StudentContext],
        tutor_ids: Sequence[str],
        snapshot: FeatureSnapshot,
    ) -> ModelRows:
        """Raw model input: tutor history from the snapshot (the shared feature code's
        answer as of its moment), local time and age from the session and student."""
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
        return self.batch_model_rows(rows, snapshot, snapshot.positions_of(tutor_ids))

    def _students(self, student_ids: Sequence[str]) -> list[Student]:
        """The students' records, in order; InvalidInput names the first unknown one."""
        try:
            return self.keeper.students(student_ids)
        except KeyError as exc:
            raise InvalidInput(f"student_id: unknown student_id {exc.args[0]!r}") from None

    # -- endpoints ---------------------------------------------------------------------
    def predict(self, sessions: Sequence[SessionRequest]) -> list[PredictionResponse]:
        """Score sessions; store those with a session_id. Raises UnknownTutor,
        InvalidInput or DatabaseUnavailable (the fronts turn them into 4xx/503)."""
        return [PredictionResponse.model_validate(a) for a in self.predict_records(sessions)]

    def predict_records(self, sessions: Sequence[SessionRequest]) -> list[dict[str, Any]]:
        """`predict` as plain dicts in PredictionResponse's shape (the batch path: its
        answers are serialised directly, without building a model per row)."""
        self.keeper.require_database()
        snapshot = self.keeper.current()
        now = self.clock()
        rows = self.model_rows(sessions, [s.tutor_id for s in sessions], snapshot)
        results = scored(self.model.scorer, rows, self.model.threshold, self.model.mlflow_version)
        ids: dict[str, str] = {}
        if any(s.session_id for s in sessions):
            ids = self._store(sessions, rows, results, now)
        for s, result in zip(sessions, results, strict=True):
            result["tutor_id"] = s.tutor_id
            result["session_id"] = s.session_id
            result["prediction_id"] = ids.get(s.session_id) if s.session_id else None
            if self.hide_record_reasons and s.uses_student_record:
                result["top_risk_factors"] = _without_personal(result["top_risk_factors"])
        return results

    def batch_model_rows(
        self, rows: Sequence[dict[str, Any]], snapshot: FeatureSnapshot, tutor_rows: np.ndarray
    ) -> ModelRows:
        """`model_rows` for parsed batch rows (`service.batchio.SessionRow` dicts), whose
        tutors are `tutor_rows` of the snapshot."""
        history = snapshot.tutor_features[tutor_rows]
        ages = [r.get("student_age") for r in rows]
        zones = [r.get("timezone") for r in rows]
        by_record = [i for i, zone in enumerate(zones) if zone is None and ages[i] is None]
        births: list[tuple[int, int] | None] = [None] * len(rows)
        if by_record:
            students = self._students([rows[i]["student_id"] or "" for i in by_record])
            for i, student in zip(by_record, students, strict=True):
                zones[i] = student.timezone
                births[i] = (student.birth_year, student.birth_month_day)
        starts = [r["scheduled_start"] for r in rows]
        context = local_contexts(starts, zones, ages, births)  # type: ignore[arg-type]
        subjects = np.array([r["subject"] for r in rows], dtype=object)
        matched = matched_history(snapshot, [r["tutor_id"] for r in rows], subjects, context[:, 2])
        return ModelRows(numeric=np.hstack([history, context, matched]), subjects=subjects)

    def predict_batch_json(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """`predict_records` for parsed batch rows, each answer as its JSON text: the
        /predict_batch path, vectorised over the batch (rows with a session_id are
        stored, through `predict_records`)."""
        if any(r.get("session_id") for r in rows):
            sessions = [SessionRequest.model_construct(**r) for r in rows]
            return [_ANSWER.dump_json(a).decode() for a in self.predict_records(sessions)]
        self.keeper.require_database()
        snapshot = self.keeper.current()
        tutor_ids = [r["tutor_id"] for r in rows]
        tutor_rows = snapshot.positions_of(tutor_ids)
        model_rows = self.batch_model_rows(rows, snapshot, tutor_rows)
        model = self.model
        texts: list[str] | None
        if self.writer is not None:
            texts = self.writer.write(model_rows, tutor_rows, tutor_ids, snapshot)
        else:
            texts = scored_json(
                model.scorer, model_rows, model.threshold, model.mlflow_version, tutor_ids
            )
        if texts is None:  # a value JSON cannot carry as a number: the dict path writes null
            results = scored(model.scorer, model_rows, model.threshold, model.mlflow_version)
            for tutor_id, result in zip(tutor_ids, results, strict=True):
                result.update(tutor_id=tutor_id, session_id=None, prediction_id=None)
            texts = [_ANSWER.dump_json(a).decode() for a in results]
        if not self.hide_record_reasons:
            return texts
        return [
            _PERSONAL_JSON.sub("", text) if _by_record(row) else text
            for row, text in zip(rows, texts, strict=True)
        ]

    def _store(self, sessions, rows: ModelRows, results: list[dict], now: datetime):
        keep = [i for i, s in enumerate(sessions) if s.session_id]
        chosen = [sessions[i] for i in keep]
        students = [s.student_id for s in chosen]
        X = rows.frame().iloc[keep].reset_index(drop=True)
        picked = [results[i] for i in keep]
        frame = pd.DataFrame(
            {
                "risk_probability": [r["risk_probability"] for r in picked],
                "risk_score": [r["risk_score"] for r in picked],
                "risk_level": [r["risk_level"] for r in picked],
                "risk_prediction": [int(r["should_send_alert"]) for r in picked],
                "model_version": [r["model_version"] for r in picked],
                "top_risk_factors": [r["top_risk_factors"] for r in picked],
            }
        )
        with self.keeper.connection() as conn:
            return store_predictions(
                conn, _frame(chosen, students), X, frame, now, self.model.threshold
            )

    def rank(self, request: RankRequest) -> RankResponse:
        """The candidates ordered from lowest to highest risk (ties by tutor_id)."""
        self.keeper.require_database()
        snapshot = self.keeper.current()
        tutors = list(request.tutor_ids)
        rows = self.model_rows([request] * len(tutors), tutors, snapshot)
        results = scored(self.model.scorer, rows, self.model.threshold, self.model.mlflow_version)
        order = sorted(
            range(len(tutors)), key=lambda i: (results[i]["risk_probability"], tutors[i])
        )
        if self.hide_record_reasons and request.uses_student_record:
            for result in results:
                result["top_risk_factors"] = _without_personal(result["top_risk_factors"])
        return RankResponse(
            model_version=self.model.mlflow_version,
            scheduled_start=request.scheduled_start,
            subject=request.subject,
            candidates=[
                RankedTutor.model_validate({**results[i], "rank": n, "tutor_id": tutors[i]})
                for n, i in enumerate(order, start=1)
            ],
        )

    def upcoming(self, now: datetime | None, lookahead_hours: float) -> dict[str, Any]:
        """Score the scheduled first sessions starting in (now, now + H], as the scoring
        flow does (same query, same `model_input_as_of`), without storing them. With an
        explicit `now` the history is read as of that moment; else the snapshot serves."""
        from training.features import load_history
        from training.predictions import model_input_as_of, upcoming_sessions

        snapshot = self.keeper.current()
        moment = now or self.clock()
        with self.keeper.connection() as conn:
            sessions = upcoming_sessions(conn, moment, lookahead_hours)
            history = snapshot.history if now is None else load_history(conn, moment)
            if not sessions.empty and now is None:
                known = set(snapshot.tutor_index)
                if not set(sessions["tutor_id"]).issubset(known):  # booked by a newer tutor
                    history = load_history(conn, moment)
        out: dict[str, Any] = {
            "now": moment.isoformat(),
            "lookahead_hours": lookahead_hours,
            "features_as_of": min(moment, getattr(history, "known_until", moment)).isoformat(),
            "model_version": self.model.mlflow_version,
            "count": len(sessions),
            "predictions": [],
        }
        if sessions.empty:
            return out
        X = model_input_as_of(history, sessions, moment)  # type: ignore[arg-type]
        results = scored(
            self.model.scorer,
            ModelRows.from_frame(X),
            self.model.threshold,
            self.model.mlflow_version,
        )
        for record, result in zip(sessions.to_dict("records"), results, strict=True):
            out["predictions"].append(
                {
                    "session_id": record["session_id"],
                    "tutor_id": record["tutor_id"],
                    "student_id": record["student_id"],
                    "subject": record["subject"],
                    "scheduled_start": as_json(record["scheduled_start"]),
                    **result,
                }
            )
        return out

    def tutor_history(self, tutor_id: str, days: int, now: datetime | None) -> dict[str, Any]:
        """The tutor's features now and stored predictions of the last `days` days."""
        snapshot = self.keeper.current()
        moment = now or self.clock()
        with self.keeper.connection() as conn:
            if tutor_id not in snapshot.tutor_index and not tutor_exists(conn, tutor_id):
                raise UnknownTutor(f"unknown tutor_id {tutor_id!r}")
            predictions = tutor_predictions(conn, tutor_id, moment, days)
        features = None
        if tutor_id in snapshot.tutor_index:
            from training.features import TUTOR_HISTORY_COLUMNS

            values = snapshot.rows_of([tutor_id])[0]
            features = dict(zip(TUTOR_HISTORY_COLUMNS, map(float, values), strict=True))
        judged = [p for p in predictions if p["prediction_correct"] is not None]
        return {
            "tutor_id": tutor_id,
            "now": moment.isoformat(),
            "days": days,
            "features_as_of": snapshot.known_until.isoformat(),
            "features": features,
            "total_predictions": len(predictions),
            "high_risk_predictions": sum(p["risk_level"] in HIGH_RISK_LEVELS for p in predictions),
            "alerts_sent": sum(bool(p["alert_sent"]) for p in predictions),
            "accuracy": (
                sum(bool(p["prediction_correct"]) for p in judged) / len(judged) if judged else None
            ),
            "predictions": [{k: as_json(v) for k, v in p.items()} for p in predictions],
        }

    def model_performance(self, days: int, now: datetime | None) -> dict[str, Any]:
        """Evaluations logged by the monitoring flow in the last `days` days."""
        moment = now or self.clock()
        with self.keeper.connection() as conn:
            logs = performance_logs(conn, moment, days)
        return {
            "now": moment.isoformat(),
            "days": days,
            "count": len(logs),
            "evaluations": [{k: as_json(v) for k, v in row.items()} for row in logs],
        }

    def summary(self, days: int, now: datetime | None) -> dict[str, Any]:
        """Prediction volume, high-risk rate, alert rate and accuracy over `days` days."""
        moment = now or self.clock()
        with self.keeper.connection() as conn:
            figures = prediction_summary(conn, moment, days)
            since = moment - timedelta(days=days)
            figures["alerted_vs_holdout"] = holdout_comparison(conn, since, moment)
        return {"now": moment.isoformat(), "days": days, **figures}
