"""Raw session context → model input matrix, as a scikit-learn transformer.

It lives inside the logged model, so the Bento, the flows and `mlflow models
serve` all encode exactly as training did. It is deliberately plain numpy so
that the same arithmetic can be reproduced row by row (the serving fast path)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from training.constants import SUBJECTS
from training.features import MODEL_INPUT_COLUMNS

LOG_COLUMNS = ("tutor_tenure_days", "n_ratings", "n_rated_first_sessions", "session_count")
PLAIN_COLUMNS = (
    "avg_rating",
    "first_session_success_rate",
    "engagement_score",
    "reschedule_rate",
    "no_show_rate",
    "student_age",
)
CYCLES = (("local_hour", 24.0), ("local_dow", 7.0))


def encoded_names() -> list[str]:
    """Names of the encoded columns, in order."""
    names = [f"log_{c}" for c in LOG_COLUMNS] + list(PLAIN_COLUMNS)
    for column, _ in CYCLES:
        names += [f"{column}_sin", f"{column}_cos"]
    return names + [f"subject_{s}" for s in SUBJECTS]


def raw_matrix(frame: pd.DataFrame) -> np.ndarray:
    """Unscaled encoded matrix: log counts, plain values, sin/cos of cycles, subject one-hot."""
    missing = [c for c in MODEL_INPUT_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"model input lacks columns: {', '.join(missing)}")
    parts = [np.log1p(np.clip(frame[list(LOG_COLUMNS)].to_numpy(dtype=float), 0, None))]
    parts.append(frame[list(PLAIN_COLUMNS)].to_numpy(dtype=float))
    for column, period in CYCLES:
        angle = 2.0 * np.pi * frame[column].to_numpy(dtype=float) / period
        parts.append(np.column_stack([np.sin(angle), np.cos(angle)]))
    subject = frame["subject"].astype(str).to_numpy()
    parts.append((subject[:, None] == np.array(SUBJECTS)[None, :]).astype(float))
    return np.hstack(parts)


class RiskFeatureEncoder(TransformerMixin, BaseEstimator):
    """Encodes the raw context and standardises every encoded column (fitted mean/std).

    Unknown subjects encode as all-zero one-hot columns before scaling."""

    def fit(self, X: pd.DataFrame, y=None):
        matrix = raw_matrix(X)
        self.mean_ = matrix.mean(axis=0)
        scale = matrix.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        self.n_features_in_ = len(MODEL_INPUT_COLUMNS)
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return (raw_matrix(X) - self.mean_) / self.scale_

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.array(encoded_names(), dtype=object)
