"""Score → reconcile → monitor → retrain, against a real PostgreSQL and a real MLflow
store (a private copy of the shared world's), plus drift on controlled data."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from flows.cli import main
from flows.demo import simulate_platform_outcomes
from flows.monitor import monitor_flow
from flows.reconcile import reconcile_flow
from flows.score import score_flow, validate_lookahead
from fsp.db import connect
from fsp.errors import InvalidInput, NoChampion
from fsp.model_store import alias_version, make_client
from fsp.settings import get_settings
from monitoring.drift import drift_report, sample_reference
from monitoring.tracking import MONITOR_KEY_TAG
from tests.conftest import DEMO_NOW, create_database, drop_database, seed_demo
from tests.flow_fixtures import one, point_at
from training.dataset import build_training_set

pytestmark = pytest.mark.services

WEEK = 24 * 7
LATER = DEMO_NOW + timedelta(days=8)


@pytest.fixture
def loop_db(server_url: str):
    url = create_database(server_url)
    seed_demo(url)
    yield url
    drop_database(server_url, url)


@pytest.fixture
def loop_env(loop_db, trained_world, tmp_path, monkeypatch):
    point_at(monkeypatch, loop_db, tmp_path / "state", trained_world["state_dir"])
    monkeypatch.setenv("FSP_MONITOR_MIN_LABELLED", "20")
    get_settings.cache_clear()
    yield loop_db
    get_settings.cache_clear()


def outcomes_arrive(url: str) -> dict:
    """Score a week ahead, let the (simulated) platform record what happened."""
    score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    with connect(url) as conn:
        return simulate_platform_outcomes(conn, DEMO_NOW, LATER)


# --- scoring ------------------------------------------------------------------------


def test_score_stores_reasons_and_is_idempotent(loop_env, trained_world):
    first = score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    second = score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    assert first["sessions_scored"] == second["sessions_scored"] > 100
    assert first["rows_changed"] == first["sessions_scored"] and second["rows_changed"] == 0
    assert first["model_version"] == str(trained_world["train"]["version"])
    with connect(loop_env) as conn:
        n, versions, updated = conn.execute(
            "SELECT count(*), count(DISTINCT model_version), max(updated_at)"
            " FROM fsp.first_session_predictions"
        ).fetchone()
        factors, features = conn.execute(
            "SELECT top_risk_factors, features FROM fsp.first_session_predictions LIMIT 1"
        ).fetchone()
        outside = one(
            conn,
            "SELECT count(*) FROM fsp.first_session_predictions"
            " WHERE scheduled_start <= %s OR scheduled_start > %s",
            (DEMO_NOW, DEMO_NOW + timedelta(hours=WEEK)),
        )
    assert n == first["sessions_scored"] and versions == 1 and outside == 0
    assert len(factors) == 5 and {"feature", "label", "contribution"} <= set(factors[0])
    assert set(features) >= {"tutor_tenure_days", "subject", "student_age"}
    third = score_flow(now=DEMO_NOW.isoformat(), lookahead_hours=WEEK)
    with connect(loop_env) as conn:
        assert one(conn, "SELECT max(updated_at) FROM fsp.first_session_predictions") == updated
    assert third["rows_changed"] == 0


@pytest.mark.parametrize("hours", [-1, 0, math.nan, "soon", 24 * 365])
def test_lookahead_is_validated(hours):
    with pytest.raises(InvalidInput, match="--lookahead-hours"):
        validate_lookahead(hours)


def test_bad_lookahead_and_missing_champion_are_one_line_cli_errors(fsp_env, capsys):
    assert main(["score", "--now", DEMO_NOW.isoformat(), "--lookahead-hours", "-3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fsp score: --lookahead-hours must be > 0") and "\n" not in err
    with pytest.raises(NoChampion, match="fsp train"):
        score_flow(now=DEMO_NOW.isoformat())
    capsys.readouterr()
    assert main(["monitor", "--now", DEMO_NOW.isoformat()]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("fsp monitor: model 'first-session-risk' has no")


# --- reconcile ----------------------------------------------------------------------


def test_reconcile_fills_outcomes_once(loop_env):
    arrived = outcomes_arrive(loop_env)["ratings_arrived"]
    first = reconcile_flow(now=LATER.isoformat())
    second = reconcile_flow(now=LATER.isoformat())
    assert first["rows_changed"] == first["reconciled"] == arrived > 50
    assert second["rows_changed"] == 0 and second["reconciled"] == arrived
    with connect(loop_env) as conn:
        wrong = one(
            conn,
            "SELECT count(*) FROM fsp.first_session_predictions p JOIN platform.feedback f"
            " USING (session_id) WHERE p.actual_rating <> f.rating"
            " OR p.actual_poor_session <> (f.rating < 3)"
            " OR p.prediction_correct <> ((f.rating < 3) = (p.risk_prediction = 1))",
        )
        unrated = one(
            conn,
            "SELECT count(*) FROM fsp.first_session_predictions p WHERE actual_rating IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM platform.feedback f WHERE f.session_id = p.session_id)",
        )
    assert wrong == 0 and unrated == 0
    # Ratings not yet submitted at an earlier moment are not joined.
    with connect(loop_env) as conn:
        conn.execute(
            "UPDATE fsp.first_session_predictions SET actual_rating = NULL,"
            " actual_poor_session = NULL, prediction_correct = NULL"
        )
    early = reconcile_flow(now=(DEMO_NOW + timedelta(days=1)).isoformat())
    assert 0 < early["reconciled"] < arrived


# --- monitor ------------------------------------------------------------------------


def test_monitor_logs_reports_and_is_idempotent(loop_env, monkeypatch):
    outcomes_arrive(loop_env)
    reconcile_flow(now=LATER.isoformat())
    first = monitor_flow(now=LATER.isoformat(), window_days=30, retrain=False)
    second = monitor_flow(now=LATER.isoformat(), window_days=30, retrain=False)

    assert first["performance"] == second["performance"]
    live = first["performance"][0]
    assert live["sample_size"] == first["labelled_sessions"] > 20
    with connect(loop_env) as conn:  # the logged AUC is the AUC of what was stored
        y, p = zip(
            *conn.execute(
                "SELECT actual_poor_session::int, risk_probability"
                " FROM fsp.first_session_predictions WHERE actual_poor_session IS NOT NULL"
                " AND scheduled_start > %s AND scheduled_start <= %s",
                (LATER - timedelta(days=30), LATER),
            ).fetchall(),
            strict=True,
        )
    assert live["auc_roc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    with connect(loop_env) as conn:
        logs = conn.execute(
            "SELECT model_version, sample_size, auc_roc, time_window_days, metrics_detail"
            " FROM fsp.model_performance_logs"
        ).fetchall()
        reports = conn.execute(
            "SELECT kind, html_path, json_path, mlflow_run_id FROM fsp.monitoring_reports"
            " ORDER BY kind"
        ).fetchall()
    assert len(logs) == 1 and logs[0][3] == 30 and logs[0][1] == live["sample_size"]
    assert "alerts_vs_holdout" in logs[0][4]
    assert [r[0] for r in reports] == ["classification", "data_drift"]
    for _, html, data, run_id in reports:
        assert Path(html).stat().st_size > 100_000 and Path(data).exists()
        assert run_id == first["mlflow_run_id"] == second["mlflow_run_id"]
    drift = json.loads(Path(reports[1][2]).read_text())["figures"]
    assert drift["drift_share"] == first["reports"]["data_drift"]["drift_share"]

    client = make_client(get_settings())
    runs = client.search_runs(
        [client.get_experiment_by_name(get_settings().experiment_name).experiment_id],
        filter_string=f"tags.`{MONITOR_KEY_TAG}` LIKE 'v%'",
    )
    assert len(runs) == 1 and "live_auc_roc" in runs[0].data.metrics
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "monitoring")}
    assert "monitoring/data_drift.html" in artifacts


def test_drift_detected_on_shifted_data_not_on_same_distribution(trained_world):
    with connect(trained_world["database_url"]) as conn:
        X = build_training_set(conn, DEMO_NOW).X
    shuffled = X.sample(frac=1.0, random_state=11).reset_index(drop=True)
    reference, same = sample_reference(shuffled.iloc[:1500]), shuffled.iloc[1500:1800]
    calm = drift_report(reference, same, drift_share=0.5)
    assert not calm.figures["drifted"] and calm.figures["drift_share"] <= 0.2

    shifted = same.copy()
    shifted["tutor_tenure_days"] = shifted["tutor_tenure_days"] * 3 + 60
    shifted["avg_rating"] -= 0.6
    shifted["first_session_success_rate"] -= 0.2
    shifted["engagement_score"] = np.clip(shifted["engagement_score"] - 0.25, 0, 1)
    shifted["reschedule_rate"] += 0.05
    shifted["no_show_rate"] += 0.03
    shifted["local_hour"] = (shifted["local_hour"] + 6) % 24
    shifted["student_age"] += 15
    shifted["subject"] = "sat_prep"
    shifted["recent_poor_rate"] += 0.2
    shifted["poor_rate_in_subject"] += 0.2
    shifted["engagement_trend"] -= 0.2
    moved = drift_report(reference, shifted, drift_share=0.5)
    assert moved.figures["drifted"] and moved.figures["drift_share"] > 0.5
    assert {"avg_rating", "student_age", "subject"} <= set(moved.figures["drifted_columns"])


# --- retrain → gate → promotion → Bento ---------------------------------------------


def register_bad_champion(settings) -> str:
    """A deliberately useless model (trained on shuffled labels) made champion."""
    from training.model import CANDIDATES
    from training.registry import promote
    from training.train import fit_candidate, log_and_register, split_training_set

    with connect(settings.database_url) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    noise = dataclasses.replace(ts, y=np.random.default_rng(0).permutation(ts.y))
    split = split_training_set(noise, settings)
    fitted = fit_candidate(CANDIDATES[0], noise, split, settings)
    client = make_client(settings)
    version, *_ = log_and_register(client, settings, noise, split, [fitted], fitted)
    promote(client, settings.model_name, version.version, reason="test: a useless champion")
    return str(version.version)


def test_low_live_auc_retrains_promotes_and_rebuilds_bento(loop_env, monkeypatch):
    pytest.importorskip("service.packaging")
    monkeypatch.setenv("FSP_AUC_FLOOR", "0.99")  # any real AUC is below: retrain
    get_settings.cache_clear()
    settings = get_settings()
    bad = register_bad_champion(settings)
    outcomes_arrive(loop_env)
    reconcile_flow(now=LATER.isoformat())

    summary = monitor_flow(now=LATER.isoformat(), window_days=30)

    assert summary["champion_version"] == bad
    assert any("below the floor" in r for r in summary["retrain_reasons"])
    retrained = summary["retrain"]
    assert retrained["promoted"] is True, retrained
    champion = alias_version(make_client(settings), settings.model_name, "champion")
    assert champion is not None and str(champion.version) == retrained["version"] != bad
    bento = retrained["bento"]
    assert "skipped" not in bento and str(bento.get("mlflow_version")) == retrained["version"]
    # Idempotent: the same moment never trains a second model.
    again = monitor_flow(now=LATER.isoformat(), window_days=30)
    assert again["retrain"] is None or "already trained" in again["retrain"].get("skipped", "")


def test_retrain_that_does_not_win_changes_nothing(loop_env, monkeypatch, trained_world):
    monkeypatch.setenv("FSP_AUC_FLOOR", "0.99")
    monkeypatch.setenv("FSP_PROMOTION_MARGIN", "0.5")  # no challenger can beat the champion
    get_settings.cache_clear()
    settings = get_settings()
    before = str(trained_world["train"]["version"])
    outcomes_arrive(loop_env)
    reconcile_flow(now=LATER.isoformat())

    summary = monitor_flow(now=LATER.isoformat(), window_days=30)

    retrained = summary["retrain"]
    assert retrained["promoted"] is False and "does not beat" in retrained["gate_reason"]
    assert "bento" not in retrained
    champion = alias_version(make_client(settings), settings.model_name, "champion")
    assert champion is not None and str(champion.version) == before


# --- faults -------------------------------------------------------------------------


def test_database_restart_mid_flow_is_retried(loop_env, server_url):
    """The database drops every connection and refuses new ones for a few seconds (as
    during a restart); the task retries and the flow ends as if nothing happened."""
    import threading

    from psycopg.conninfo import conninfo_to_dict

    outcomes_arrive(loop_env)
    name = conninfo_to_dict(loop_env)["dbname"]
    with connect(server_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )

    def back_up():
        with connect(server_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    timer = threading.Timer(2.5, back_up)
    timer.start()
    try:
        result = reconcile_flow(now=LATER.isoformat())
    finally:
        timer.join()
    assert result["reconciled"] > 50 and result["rows_changed"] == result["reconciled"]
