"""Raw session context → model input matrix, as a scikit-learn transformer.

It lives inside the logged model, so the Bento, the flows and `mlflow models
serve` all encode exactly as training did. It is deliberately plain numpy so
that the same arithmetic can be reproduced row by row (the serving fast path).

Categorical values are never listed in code: the encoder learns the subject
vocabulary from the rows it is fitted on. A subject seen at least
`MIN_CATEGORY_COUNT` times gets its own indicator column; rarer ones, and any
subject first met after training, share the `OTHER_LEVEL` column. The learned
vocabulary travels inside the model (`subjects_`) and is logged to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from fsp.features import MODEL_INPUT_COLUMNS

LOG_COLUMNS = ("tutor_tenure_days", "n_ratings", "n_rated_first_sessions", "session_count")
PLAIN_COLUMNS = (
    "avg_rating",
    "first_session_success_rate",
    "engagement_score",
    "engagement_recent_mean",
    "reschedule_rate",
    "no_show_rate",
    "student_age",
)
EXTENDED_LOG_COLUMNS = ("n_first_sessions_in_subject", "n_first_sessions_in_age_band")
EXTENDED_PLAIN_COLUMNS = (
    "recent_poor_rate",
    "engagement_trend",
    "poor_rate_in_subject",
    "poor_rate_in_age_band",
)
FEATURE_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "base": (LOG_COLUMNS, PLAIN_COLUMNS),
    "extended": (LOG_COLUMNS + EXTENDED_LOG_COLUMNS, PLAIN_COLUMNS + EXTENDED_PLAIN_COLUMNS),
}
"""(log columns, plain columns) each feature set encodes. Every model input column is
computed for every session; a model encodes only its set's, so the extended history
(recency, trend, subject and age-band matches) is used only by a candidate trained on
it, and such a candidate becomes champion only where the holdout proves it pays."""
BASE_FEATURE_SET: Final = "base"
CYCLES = (("local_hour", 24.0), ("local_dow", 7.0))
MIN_CATEGORY_COUNT: Final = 20
"""Training rows a subject needs before it gets its own column; rarer ones share 'other'."""
OTHER_LEVEL: Final = "<other>"
"""The shared level of rare and unseen subjects (angle brackets: no platform spells it so)."""


def learn_vocabulary(values: Sequence[str] | np.ndarray, min_count: int) -> tuple[str, ...]:
    """Values seen at least `min_count` times, most frequent first (ties by name)."""
    counts = pd.Series(np.asarray(values, dtype=object)).astype(str).value_counts()
    kept = counts[counts >= min_count]
    return tuple(sorted(kept.index.tolist(), key=lambda v: (-int(kept[v]), v)))


BINNED_COLUMNS = ("tutor_tenure_days", "student_age", "local_hour")
"""Inputs whose effect need not be a straight line (a risk can be highest for the
youngest and the teenage students, or early and late in the day): each also gets
indicator columns over quantile bins learned from the training rows, so even the
linear model can follow a bend. Only the bin count is fixed here, never an edge."""
N_BINS: Final = 6
NUMERIC_INPUTS: tuple[str, ...] = tuple(c for c in MODEL_INPUT_COLUMNS if c != "subject")
"""The model input without `subject`, in MODEL_INPUT_COLUMNS order (the numeric matrix
both the logged model and the serving fast path encode)."""
_INDEX = {c: i for i, c in enumerate(NUMERIC_INPUTS)}


def learn_bin_edges(numeric: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Inner quantile edges of each binned input (duplicates dropped)."""
    qs = np.linspace(0, 1, N_BINS + 1)[1:-1]
    return tuple(
        tuple(np.unique(np.quantile(numeric[:, _INDEX[c]], qs)).tolist()) for c in BINNED_COLUMNS
    )


