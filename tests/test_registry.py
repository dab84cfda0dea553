"""The model lifecycle in a real MLflow store: logging, registration, the promotion
gate, manual promotion and rollback, and a logged model that reproduces training."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from fsp.constants import CHALLENGER_ALIAS, CHAMPION_ALIAS
from fsp.db import connect
from fsp.errors import UnknownModelVersion
from fsp.model_store import alias_version, make_client
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW, configure_env
from training import train as steps
from training.dataset import TrainingSet, build_training_set
from training.model import CANDIDATES
from training.registry import promote, run_gate

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def lab(trained_world, tmp_path_factory):
    """The shared seeded database with a FRESH MLflow store and one champion (v1)."""
    mp = pytest.MonkeyPatch()
    configure_env(mp, trained_world["database_url"], tmp_path_factory.mktemp("lab"))
    settings = get_settings()
    client = make_client(settings)
    with connect(settings.database_url) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    split = steps.split_training_set(ts, settings)
    fitted = steps.fit_candidate(CANDIDATES[0], ts, split, settings)
    version, *_ = steps.log_and_register(client, settings, ts, split, [fitted], fitted)
    decision = run_gate(
        client,
        settings.model_name,
        version,
        ts.X[split.holdout],
        ts.y[split.holdout],
        fitted.holdout_auc,
        settings.promotion_margin,
    )
    yield {
        "settings": settings,
        "client": client,
        "ts": ts,
        "split": split,
        "fitted": fitted,
        "version": version,
        "decision": decision,
    }
    mp.undo()
    get_settings.cache_clear()


def _worse_version(lab) -> tuple:
    """A model trained on shuffled labels, logged and registered like any other."""
    ts, split, settings = lab["ts"], lab["split"], lab["settings"]
    shuffled = TrainingSet(
        ts.X, np.random.default_rng(0).permutation(ts.y), ts.starts, ts.session_ids, ts.cutoff
    )
    bad = steps.fit_candidate(CANDIDATES[0], shuffled, split, settings)
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(ts.y[split.holdout], bad.holdout_p))
    version, *_ = steps.log_and_register(lab["client"], settings, shuffled, split, [bad], bad)
    return version, auc


def test_first_version_becomes_champion_with_lineage(lab):
    client: MlflowClient = lab["client"]
    name = lab["settings"].model_name
    assert lab["decision"].promoted and lab["decision"].reason == "no champion yet"
    champion = alias_version(client, name, CHAMPION_ALIAS)
    assert champion.version == lab["version"].version
    for tag in (
        "alert_threshold",
        "threshold_rule",
        "risk_bands",
        "training_window",
        "data_fingerprint",
        "holdout_auc_roc",
        "gate.reason",
    ):
        assert tag in champion.tags, tag
    run = client.get_run(champion.run_id)
    for metric in (
        "holdout_auc_roc",
        "holdout_pr_auc",
        "holdout_precision",
        "holdout_recall",
        "holdout_f1",
        "holdout_accuracy",
        "holdout_brier",
        "cv_auc_mean",
        "cv_auc_sd",
    ):
        assert metric in run.data.metrics, metric
    assert run.data.tags["data_fingerprint"] == lab["ts"].fingerprint
    assert len(run.data.tags["git_commit"]) >= 7
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    plots = {a.path for a in client.list_artifacts(champion.run_id, "plots")}
    assert {"weights.csv", "features.json", "confusion_matrix.json"} <= artifacts
    assert {
        f"plots/{p}.png" for p in ("roc_curve", "pr_curve", "calibration", "confusion_matrix")
    } <= plots


def test_logged_model_reproduces_training_probabilities_exactly(lab):
    name, version = lab["settings"].model_name, lab["version"].version
    X_hold = lab["ts"].X[lab["split"].holdout]
    expected = lab["fitted"].model.predict_proba(X_hold)[:, 1]
    loaded = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION_ALIAS}")
    assert np.array_equal(loaded.predict_proba(X_hold)[:, 1], expected)
    assert np.array_equal(np.asarray(pyfunc.predict(X_hold))[:, 1], expected)


def test_a_worse_challenger_is_not_promoted(lab):
    client, settings = lab["client"], lab["settings"]
    version, auc = _worse_version(lab)
    decision = run_gate(
        client,
        settings.model_name,
        version,
        lab["ts"].X[lab["split"].holdout],
        lab["ts"].y[lab["split"].holdout],
        auc,
        settings.promotion_margin,
    )
    assert not decision.promoted
    assert (
        alias_version(client, settings.model_name, CHAMPION_ALIAS).version == lab["version"].version
    )
    assert alias_version(client, settings.model_name, CHALLENGER_ALIAS).version == version.version
    tags = client.get_model_version(settings.model_name, version.version).tags
    assert tags["gate.promoted"] == "false" and "does not beat" in tags["gate.reason"]
    assert tags["promotion.decision"] == "rejected"


def test_manual_promotion_and_rollback_move_the_alias(lab):
    client, name = lab["client"], lab["settings"].model_name
    newer, _ = _worse_version(lab)
    promote(client, name, newer.version, reason="test: manual")
    assert alias_version(client, name, CHAMPION_ALIAS).version == newer.version
    promote(client, name, lab["version"].version, reason="test: rollback")
    assert alias_version(client, name, CHAMPION_ALIAS).version == lab["version"].version
    assert client.get_model_version(name, newer.version).tags["promotion.replaced_by"] == str(
        lab["version"].version
    )


def test_unknown_version_is_refused_by_name(lab):
    with pytest.raises(UnknownModelVersion, match="no version '999'"):
        promote(lab["client"], lab["settings"].model_name, "999", reason="test")


def test_settings_put_the_default_store_under_the_state_folder(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FSP_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert get_settings().resolved_mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    finally:
        get_settings.cache_clear()
