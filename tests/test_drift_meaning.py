"""Drift that means something, and a performance trigger relative to the champion.

Pure layer: which columns are compared and in what form, the bootstrap interval and
the decision. Services layer: on the generator's stationary platforms (3 seeds) at
most one feature is flagged and no retrain is requested; on a shifted platform the
monitoring flow flags drift, requests a retrain, and the retrained challenger beats
the champion on the sessions after the shift and is promoted."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import DEMO_NOW, configure_env, create_database, drop_database

from fsp.features import MODEL_INPUT_COLUMNS
from fsp.settings import get_settings
from monitoring.drift import apply_view, column_kind, drift_report, drift_view
from monitoring.live_check import bootstrap_auc_interval, live_check, resampled_aucs

WINDOW = 28


# --- pure ---------------------------------------------------------------------------


def test_every_model_column_has_a_rule_and_growth_counts_become_shares() -> None:
    kinds = {c: column_kind(c) for c in MODEL_INPUT_COLUMNS}
    assert kinds["subject"] == "categorical" and kinds["local_dow"] == "weekly_calendar"
    assert kinds["session_count"] == "base_count" and kinds["n_ratings"] == "growth_count"
    view = drift_view(30)
    assert "session_count" in view.excluded and "local_dow" in view.excluded
    assert "local_dow" in drift_view(28).compared  # four whole weeks
    frame = pd.DataFrame([dict.fromkeys(MODEL_INPUT_COLUMNS, 1.0)]).assign(
        subject="Chess", session_count=9.0, n_ratings=5.0
    )
    assert apply_view(frame, view).loc[0, "n_ratings"] == pytest.approx(0.5)


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct scores", "tied scores"])
def test_resampled_aucs_equal_roc_auc_score_row_by_row(decimals) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    y = (rng.random(60) < 0.25).astype(int)
    p = rng.random(60) if decimals is None else np.round(rng.random(60), decimals)
    idx = rng.integers(0, 60, (40, 60))
    idx[3] = np.flatnonzero(y == 0)[0]  # one class only: no AUC, skipped
    kept = [row for row in idx if 0 < y[row].sum() < len(row)]
    expected = [roc_auc_score(y[row], p[row]) for row in kept]
    assert len(kept) < len(idx)
    assert np.allclose(resampled_aucs(y, p, idx), expected, rtol=0, atol=1e-12)


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_sessions() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (200, 2000):
        y = (rng.random(n) < 0.2).astype(int)
        p = np.clip(0.2 + 0.2 * (y - 0.2) + rng.normal(0, 0.15, n), 0, 1)
        low, high = bootstrap_auc_interval(y, p, 200)
        check = live_check(y, p, 0.9, 0.02, 0.6, 200)
        assert low <= check.live_auc <= high  # type: ignore[operator]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    assert bootstrap_auc_interval(np.zeros(10), np.ones(10), 100) != (0.5, 0.5)


@pytest.mark.parametrize(
    ("champion_auc", "signal", "retrain", "why"),
    [
        (0.86, 1.0, False, "as good as its holdout"),
        (0.86, 0.35, True, "a quarter of its skill lost: below its own figure"),
        (None, 0.35, False, "no holdout figure: only the floor applies"),
        (0.86, 0.0, True, "chance level: below the floor too"),
    ],
)
def test_the_trigger_is_relative_to_the_champions_own_holdout_auc(
    champion_auc, signal, retrain, why
) -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(1500) < 0.2).astype(int)
    p = 1 / (1 + np.exp(-(signal * 3.0 * (y - 0.5) + rng.normal(0, 1, len(y)))))
    check = live_check(y, p, champion_auc, 0.02, 0.6, 200)
    assert check.retrain is retrain, (why, check)
    assert check.as_dict()["interval"][0] <= check.live_auc


# --- real PostgreSQL, MLflow, Prefect -----------------------------------------------


def _platform(server_url: str, seed: int, shift: bool = False, tutors: int = 600) -> str:
    from fsp import demo_data
    from fsp.db import connect, upgrade

    url = create_database(server_url)
    spec = demo_data.DemoSpec(tutors, 150, seed, DEMO_NOW, shift=shift)
    with connect(url) as conn:
        upgrade(conn)
        demo_data.write(conn, demo_data.generate(spec))
    return url


@pytest.mark.services
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_platform_that_does_not_change_flags_at_most_one_feature(server_url, seed) -> None:
    """Reference: the last WINDOW days before a cut-off; current: the WINDOW days
    after it, each session featurised as of its start (as scoring sees it)."""
    from training.dataset import build_training_set

    url = _platform(server_url, seed)
    try:
        with psycopg.connect(url) as conn:
            ts = build_training_set(conn, DEMO_NOW)
    finally:
        drop_database(server_url, url)
    cut = DEMO_NOW - timedelta(days=WINDOW)
    ref = ts.X[((ts.starts >= cut - timedelta(days=WINDOW)) & (ts.starts < cut)).to_numpy()]
    cur = ts.X[(ts.starts >= cut).to_numpy()]
    report = drift_report(ref, cur, get_settings().monitor_drift_share, WINDOW)
    flagged = report.figures["drifted_columns"]
    print(f"stationary seed {seed}: flagged {flagged}")
    assert len(flagged) <= 1 and not report.figures["drifted"], report.figures


def _backfill_predictions(url: str, since, until) -> int:
    """What the hourly scoring flow would have stored had it run through the window:
    every first session that started in (since, until], scored by the champion an hour
    before its start with features as of then."""
    from fsp.features import build_model_input, load_history, read_frame
    from fsp.model_store import make_client
    from fsp.predictions import prediction_rows, upsert_predictions
    from fsp.scoring import load_scoring_model, score

    settings = get_settings()
    model = load_scoring_model(make_client(settings), settings.model_name)
    sql = (
        "SELECT s.session_id, s.tutor_id, s.student_id, s.subject, s.scheduled_start,"
        " st.timezone, st.birth_date FROM platform.sessions s JOIN platform.students st"
        " USING (student_id) WHERE s.is_first_session AND s.scheduled_start > %(a)s"
        " AND s.scheduled_start <= %(b)s ORDER BY s.scheduled_start"
    )
    with psycopg.connect(url) as conn:
        sessions = read_frame(conn, sql, {"a": since, "b": until})
        history = load_history(conn, until)
        moments = pd.to_datetime(sessions["scheduled_start"], utc=True) - pd.Timedelta(hours=1)
        X = build_model_input(history, sessions, moments)
        rows = prediction_rows(sessions, X, score(model, X), since, model.threshold)
        rows["prediction_date"] = moments.to_numpy()  # each scored an hour before it began
        return upsert_predictions(conn, rows)


@pytest.mark.services
def test_a_shifted_platform_is_flagged_retrained_and_the_challenger_promoted(
    server_url, tmp_path, monkeypatch
) -> None:
    from flows.monitor import monitor_flow
    from flows.reconcile import reconcile_flow
    from flows.train import train_flow

    url = _platform(server_url, seed=7, shift=True, tutors=500)
    try:
        configure_env(monkeypatch, url, tmp_path / f"state-{uuid.uuid4().hex[:6]}")
        monkeypatch.setenv("FSP_MONITOR_MIN_LABELLED", "50")
        monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
        get_settings.cache_clear()
        before = DEMO_NOW - timedelta(days=30)  # the shift starts here
        first = train_flow(as_of=before.isoformat())
        assert _backfill_predictions(url, before, DEMO_NOW) > 200
        reconcile_flow(now=DEMO_NOW.isoformat())
        summary = monitor_flow(now=DEMO_NOW.isoformat(), window_days=WINDOW, retrain=True)
        drift = summary["reports"]["data_drift"]
        print(f"shifted: flagged {drift['drifted_columns']}, reasons {summary['retrain_reasons']}")
        assert drift["drifted"] and {"engagement_score", "subject"} <= set(drift["drifted_columns"])
        assert summary["retrain_reasons"], summary
        retrained = summary["retrain"]
        assert retrained["promoted"], retrained
        assert int(retrained["version"]) > int(first["version"])
        with psycopg.connect(url) as conn:
            scores = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE drifted) FROM fsp.drift_scores"
            ).fetchone()
        assert scores[0] == len(drift["compared_columns"]) and scores[1] >= 2
    finally:
        get_settings.cache_clear()
        drop_database(server_url, url)