def numeric_names(
    bin_edges: Sequence[Sequence[float]] = (), feature_set: str = BASE_FEATURE_SET
) -> list[str]:
    """Names of the encoded columns before the subject's, in order."""
    log_columns, plain_columns = FEATURE_SETS[feature_set]
    names = [f"log_{c}" for c in log_columns] + list(plain_columns)
    for column, _ in CYCLES:
        names += [f"{column}_sin", f"{column}_cos"]
    for column, edges in zip(BINNED_COLUMNS, bin_edges, strict=False):
        names += [f"{column}_bin{k}" for k in range(len(edges) + 1)]
    return names


def encoded_names(
    subjects: Sequence[str],
    subject_as_code: bool = False,
    bin_edges: Sequence[Sequence[float]] = (),
    feature_set: str = BASE_FEATURE_SET,
) -> list[str]:
    """Names of the encoded columns, in order, for a learned vocabulary and bins."""
    numeric = numeric_names(bin_edges, feature_set)
    if subject_as_code:
        return [*numeric, "subject"]
    return numeric + [f"subject_{s}" for s in (*subjects, OTHER_LEVEL)]


def subject_codes(subjects: np.ndarray, code_of: dict[str, int]) -> np.ndarray:
    """Each subject's index in the vocabulary; rare and unseen ones share the next index."""
    other = len(code_of)
    return np.fromiter((code_of.get(s, other) for s in subjects.tolist()), np.intp, len(subjects))


def subject_one_hot(subjects: np.ndarray, code_of: dict[str, int]) -> np.ndarray:
    """Indicator columns for the vocabulary plus the last, shared 'other' column."""
    codes = subject_codes(subjects, code_of)
    one_hot = np.zeros((len(subjects), len(code_of) + 1))
    one_hot[np.arange(len(subjects)), codes] = 1.0
    return one_hot


