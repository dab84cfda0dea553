"""Scoring requests, free of BentoML: /predict, /predict_batch and /rank_tutors answer
through `RiskService`; `service/service.py` is a thin HTTP front to it and the
in-process tests drive it directly. Model input comes from `service.model_input`,
storage goes through `service.recorder`, the read endpoints are `service.reads`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from service.database import DatabaseHealth
from service.fastpath import FastLinearScorer, LinearAnswerWriter, ModelRows, scored, scored_json
from service.lookup import SnapshotKeeper
from service.model_input import ModelInputBuilder, tutor_positions
from service.personal import by_record, without_personal, without_personal_json
from service.recorder import PredictionRecorder
from service.schemas import (
    PredictionResponse,
    RankedTutor,
    RankRequest,
    RankResponse,
    SessionRequest,
)
from service.served_model import ServedModel

_ANSWER: TypeAdapter = TypeAdapter(dict[str, Any])


@dataclass
class RiskService:
    """Scores sessions as of request time with the served model and the feature snapshot.

    `hide_record_reasons` is true in the served API: answers scored from a student's
    record leave out the reasons that tell what it holds (`service.personal`)."""

    model: ServedModel
    keeper: SnapshotKeeper
    database: DatabaseHealth
    inputs: ModelInputBuilder
    recorder: PredictionRecorder
    clock: Callable[[], datetime]
    hide_record_reasons: bool = False

    def __post_init__(self) -> None:
        scorer = self.model.scorer
        self.writer = (
            LinearAnswerWriter(scorer, self.model.threshold, self.model.mlflow_version)
            if isinstance(scorer, FastLinearScorer)
            else None
        )

    def _scored(self, rows: ModelRows) -> list[dict[str, Any]]:
        model = self.model
        return scored(model.scorer, rows, model.threshold, model.mlflow_version)

    def predict(self, sessions: Sequence[SessionRequest]) -> list[PredictionResponse]:
        """Score sessions; store those with a session_id. Raises InvalidInput or
        DatabaseUnavailable (`service.refusals` maps them to 400/503)."""
        return [PredictionResponse.model_validate(a) for a in self.predict_records(sessions)]

    def predict_records(self, sessions: Sequence[SessionRequest]) -> list[dict[str, Any]]:
        """`predict` as plain dicts in PredictionResponse's shape (the batch path: its
        answers are serialised directly, without building a model per row)."""
        self.database.require()
        snapshot = self.keeper.current()
        now = self.clock()
        rows = self.inputs.for_contexts(sessions, [s.tutor_id for s in sessions], snapshot)
        results = self._scored(rows)
        ids = self.recorder.record(sessions, rows, results, now)
        for s, result in zip(sessions, results, strict=True):
            result["tutor_id"] = s.tutor_id
            result["session_id"] = s.session_id
            result["prediction_id"] = ids.get(s.session_id) if s.session_id else None
            if self.hide_record_reasons and s.uses_student_record:
                result["top_risk_factors"] = without_personal(result["top_risk_factors"])
        return results

    def predict_batch_json(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """`predict_records` for parsed batch rows, each answer as its JSON text: the
        /predict_batch path, vectorised over the batch (rows with a session_id are
        stored, through `predict_records`)."""
        if any(r.get("session_id") for r in rows):
            sessions = [SessionRequest.model_construct(**r) for r in rows]
            return [_ANSWER.dump_json(a).decode() for a in self.predict_records(sessions)]
        self.database.require()
        texts = self._batch_texts(rows, self.keeper.current())
        if not self.hide_record_reasons:
            return texts
        return [
            without_personal_json(text) if by_record(row) else text
            for row, text in zip(rows, texts, strict=True)
        ]

    def _batch_texts(self, rows: Sequence[dict[str, Any]], snapshot: Any) -> list[str]:
        """The answers' JSON texts: the linear writer's, else `scored_json`'s, else (a
        value JSON cannot carry as a number) the dict path's, which writes null."""
        tutor_ids = [r["tutor_id"] for r in rows]
        tutor_rows = tutor_positions(snapshot, tutor_ids)
        model_rows = self.inputs.for_rows(rows, snapshot, tutor_rows)
        model = self.model
        if self.writer is not None:
            texts = self.writer.write(model_rows, tutor_rows, tutor_ids, snapshot)
        else:
            texts = scored_json(
                model.scorer, model_rows, model.threshold, model.mlflow_version, tutor_ids
            )
        if texts is not None:
            return texts
        results = self._scored(model_rows)
        for tutor_id, result in zip(tutor_ids, results, strict=True):
            result.update(tutor_id=tutor_id, session_id=None, prediction_id=None)
        return [_ANSWER.dump_json(a).decode() for a in results]

    def rank(self, request: RankRequest) -> RankResponse:
        """The candidates ordered from lowest to highest risk (ties by tutor_id)."""
        self.database.require()
        tutors = list(request.tutor_ids)
        rows = self.inputs.for_contexts([request] * len(tutors), tutors, self.keeper.current())
        results = self._scored(rows)
        order = sorted(
            range(len(tutors)), key=lambda i: (results[i]["risk_probability"], tutors[i])
        )
        if self.hide_record_reasons and request.uses_student_record:
            for result in results:
                result["top_risk_factors"] = without_personal(result["top_risk_factors"])
        return RankResponse(
            model_version=self.model.mlflow_version,
            scheduled_start=request.scheduled_start,
            subject=request.subject,
            candidates=[
                RankedTutor.model_validate({**results[i], "rank": n, "tutor_id": tutors[i]})
                for n, i in enumerate(order, start=1)
            ],
        )
