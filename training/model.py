"""Candidate models, the time-ordered split, threshold choice and evaluation.

Each candidate must earn its place on the time-ordered holdout: the best AUC wins,
and within the tie tolerance the simpler one (the reference logistic regression,
then the same with learned bins, then gradient boosting with native categorical
splits, then their blend; each first on the base features, then on the extended
ones), so added complexity, in the model or in its features, is kept only where
the holdout proves it pays.

Every candidate maps the raw context (fsp.features.MODEL_INPUT_COLUMNS) to
a calibrated probability of a poor first session: encoder + classifier, then
Platt/isotonic calibration fitted on out-of-fold scores (ensemble=False keeps a
single fitted classifier, so a linear model's contributions stay exact)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from fsp.constants import PRECISION_TARGET
from fsp.encoding import BASE_FEATURE_SET, RiskFeatureEncoder, numeric_names
from fsp.estimators import LogOddsBlend


@dataclass(frozen=True)
class Candidate:
    """A model family on a feature set: its name, how simple it is (lower wins ties)
    and how to build it."""

    name: str
    simplicity_rank: int
    calibration: str
    build: Callable[[int], Pipeline]
    feature_set: str = BASE_FEATURE_SET


def _logistic(seed: int, feature_set: str = BASE_FEATURE_SET) -> Pipeline:
    """The reference: standardised features, class-weighted logistic regression."""
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    encoder = RiskFeatureEncoder(with_bins=False, feature_set=feature_set)
    return Pipeline([("encode", encoder), ("clf", clf)])


def _logistic_binned(seed: int, feature_set: str = BASE_FEATURE_SET) -> Pipeline:
    """The reference plus quantile-bin indicators (bends in tenure, age and hour)."""
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    return Pipeline([("encode", RiskFeatureEncoder(feature_set=feature_set)), ("clf", clf)])


MONOTONE_RISK = {
    "first_session_success_rate": -1,
    "avg_rating": -1,
    "reschedule_rate": 1,
    "no_show_rate": 1,
    "recent_poor_rate": 1,
    "poor_rate_in_subject": 1,
    "poor_rate_in_age_band": 1,
}
"""Directions the risk must follow whatever the model (model-behaviour tests check them)."""


def _boosting(seed: int, feature_set: str = BASE_FEATURE_SET) -> Pipeline:
    """Trees on the numeric columns plus the subject as one natively categorical column:
    the family that finds interactions (a tutor's subject with the student's age, the
    hour with the age) no linear model sees."""
    names = numeric_names(feature_set=feature_set)
    constraints = [MONOTONE_RISK.get(name, 0) for name in names] + [0]
    clf = HistGradientBoostingClassifier(
        monotonic_cst=constraints,
        categorical_features=[len(names)],
        max_iter=120,
        learning_rate=0.08,
        max_leaf_nodes=15,
        l2_regularization=1.0,
        min_samples_leaf=40,
        random_state=seed,
    )
    encoder = RiskFeatureEncoder(subject_as_code=True, with_bins=False, feature_set=feature_set)
    return Pipeline([("encode", encoder), ("clf", clf)])


EXTENDED = "extended"
EXTENDED_SUFFIX = "_extended"

BLEND = Candidate("log_odds_blend", 3, "members", lambda seed: LogOddsBlend())
"""Built from the base candidates once they are fitted (training.train.blends_of)."""
BLEND_EXTENDED = Candidate(
    "log_odds_blend" + EXTENDED_SUFFIX, 7, "members", lambda seed: LogOddsBlend(), EXTENDED
)
"""The same blend of the extended-feature candidates."""
BLENDS = (BLEND, BLEND_EXTENDED)

_FAMILIES = (
    ("logistic_regression", _logistic),
    ("logistic_regression_binned", _logistic_binned),
    ("gradient_boosting", _boosting),
)


def _on(build: Callable[..., Pipeline], feature_set: str) -> Callable[[int], Pipeline]:
    """The family's builder with the feature set fixed."""
    return lambda seed: build(seed, feature_set)


CANDIDATES: tuple[Candidate, ...] = (
    *(Candidate(name, rank, "sigmoid", build) for rank, (name, build) in enumerate(_FAMILIES)),
    *(
        Candidate(name + EXTENDED_SUFFIX, 4 + rank, "sigmoid", _on(build, EXTENDED), EXTENDED)
        for rank, (name, build) in enumerate(_FAMILIES)
    ),
)
"""Every family on the base features, then on the extended ones. Ranks: every base
candidate (and their blend) is simpler than every extended one, so the extended history
is kept only when it beats the best base candidate by more than the tie tolerance:
the champion never pays for features that add only noise."""


def calibrated(candidate: Candidate, seed: int) -> CalibratedClassifierCV:
    """The candidate wrapped in out-of-fold calibration with a single final fit."""
    return CalibratedClassifierCV(
        candidate.build(seed), method=candidate.calibration, cv=3, ensemble=False
    )


def time_split(starts: pd.Series, cutoff, holdout_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, holdout): the holdout is the last `holdout_days` before cutoff."""
    boundary = pd.Timestamp(cutoff) - pd.Timedelta(days=holdout_days)
    holdout = (starts >= boundary).to_numpy()
    return ~holdout, holdout


def cross_validated_auc(candidate: Candidate, X, y, folds: int, seed: int) -> np.ndarray:
    """Stratified k-fold AUC of the uncalibrated candidate on the training part."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for fit_idx, val_idx in splitter.split(X, y):
        model = candidate.build(seed).fit(X.iloc[fit_idx], y[fit_idx])
        scores.append(roc_auc_score(y[val_idx], model.predict_proba(X.iloc[val_idx])[:, 1]))
    return np.array(scores)


def choose_threshold(
    y: np.ndarray, p: np.ndarray, target: float = PRECISION_TARGET, min_alerts: int = 10
) -> tuple[float, str]:
    """The lowest threshold whose holdout precision reaches `target` with at least
    `min_alerts` alerts (most recall at the precision target); else the F1-best one.
    Returns (threshold, rule) with rule 'precision>=0.60' or 'f1_best'."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]
    alerts = len(p) - np.searchsorted(np.sort(p), thresholds, side="left")
    ok = (precision >= target) & (alerts >= min_alerts)
    if ok.any():
        return float(thresholds[np.argmax(ok)]), f"precision>={target:.2f}"
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1))]), "f1_best"


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics logged for every model and every monitoring window."""
    predicted = (p >= threshold).astype(int)
    two_classes = len(np.unique(y)) == 2
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return {
        "auc_roc": float(roc_auc_score(y, p)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if two_classes else float("nan"),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(y, predicted)),
        "brier": float(brier_score_loss(y, p)),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
        "sample_size": float(len(y)),
        "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
    }


def pick_best(results: dict[str, float], tolerance: float) -> str:
    """Highest holdout AUC wins; within `tolerance` of it, the simplest candidate."""
    best = max(results.values())
    known = (*CANDIDATES, *BLENDS)
    close = [c for c in known if c.name in results and results[c.name] >= best - tolerance]
    return min(close, key=lambda c: c.simplicity_rank).name