def _bins(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    one_hot = np.zeros((len(values), len(edges) + 1))
    one_hot[np.arange(len(values)), np.searchsorted(np.asarray(edges), values, side="right")] = 1
    return one_hot


def encode_numeric(
    numeric: np.ndarray,
    subjects: np.ndarray,
    code_of: dict[str, int],
    bin_edges: Sequence[Sequence[float]],
    subject_as_code: bool = False,
    feature_set: str = BASE_FEATURE_SET,
) -> np.ndarray:
    """THE encoding (unscaled), on arrays: log counts, plain values (of the feature
    set's columns), sin/cos of cycles, quantile-bin indicators, and the subject as
    one-hot columns or (for trees with native categorical splits) one code. The logged
    model and the serving fast path both call this function."""
    X = numeric
    log_columns, plain_columns = FEATURE_SETS[feature_set]
    parts = [np.log1p(np.clip(X[:, [_INDEX[c] for c in log_columns]], 0, None))]
    parts.append(X[:, [_INDEX[c] for c in plain_columns]])
    for column, period in CYCLES:
        angle = 2.0 * np.pi * X[:, _INDEX[column]] / period
        parts.append(np.column_stack([np.sin(angle), np.cos(angle)]))
    for column, edges in zip(BINNED_COLUMNS, bin_edges, strict=False):
        parts.append(_bins(X[:, _INDEX[column]], edges))
    if subject_as_code:
        parts.append(subject_codes(subjects, code_of).astype(float)[:, None])
    else:
        parts.append(subject_one_hot(subjects, code_of))
    return np.hstack(parts)


def input_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The model input frame as (numeric matrix in NUMERIC_INPUTS order, subjects)."""
    missing = [c for c in MODEL_INPUT_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"model input lacks columns: {', '.join(missing)}")
    numeric = frame[list(NUMERIC_INPUTS)].to_numpy(dtype=float)
    return numeric, frame["subject"].astype(str).to_numpy(dtype=object)


def subject_notes(subjects, vocabulary) -> list[list[str]]:
    """Per row: why its subject counted as 'other' (unseen or too rare in training), else []."""
    known = set(vocabulary)
    return [[] if s in known else [unseen_subject_note(s)] for s in subjects]


def unseen_subject_note(subject: str) -> str:
    """The note an answer carries for a subject the model scores as 'other'."""
    return f"subject {subject!r} was not seen in training (often enough); scored as 'other'"


@dataclass(frozen=True)
class FittedEncoding:
    """The fitted encoding as plain numpy: what `RiskFeatureEncoder.transform` computes,
    held apart from sklearn so the serving fast path runs the very same code on arrays
    (`service.fastpath`), with the learned vocabulary, bins, means and scales."""

    subjects: tuple[str, ...]
    bin_edges: tuple[tuple[float, ...], ...]
    mean: np.ndarray
    scale: np.ndarray
    subject_as_code: bool = False
    feature_set: str = BASE_FEATURE_SET

    @cached_property
    def code_of(self) -> dict[str, int]:
        """Each subject's index in the vocabulary."""
        return {s: i for i, s in enumerate(self.subjects)}

    def transform(self, numeric: np.ndarray, subjects: np.ndarray) -> np.ndarray:
        """The standardised encoded matrix (what the classifier sees)."""
        raw = encode_numeric(
            numeric, subjects, self.code_of, self.bin_edges, self.subject_as_code, self.feature_set
        )
        return (raw - self.mean) / self.scale

    def notes(self, subjects: Sequence[str]) -> list[list[str]]:
        """Per row: a note when its subject is scored as 'other'."""
        return subject_notes(subjects, self.subjects)


class RiskFeatureEncoder(TransformerMixin, BaseEstimator):
    """Encodes the raw context and standardises every encoded column (fitted mean/std).

    The subject vocabulary (`subjects_`) is learned in `fit`; see the module docstring.
    With `subject_as_code` the subject is one unscaled integer column (its index in
    the vocabulary), for a classifier that splits categories natively; trees follow
    bends by themselves, so they take `with_bins=False`. `feature_set` names the
    columns encoded (FEATURE_SETS)."""

    feature_set: str = BASE_FEATURE_SET
    """Class-level default: an encoder saved before feature sets existed loads as 'base'."""

    def __init__(
        self,
        min_category_count: int = MIN_CATEGORY_COUNT,
        subject_as_code: bool = False,
        with_bins: bool = True,
        feature_set: str = BASE_FEATURE_SET,
    ) -> None:
        self.min_category_count = min_category_count
        self.subject_as_code = subject_as_code
        self.with_bins = with_bins
        self.feature_set = feature_set

    def fit(self, X: pd.DataFrame, y=None):
        numeric, subjects = input_arrays(X)
        self.subjects_ = learn_vocabulary(subjects, self.min_category_count)
        self.bin_edges_ = learn_bin_edges(numeric) if self.with_bins else ()
        matrix = self._raw(X)
        self.mean_ = matrix.mean(axis=0)
        scale = matrix.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        if self.subject_as_code:  # a category code is a label, not a quantity
            self.mean_[-1], self.scale_[-1] = 0.0, 1.0
        self.n_features_in_ = len(MODEL_INPUT_COLUMNS)
        return self

    def _raw(self, X: pd.DataFrame) -> np.ndarray:
        numeric, subjects = input_arrays(X)
        code_of = {s: i for i, s in enumerate(self.subjects_)}
        return encode_numeric(
            numeric, subjects, code_of, self.bin_edges_, self.subject_as_code, self.feature_set
        )

    def fitted(self) -> FittedEncoding:
        """The fitted encoding, apart from sklearn (the serving fast path's encoder)."""
        return FittedEncoding(
            subjects=tuple(self.subjects_),
            bin_edges=tuple(tuple(edges) for edges in self.bin_edges_),
            mean=np.asarray(self.mean_, dtype=float),
            scale=np.asarray(self.scale_, dtype=float),
            subject_as_code=self.subject_as_code,
            feature_set=self.feature_set,
        )

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        return self.fitted().transform(*input_arrays(X))

    def known_subject(self, subject: str) -> bool:
        """Whether the subject has its own level (else it is scored as 'other')."""
        return subject in self.subjects_

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        names = encoded_names(
            self.subjects_, self.subject_as_code, self.bin_edges_, self.feature_set
        )
        return np.array(names, dtype=object)
