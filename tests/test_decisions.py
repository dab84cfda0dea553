"""The decision functions, pure: the alert threshold, the best candidate, the
promotion rule, the delivery back-off and which faults are worth a retry."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

import numpy as np
import psycopg
import pytest

from alerting.queue import backoff
from flows.retrying import is_transient
from fsp.errors import DatabaseUnavailable, InvalidInput, NoChampion, RegistryUnavailable
from training.model import choose_threshold, pick_best
from training.registry import judge
from training.train import registration_notices_logged


def test_threshold_is_the_lowest_reaching_the_precision_target_with_enough_alerts() -> None:
    p = np.linspace(0.01, 0.99, 200)
    y = (p > 0.7).astype(int)  # every session above 0.7 is poor: precision 1 from there
    threshold, rule = choose_threshold(y, p, target=0.6, min_alerts=10)
    assert rule == "precision>=0.60"
    predicted = p >= threshold
    assert y[predicted].mean() >= 0.6 and predicted.sum() >= 10
    lower = p[p < threshold].max()  # one step lower no longer reaches the target
    assert y[p >= lower].mean() < 0.6 or (p >= lower).sum() < 10


def test_threshold_falls_back_to_the_best_f1_when_the_target_is_out_of_reach() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(int)
    p = rng.random(500)  # no skill: precision never reaches 0.6 with 10 alerts
    threshold, rule = choose_threshold(y, p, target=0.6, min_alerts=10)
    assert rule == "f1_best" and 0 < threshold < 1


@pytest.mark.parametrize(
    ("aucs", "winner"),
    [
        ({"logistic_regression": 0.78, "gradient_boosting": 0.80}, "gradient_boosting"),
        ({"logistic_regression": 0.798, "gradient_boosting": 0.80}, "logistic_regression"),
        (
            {
                "logistic_regression": 0.79,
                "logistic_regression_binned": 0.796,
                "log_odds_blend": 0.8,
            },
            "logistic_regression_binned",
        ),
        ({"gradient_boosting": 0.7, "log_odds_blend": 0.75}, "log_odds_blend"),
        # the extended features must beat every base candidate by more than the tolerance
        (
            {
                "logistic_regression": 0.796,
                "gradient_boosting": 0.797,
                "logistic_regression_extended": 0.8,
                "gradient_boosting_extended": 0.801,
            },
            "logistic_regression",
        ),
        (
            {
                "logistic_regression": 0.79,
                "log_odds_blend": 0.795,
                "logistic_regression_extended": 0.801,
                "log_odds_blend_extended": 0.803,
            },
            "logistic_regression_extended",
        ),
    ],
)
def test_the_best_holdout_auc_wins_and_ties_go_to_the_simpler(aucs, winner) -> None:
    assert pick_best(aucs, tolerance=0.005) == winner


@pytest.mark.parametrize(
    ("challenger", "champion", "promoted"),
    [(0.70, None, True), (0.806, 0.80, True), (0.804, 0.80, False), (0.75, 0.80, False)],
)
def test_the_gate_promotes_only_a_clear_winner(challenger, champion, promoted) -> None:
    decided, reason = judge(challenger, champion, margin=0.005)
    assert decided is promoted and reason
    if champion is not None:
        assert f"{champion:.4f}" in reason


def test_back_off_doubles_from_the_base() -> None:
    waits = [backoff(n, 60) for n in range(0, 5)]
    assert waits == [timedelta(seconds=s) for s in (60, 60, 120, 240, 480)]


@pytest.mark.parametrize(
    ("fault", "transient"),
    [
        (DatabaseUnavailable("restarting"), True),
        (RegistryUnavailable("blinked"), True),
        (psycopg.OperationalError("connection lost"), True),
        (ConnectionResetError(), True),
        (NoChampion("train first"), False),
        (InvalidInput("bad --now"), False),
        (ValueError("a bug"), False),
        (None, False),
    ],
)
def test_only_transient_faults_are_retried(fault, transient) -> None:
    assert is_transient(fault) is transient


# -- MLflow's registration notices ---------------------------------------------------------


def test_registration_notices_go_to_the_log_and_warnings_pass_through(capsys, caplog):
    """A clean `fsp train` prints nothing on stderr: MLflow's registration notices are
    logged instead; a warning printed meanwhile still reaches the terminal."""
    with caplog.at_level(logging.INFO, logger="training.train"), registration_notices_logged():
        print("Successfully registered model 'first_session_risk'.", file=sys.stderr)
        print("Created version '3' of model 'first_session_risk'.", file=sys.stderr)
        print("UserWarning: something worth seeing", file=sys.stderr)
    assert capsys.readouterr().err == "UserWarning: something worth seeing\n"
    assert [r.getMessage() for r in caplog.records] == [
        "mlflow: Successfully registered model 'first_session_risk'.",
        "mlflow: Created version '3' of model 'first_session_risk'.",
    ]
