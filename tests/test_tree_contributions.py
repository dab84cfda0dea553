"""Reasons are faithful for every family that can become champion: per-feature
contributions add up, with one constant, to the calibrated log-odds. Also the
tripwire for the private scikit-learn attributes the tree walk reads."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.ensemble import HistGradientBoostingClassifier

from fsp.estimators import LogOddsBlend
from fsp.features import MODEL_INPUT_COLUMNS
from fsp.scoring import ScoringModel
from fsp.tree_contributions import PRIVATE_ATTRIBUTES, tree_contributions
from training.model import BLENDS, CANDIDATES, MONOTONE_RISK, calibrated


def _raw_input(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.random(n) for c in MODEL_INPUT_COLUMNS if c != "subject"})
    frame["local_hour"] *= 24
    frame["local_dow"] = rng.integers(0, 7, n).astype(float)
    frame["subject"] = rng.choice(
        ["AP Physics", "Chess", "Algebra II", "rare one"], n, p=[0.4, 0.3, 0.29, 0.01]
    )
    logit_ = (
        2 * frame["engagement_score"]
        - 1.5 * (frame["subject"] == "AP Physics")
        - 1.0 * frame["poor_rate_in_subject"] * (frame["student_age"] > 0.5)  # an interaction
        - 0.5
    )
    y = (rng.random(n) < 1 / (1 + np.exp(logit_))).astype(int)
    return frame[list(MODEL_INPUT_COLUMNS)], y


ROWS = 800
"""Rows the candidates are fitted on: enough for every candidate to use its features
(the identities tested hold for any fit); the fits are most of this module's time."""


@cache
def _fitted(name: str, seed: int = 0):
    """A candidate (or blend) fitted on `_raw_input(ROWS, seed)`, once per module."""
    X, y = _raw_input(ROWS, seed)
    blend = next((b for b in BLENDS if b.name == name), None)
    if blend is not None:
        members = [c for c in CANDIDATES if c.feature_set == blend.feature_set]
        return LogOddsBlend(tuple(_fitted(c.name, seed) for c in members)).fit()
    return calibrated(next(c for c in CANDIDATES if c.name == name), 0).fit(X, y)


@pytest.mark.parametrize("name", [c.name for c in (*CANDIDATES, *BLENDS)])
def test_contributions_sum_to_the_calibrated_log_odds(name) -> None:
    X, _ = _raw_input(ROWS, 0)
    model = ScoringModel(model=_fitted(name), version="1", threshold=0.5)
    unseen = X.head(200).assign(subject=["Robotics"] * 200)
    for rows in (X.head(300), unseen):
        gap = logit(model.probabilities(rows)) - model.contributions(rows).sum(axis=1)
        assert np.ptp(gap) < 1e-8, name  # one constant: the baseline


def test_tree_contributions_equal_the_boosters_decision_function() -> None:
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=2000), rng.normal(size=2000), rng.integers(0, 9, 2000)])
    X[rng.random(2000) < 0.05, 1] = np.nan  # missing values take the learned side
    y = (X[:, 0] + np.isin(X[:, 2], [2, 5]) + rng.normal(size=2000) > 0.5).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=60, categorical_features=[2]).fit(X, y)
    for name in PRIVATE_ATTRIBUTES:  # an upgrade that renames them fails here, loudly
        assert hasattr(clf, name), f"scikit-learn no longer has {name}"
    probe = X[:400].copy()
    probe[:20, 2] = 11  # a category the booster never saw
    baseline, moves = tree_contributions(clf, probe)
    assert np.allclose(baseline + moves.sum(axis=1), clf.decision_function(probe), atol=1e-9)
    assert np.abs(moves[:, 2]).mean() > 0.05  # the categorical split is credited to its column


def test_every_feature_of_a_candidates_set_gets_its_reasons() -> None:
    """An extended candidate credits the extended features (so its reasons can name
    them); a base candidate never does (it does not read them)."""
    X, _ = _raw_input(ROWS, 0)
    for candidate in CANDIDATES:
        model = ScoringModel(model=_fitted(candidate.name), version="1", threshold=0.5)
        pushes = np.abs(model.contributions(X.head(300))).sum(axis=0)
        used = pushes[MODEL_INPUT_COLUMNS.index("poor_rate_in_subject")] > 0
        assert used == (candidate.feature_set == "extended"), candidate.name


def test_extended_boosting_risk_never_falls_with_a_worse_record() -> None:
    """The boosting candidate's monotone constraints cover the new poor rates: raising
    one, all else equal, never lowers the calibrated risk."""
    X, _ = _raw_input(ROWS, 0)
    model = _fitted("gradient_boosting_extended")
    for feature in (f for f, sign in MONOTONE_RISK.items() if sign > 0):
        rows = pd.concat([X.head(40)] * 11, ignore_index=True)
        rows[feature] = np.repeat(np.linspace(0, 1, 11), 40)
        risk = model.predict_proba(rows)[:, 1].reshape(11, 40)
        assert np.all(np.diff(risk, axis=0) >= -1e-12), feature
