"""Scoring the serving model: a numpy fast path for the linear champion, sklearn otherwise.

Why: calling the logged sklearn pipeline costs ~2 ms per call whatever the row
count (DataFrame checks, ColumnTransformer-like overhead), the same arithmetic in
numpy a few microseconds. For a calibrated logistic regression the whole model is
`expit(-(a * (encode(x) @ w + c) + b))`, where `encode` is the logged model's own
fitted encoder (`fsp.encoding.FittedEncoding`, which `RiskFeatureEncoder.transform`
itself runs), so packaging extracts those parameters into a small JSON file in the
Bento model, and the server evaluates them directly. The tests
check that the fast path equals `ScoringModel.probabilities` and
`ScoringModel.contributions` on every holdout row to 1e-9; packaging refuses to
build when it does not on its probe rows. Any other model family is served through
`fsp.scoring.ScoringModel` itself (exact, slower).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from fsp.constants import RISK_BANDS, risk_level, risk_score
from fsp.encoding import BASE_FEATURE_SET, NUMERIC_INPUTS, FittedEncoding
from fsp.features import FACTOR_LABELS, MODEL_INPUT_COLUMNS, TUTOR_HISTORY_COLUMNS

if TYPE_CHECKING:
    from fsp.scoring import ScoringModel

NUMERIC_COLUMNS: tuple[str, ...] = NUMERIC_INPUTS
"""Model input without `subject`, in MODEL_INPUT_COLUMNS order."""


@dataclass(frozen=True)
class ModelRows:
    """Raw model input (MODEL_INPUT_COLUMNS) held as arrays rather than a DataFrame."""

    numeric: np.ndarray  # (n, len(NUMERIC_COLUMNS)) float64
    subjects: np.ndarray  # (n,) object (str)

    def __len__(self) -> int:
        return len(self.subjects)

    @classmethod
    def from_frame(cls, X: pd.DataFrame) -> ModelRows:
        """From the shared feature code's output (`build_model_input`)."""
        return cls(
            numeric=X[list(NUMERIC_COLUMNS)].to_numpy(dtype=float),
            subjects=X["subject"].astype(str).to_numpy(dtype=object),
        )

    def frame(self) -> pd.DataFrame:
        """As the DataFrame the logged model takes (for the sklearn path and storage)."""
        frame = pd.DataFrame(self.numeric, columns=list(NUMERIC_COLUMNS))
        frame["subject"] = self.subjects
        return frame[list(MODEL_INPUT_COLUMNS)]

    def value(self, row: int, feature: str) -> float | str:
        """One input value, as JSON-ready Python."""
        if feature == "subject":
            return str(self.subjects[row])
        return float(self.numeric[row, NUMERIC_COLUMNS.index(feature)])


