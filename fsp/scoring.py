"""Scoring: the one way a model turns sessions into risk predictions, with reasons.

Used by the Bento service and by the scoring flow alike. Reasons are faithful to
the serving model: for a calibrated linear model they are exact (each feature's
share of the log-odds, relative to an average training session, summing with
the baseline to the prediction); for gradient boosting they are the exact path
contributions of its trees (`fsp.tree_contributions`, scaled by the Platt
calibration: they too sum with a baseline to the calibrated log-odds); for any
blend of candidates the mean of its members' (its log-odds are the mean of theirs);
for any other model they are occlusion attributions (the change in log-odds when that
feature's encoded columns are set to their training average)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from scipy.special import logit
from sklearn.ensemble import HistGradientBoostingClassifier

from fsp.constants import CHAMPION_ALIAS, risk_level, risk_score
from fsp.encoding import subject_notes
from fsp.estimators import LogOddsBlend
from fsp.features import FACTOR_LABELS, MODEL_INPUT_COLUMNS
from fsp.model_store import aliased_version, load_sklearn
from fsp.tree_contributions import tree_contributions

TOP_FACTORS = 5


def _raw_feature_of(encoded: str) -> str:
    if encoded == "subject" or encoded.startswith("subject_"):
        return "subject"
    for column in MODEL_INPUT_COLUMNS:
        if encoded in (column, f"log_{column}", f"{column}_sin", f"{column}_cos"):
            return column
        if encoded.startswith(f"{column}_bin") and encoded[len(column) + 4 :].isdigit():
            return column
    raise ValueError(f"encoded column {encoded!r} maps to no input feature")


def grouping(names) -> np.ndarray:
    """Matrix (encoded columns x input features): 1 where a column belongs to a feature."""
    groups = np.zeros((len(names), len(MODEL_INPUT_COLUMNS)))
    for i, name in enumerate(names):
        groups[i, MODEL_INPUT_COLUMNS.index(_raw_feature_of(name))] = 1.0
    return groups


@dataclass
class ScoringModel:
    """A fitted calibrated model opened for scoring and explaining."""

    model: Any
    version: str
    threshold: float
    run_id: str = ""
    name: str = ""

    @property
    def _parts(self):
        calibrated = self.model.calibrated_classifiers_[0]
        return calibrated.estimator, calibrated.calibrators[0]

    @cached_property
    def members(self) -> list[ScoringModel]:
        """A blend's members, each opened for scoring (empty for a single model)."""
        if not isinstance(self.model, LogOddsBlend):
            return []
        return [ScoringModel(m, self.version, self.threshold) for m in self.model.members]

    @property
    def is_linear(self) -> bool:
        """True when reasons are exact (a linear classifier with Platt calibration)."""
        if self.members:
            return False
        pipeline, calibrator = self._parts
        return hasattr(pipeline.named_steps["clf"], "coef_") and hasattr(calibrator, "a_")

    @property
    def encoder(self):
        """The fitted `RiskFeatureEncoder` (it holds the learned vocabulary; a blend's
        members learn the same one from the same rows)."""
        if self.members:
            return self.members[0].encoder
        return self._parts[0].named_steps["encode"]

    @cached_property
    def _groups(self) -> np.ndarray:
        return grouping(self.encoder.get_feature_names_out().tolist())

    def unseen_subject_notes(self, subjects) -> list[list[str]]:
        """Per row: a note when the subject has no level of its own in this model."""
        return subject_notes(subjects, self.encoder.subjects_)

    def encode(self, X: pd.DataFrame) -> np.ndarray:
        """The encoded, standardised matrix the classifier sees."""
        return self.encoder.transform(X)

    def proba_from_encoded(self, Z: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from an encoded matrix."""
        pipeline, calibrator = self._parts
        return np.clip(calibrator.predict(pipeline.named_steps["clf"].decision_function(Z)), 0, 1)

    def probabilities(self, X: pd.DataFrame) -> np.ndarray:
        """P(poor first session) for each row of raw model input."""
        if self.members:
            return np.clip(self.model.predict_proba(X)[:, 1], 0, 1)
        return self.proba_from_encoded(self.encode(X))

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """Per row and input feature: its push on the log-odds of a poor session."""
        if self.members:  # the blend's log-odds are the mean of its members'
            return np.mean([m.contributions(X) for m in self.members], axis=0)
        Z = self.encode(X)
        pipeline, calibrator = self._parts
        clf = pipeline.named_steps["clf"]
        if self.is_linear:
            return (-calibrator.a_ * Z * clf.coef_[0]) @ self._groups
        if isinstance(clf, HistGradientBoostingClassifier):
            _, moves = tree_contributions(clf, Z)
            scale = -calibrator.a_ if hasattr(calibrator, "a_") else 1.0
            return (scale * moves) @ self._groups
        return self._occlusion(Z)

    def _occlusion(self, Z: np.ndarray) -> np.ndarray:
        """Any other family: the change in log-odds when a feature's encoded columns are
        set to their training average (0 after standardisation)."""
        base = _safe_logit(self.proba_from_encoded(Z))
        out = np.empty((len(Z), len(MODEL_INPUT_COLUMNS)))
        for j in range(len(MODEL_INPUT_COLUMNS)):
            occluded = Z.copy()
            occluded[:, self._groups[:, j] > 0] = 0.0
            out[:, j] = base - _safe_logit(self.proba_from_encoded(occluded))
        return out


def _safe_logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, 1e-9, 1 - 1e-9))


def top_factors(X: pd.DataFrame, contributions: np.ndarray, k: int = TOP_FACTORS):
    """For each row, the k features with the largest push, in plain words.

    Plain lists and dicts, no pandas per row: this runs for every scored session."""
    order = np.argsort(-np.abs(contributions), axis=1)[:, :k].tolist()
    pushes = contributions.tolist()
    columns = [X[c].tolist() for c in MODEL_INPUT_COLUMNS]
    labels = [FACTOR_LABELS[c] for c in MODEL_INPUT_COLUMNS]
    return [
        [
            {
                "feature": MODEL_INPUT_COLUMNS[j],
                "label": labels[j],
                "value": columns[j][i],
                "contribution": round(push[j], 4),
                "direction": "raises risk" if push[j] > 0 else "lowers risk",
            }
            for j in row_order
        ]
        for i, (row_order, push) in enumerate(zip(order, pushes, strict=True))
    ]


def score(model: ScoringModel, X: pd.DataFrame) -> pd.DataFrame:
    """Risk predictions for raw model input: probability, score, band, alert flag, reasons."""
    p = model.probabilities(X)
    alert = p >= model.threshold
    probabilities = p.tolist()
    return pd.DataFrame(
        {
            "risk_probability": p,
            "risk_score": [risk_score(v) for v in probabilities],
            "risk_level": [risk_level(v) for v in probabilities],
            "risk_prediction": alert.astype(int),
            "should_send_alert": alert,
            "top_risk_factors": top_factors(X, model.contributions(X)),
            "model_version": model.version,
        }
    )


def load_scoring_model(
    client: MlflowClient, name: str, alias: str = CHAMPION_ALIAS
) -> ScoringModel:
    """The version holding `alias` (the champion by default), opened for scoring."""
    version = aliased_version(client, name, alias)
    return ScoringModel(
        model=load_sklearn(f"models:/{name}/{version.version}"),
        version=str(version.version),
        threshold=float(version.tags.get("alert_threshold", "0.5")),
        run_id=version.run_id or "",
        name=name,
    )