@dataclass(frozen=True)
class LinearParams:
    """Everything needed to evaluate the calibrated linear model without sklearn."""

    encoding: FittedEncoding
    coef: np.ndarray
    intercept: float
    platt_a: float
    platt_b: float
    groups: np.ndarray  # (encoded columns, MODEL_INPUT_COLUMNS): 1 where a column belongs
    top_factors: int

    @classmethod
    def from_scoring_model(cls, model: ScoringModel) -> LinearParams:
        """Read the fitted parameters (packaging time: sklearn is loaded there anyway)."""
        from fsp.scoring import TOP_FACTORS, grouping

        if not model.is_linear:
            raise ValueError("the fast path exists only for a linear model with Platt scaling")
        calibrated = model.model.calibrated_classifiers_[0]
        pipeline, calibrator = calibrated.estimator, calibrated.calibrators[0]
        encoder, clf = pipeline.named_steps["encode"], pipeline.named_steps["clf"]
        return cls(
            encoding=encoder.fitted(),
            coef=np.asarray(clf.coef_[0], dtype=float),
            intercept=float(clf.intercept_[0]),
            platt_a=float(calibrator.a_),
            platt_b=float(calibrator.b_),
            groups=grouping(encoder.get_feature_names_out().tolist()),
            top_factors=int(TOP_FACTORS),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form; floats round-trip exactly through `repr`."""
        return {
            "model_input_columns": list(MODEL_INPUT_COLUMNS),
            "subjects": list(self.encoding.subjects),
            "bin_edges": [list(edges) for edges in self.encoding.bin_edges],
            "mean": self.encoding.mean.tolist(),
            "scale": self.encoding.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "platt_a": self.platt_a,
            "platt_b": self.platt_b,
            "groups": self.groups.tolist(),
            "top_factors": self.top_factors,
            "feature_set": self.encoding.feature_set,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinearParams:
        """Refuses parameters written for another model input layout."""
        if tuple(data["model_input_columns"]) != MODEL_INPUT_COLUMNS:
            raise ValueError("fast-path parameters were written for other model input columns")
        encoding = FittedEncoding(
            subjects=tuple(data["subjects"]),
            bin_edges=tuple(tuple(float(e) for e in edges) for edges in data["bin_edges"]),
            mean=np.asarray(data["mean"], dtype=float),
            scale=np.asarray(data["scale"], dtype=float),
            feature_set=str(data.get("feature_set", BASE_FEATURE_SET)),
        )
        return cls(
            encoding=encoding,
            coef=np.asarray(data["coef"], dtype=float),
            intercept=float(data["intercept"]),
            platt_a=float(data["platt_a"]),
            platt_b=float(data["platt_b"]),
            groups=np.asarray(data["groups"], dtype=float),
            top_factors=int(data["top_factors"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> LinearParams:
        return cls.from_json(json.loads(path.read_text()))


class Scorer(Protocol):
    """Probabilities and per-feature log-odds contributions for raw model input."""

    top_factors: int

    def probabilities(self, rows: ModelRows) -> np.ndarray: ...

    def contributions(self, rows: ModelRows) -> np.ndarray: ...

    def notes(self, subjects: Sequence[str]) -> list[list[str]]: ...


class FastLinearScorer:
    """The calibrated linear model in plain numpy, encoding with the logged model's own
    encoder (`fsp.encoding.FittedEncoding`)."""

    def __init__(self, params: LinearParams) -> None:
        self.params = params
        self.top_factors = params.top_factors
        self._encoding = params.encoding
        self._weights = params.coef
        self._contribution_scale = -params.platt_a * params.coef

    def encode(self, rows: ModelRows) -> np.ndarray:
        """The standardised encoded matrix (what the classifier sees)."""
        return self._encoding.transform(rows.numeric, rows.subjects)

    def notes(self, subjects: Sequence[str]) -> list[list[str]]:
        """Per row: a note when its subject is scored as 'other'."""
        return self._encoding.notes(subjects)

    def _probabilities(self, Z: np.ndarray) -> np.ndarray:
        decision = Z @ self._weights + self.params.intercept
        logit = self.params.platt_a * decision + self.params.platt_b
        return np.clip(1.0 / (1.0 + np.exp(logit)), 0.0, 1.0)

    def probabilities(self, rows: ModelRows) -> np.ndarray:
        return self._probabilities(self.encode(rows))

    def contributions(self, rows: ModelRows) -> np.ndarray:
        return (self.encode(rows) * self._contribution_scale) @ self.params.groups

    def score(self, rows: ModelRows) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and contributions from one encoding pass."""
        Z = self.encode(rows)
        return self._probabilities(Z), (Z * self._contribution_scale) @ self.params.groups


class SklearnScorer:
    """Any logged model, through the shared ScoringModel (exact, ~2 ms per call)."""

    def __init__(self, model: ScoringModel, top_factors: int) -> None:
        self.model = model
        self.top_factors = top_factors

    def probabilities(self, rows: ModelRows) -> np.ndarray:
        return self.model.probabilities(rows.frame())

    def notes(self, subjects: Sequence[str]) -> list[list[str]]:
        return self.model.unseen_subject_notes(subjects)

    def contributions(self, rows: ModelRows) -> np.ndarray:
        return self.model.contributions(rows.frame())

    def score(self, rows: ModelRows) -> tuple[np.ndarray, np.ndarray]:
        X = rows.frame()
        return self.model.probabilities(X), self.model.contributions(X)


def scored(
    scorer: FastLinearScorer | SklearnScorer, rows: ModelRows, threshold: float, version: str
):
    """Per row: the risk fields and its top factors, worded as `fsp.scoring.score`
    words them (same order, same rounding). Plain dicts: this loop is the per-row cost
    of a batch, so everything per row is a list lookup."""
    p, contributions = scorer.score(rows)
    order = np.argsort(-np.abs(contributions), axis=1)[:, : scorer.top_factors].tolist()
    pushes = contributions.tolist()
    numeric = rows.numeric.tolist()
    subjects = rows.subjects.tolist()
    notes = scorer.notes(subjects)
    out = []
    for i, probability in enumerate(p.tolist()):
        values, push = numeric[i], pushes[i]
        factors = []
        for j in order[i]:
            column = _VALUE_COLUMN[j]
            factors.append(
                {
                    "feature": MODEL_INPUT_COLUMNS[j],
                    "label": _LABELS[j],
                    "value": subjects[i] if column < 0 else values[column],
                    "contribution": round(push[j], 4),
                    "direction": "raises risk" if push[j] > 0 else "lowers risk",
                }
            )
        out.append(
            {
                "risk_probability": probability,
                "risk_score": risk_score(probability),
                "risk_level": risk_level(probability),
                "should_send_alert": probability >= threshold,
                "top_risk_factors": factors,
                "notes": notes[i],
                "model_version": version,
            }
        )
    return out


_NO_NOTES = '],"notes":[]'


def notes_json(scorer: FastLinearScorer | SklearnScorer, subjects: Sequence[str]) -> list[str]:
    """Per row, the text that closes the factor list and carries the answer's notes."""
    return [f'],"notes":{json.dumps(n)}' if n else _NO_NOTES for n in scorer.notes(list(subjects))]


_VALUE_COLUMN = [NUMERIC_COLUMNS.index(c) if c != "subject" else -1 for c in MODEL_INPUT_COLUMNS]
_LABELS = [FACTOR_LABELS[c] for c in MODEL_INPUT_COLUMNS]


# -- the batch answer, written as JSON text directly ---------------------------------------
def _json_prefix(column: str) -> str:
    return f'{{"feature":{json.dumps(column)},"label":{json.dumps(FACTOR_LABELS[column])},"value":'


_FACTOR_PREFIX = [_json_prefix(c) for c in MODEL_INPUT_COLUMNS]
_SUBJECT = MODEL_INPUT_COLUMNS.index("subject")
_VALUE_INDEX = np.array([max(c, 0) for c in _VALUE_COLUMN])
_DIRECTION = (',"direction":"lowers risk"}', ',"direction":"raises risk"}')
_FACTOR_TEXT: dict[tuple[int, float | str, float], str] = {}
"""JSON text of a factor by (column, value, push): a batch repeats them (same tutor,
hour, subject), and writing one costs more than finding it. Cleared when large."""
_FACTOR_TEXT_MAX = 200_000


def _factor_text(column: int, value: float | str, push: float) -> str:
    """One top factor as `scored` words it (contribution = round(push, 4): "%.4f" is
    the same correctly rounded decimal), as JSON."""
    shown = json.dumps(value) if isinstance(value, str) else repr(value)
    return f'{_FACTOR_PREFIX[column]}{shown},"contribution":{push:.4f}{_DIRECTION[push > 0]}'


_LEVELS = [name for name, _ in RISK_BANDS]
_LOWER = np.array([lower for _, lower in RISK_BANDS])


def scored_json(
    scorer: FastLinearScorer | SklearnScorer,
    rows: ModelRows,
    threshold: float,
    version: str,
    tutor_ids: Sequence[str],
) -> list[str] | None:
    """`scored` for a whole batch as JSON texts in PredictionResponse's shape (with
    `tutor_id`, no session or prediction id), built from numpy arrays with one string
    format per factor instead of a dict per factor and a serialiser walking them.
    Same values as `scored` (same order, rounding and words). None when a value is not
    finite (JSON has no NaN): the caller then takes the dict path."""
    p, contributions = scorer.score(rows)
    order = np.argsort(-np.abs(contributions), axis=1)[:, : scorer.top_factors]
    push = np.take_along_axis(contributions, order, axis=1)
    values = np.take_along_axis(rows.numeric, _VALUE_INDEX[order], axis=1)
    if not (np.isfinite(p).all() and np.isfinite(push).all() and np.isfinite(values).all()):
        return None
    clipped = np.clip(p, 0.0, 1.0)
    scores = np.rint(clipped * 100).astype(np.int64).tolist()  # == risk_score (round half even)
    levels = (np.searchsorted(_LOWER, p, side="right") - 1).clip(0).tolist()
    alerts = (p >= threshold).tolist()
    head = f',"model_version":{json.dumps(version)},"tutor_id":'
    tail = ',"session_id":null,"prediction_id":null}'
    tutors = {t: json.dumps(t) for t in set(tutor_ids)}
    closes = notes_json(scorer, rows.subjects.tolist())
    text_of, subject_column = _FACTOR_TEXT, _SUBJECT
    if len(text_of) > _FACTOR_TEXT_MAX:
        text_of.clear()
    out = []
    for probability, score, level, alert, cols, pushes, vals, subject, tutor, close in zip(
        p.tolist(),
        scores,
        levels,
        alerts,
        order.tolist(),
        push.tolist(),
        values.tolist(),
        rows.subjects.tolist(),
        tutor_ids,
        closes,
        strict=True,
    ):
        parts = []
        for j, c, v in zip(cols, pushes, vals, strict=True):
            key = (j, subject if j == subject_column else v, c)
            text = text_of.get(key)
            if text is None:
                text = text_of[key] = _factor_text(*key)
            parts.append(text)
        factors = ",".join(parts)
        out.append(
            f'{{"risk_probability":{probability!r},"risk_score":{score},'
            f'"risk_level":"{_LEVELS[level]}","should_send_alert":{"true" if alert else "false"},'
            f'"top_risk_factors":[{factors}{close}{head}{tutors[tutor]}{tail}'
        )
    return out


# -- the linear model's batch answer: each distinct piece of text written once ----------------
_HISTORY = len(TUTOR_HISTORY_COLUMNS)
_CONTEXT = [j for j in range(len(MODEL_INPUT_COLUMNS)) if j >= _HISTORY]
_CONTEXT_CACHE_MAX = 50_000


class LinearAnswerWriter:
    """/predict_batch answers of the linear model as JSON texts (`scored_json`'s text,
    faster): in a linear model a feature's contribution depends on its own value only,
    so a factor's text is fixed by (feature, value). A tutor's history factors (and the
    answer's tail naming the tutor) are written once per tutor and feature snapshot,
    the session's own factors (hour, weekday, subject, age) once per distinct value,
    and each row is then assembled from those pieces."""

    def __init__(self, scorer: FastLinearScorer, threshold: float, version: str) -> None:
        self.scorer = scorer
        self.threshold = threshold
        self.tail = f',"model_version":{json.dumps(version)},"tutor_id":'
        self._mids = np.array(
            [
                f',"risk_score":{score},"risk_level":"{level}",'
                f'"should_send_alert":{alert},"top_risk_factors":['
                for score in range(101)
                for level in _LEVELS
                for alert in ("false", "true")
            ],
            dtype=object,
        )
        self._context: dict[int, dict[float | str, str]] = {j: {} for j in _CONTEXT}
        self._snapshot: object = None
        self._tutors = np.empty((0, _HISTORY + 1), dtype=object)

    def write(
        self, rows: ModelRows, tutor_rows: np.ndarray, tutor_ids: Sequence[str], snapshot: Any
    ) -> list[str] | None:
        """Answers in order; `tutor_rows` are the tutors' rows in `snapshot` (whose
        `tutor_index` has them). None when a value is not finite (JSON has no NaN)."""
        p, contributions = self.scorer.score(rows)
        if not (np.isfinite(p).all() and np.isfinite(contributions).all()):
            return None
        if not np.isfinite(rows.numeric).all():
            return None
        texts = np.empty((len(rows), len(MODEL_INPUT_COLUMNS)), dtype=object)
        tutors = self._history_texts(rows, contributions, tutor_rows, tutor_ids, snapshot)
        texts[:, :_HISTORY] = tutors[:, :_HISTORY]
        for j in _CONTEXT:
            texts[:, j] = self._context_texts(j, rows, contributions)
        order = np.argsort(-np.abs(contributions), axis=1)[:, : self.scorer.top_factors]
        factors = np.take_along_axis(texts, order, axis=1).tolist()
        clipped = np.clip(p, 0.0, 1.0)
        scores = np.rint(clipped * 100).astype(np.int64)  # == risk_score (round half even)
        levels = (np.searchsorted(_LOWER, p, side="right") - 1).clip(0)
        mids = self._mids[(scores * len(_LEVELS) + levels) * 2 + (p >= self.threshold)].tolist()
        closes = notes_json(self.scorer, rows.subjects.tolist())
        return [
            f'{{"risk_probability":{probability!r}{mid}{",".join(parts)}{close}{tail}'
            for probability, mid, parts, close, tail in zip(
                p.tolist(), mids, factors, closes, tutors[:, _HISTORY].tolist(), strict=True
            )
        ]

    def _history_texts(self, rows, contributions, tutor_rows, tutor_ids, snapshot) -> np.ndarray:
        if snapshot is not self._snapshot:  # a new snapshot: the tutors' values moved
            self._snapshot = snapshot
            self._tutors = np.empty((len(snapshot.tutor_index), _HISTORY + 1), dtype=object)
        found = self._tutors[tutor_rows]
        missing = np.flatnonzero(pd.isna(found[:, -1]))
        if len(missing):
            firsts = dict(zip(tutor_rows[missing].tolist(), missing.tolist(), strict=True))
            for tutor, i in firsts.items():
                values, pushes = rows.numeric[i].tolist(), contributions[i].tolist()
                self._tutors[tutor, :_HISTORY] = [
                    _factor_text(j, values[_VALUE_COLUMN[j]], pushes[j]) for j in range(_HISTORY)
                ]
                tail = f'{self.tail}{json.dumps(tutor_ids[i])},"session_id":null,"prediction_id":null}}'
                self._tutors[tutor, _HISTORY] = tail
            found = self._tutors[tutor_rows]
        return found

    def _context_texts(self, j: int, rows: ModelRows, contributions: np.ndarray) -> np.ndarray:
        column = _VALUE_COLUMN[j]
        values = rows.subjects if column < 0 else rows.numeric[:, column]
        codes, distinct = pd.factorize(values)
        known = self._context[j]
        if len(known) > _CONTEXT_CACHE_MAX:
            known.clear()
        firsts = np.unique(codes, return_index=True)[1]
        pieces = []
        for value, i in zip(distinct.tolist(), firsts.tolist(), strict=True):
            text = known.get(value)
            if text is None:
                text = known[value] = _factor_text(j, value, float(contributions[i, j]))
            pieces.append(text)
        return np.array(pieces, dtype=object)[codes]
