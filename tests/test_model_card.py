"""The model card in a real MLflow store: after real training on demo data, the
registered model's description states purpose, inputs, window, holdout metrics,
threshold rule, limits and owners; each version says why it was or was not promoted;
candidate child runs carry hyperparameters, metrics and plots; the parent run names
its training and holdout sets as inputs."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from fsp.db import connect
from fsp.features import FEATURE_DOCS
from fsp.model_store import make_client
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW, configure_env, create_database, drop_database, seed_demo
from training import model_card
from training import train as steps
from training.dataset import TrainingSet, build_training_set
from training.model import CANDIDATES
from training.registry import promote, run_gate

pytestmark = pytest.mark.services


@pytest.fixture
def prefect_harness() -> None:
    """Nothing here runs a Prefect flow: these tests need no Prefect API (starting one
    costs a minute on a loaded machine), only PostgreSQL and an MLflow store."""


CARD_SECTIONS = (
    "## Purpose",
    "## Inputs",
    "## Training window",
    "## Metrics on the holdout",
    "## Threshold rule",
    "## Limits",
    "## Owners",
)


def _train_and_gate(client, settings, ts, split, fitted_list, best):
    version, *_ = steps.log_and_register(client, settings, ts, split, fitted_list, best)
    decision = run_gate(
        client,
        settings.model_name,
        version,
        ts.X[split.holdout],
        ts.y[split.holdout],
        best.holdout_auc,
        settings.promotion_margin,
    )
    return version, decision


@pytest.fixture(scope="module")
def carded(server_url, tmp_path_factory):
    """A demo database, a fresh MLflow store, a champion (v1: two logistic candidates and
    their blend) and a rejected challenger (v2: trained on shuffled labels)."""
    url = create_database(server_url)
    seed_demo(url)
    mp = pytest.MonkeyPatch()
    configure_env(mp, url, tmp_path_factory.mktemp("card"))
    settings = get_settings()
    client = make_client(settings)
    with connect(url) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    split = steps.split_training_set(ts, settings)
    fitted = [steps.fit_candidate(c, ts, split, settings) for c in CANDIDATES[:2]]
    fitted.append(steps.blend_of(fitted, ts, split))
    best = steps.choose(fitted, settings)
    v1, d1 = _train_and_gate(client, settings, ts, split, fitted, best)
    shuffled = TrainingSet(
        ts.X, np.random.default_rng(0).permutation(ts.y), ts.starts, ts.session_ids, ts.cutoff
    )
    bad = steps.fit_candidate(CANDIDATES[0], shuffled, split, settings)
    v2, d2 = _train_and_gate(client, settings, ts, split, [bad], bad)
    yield {"client": client, "name": settings.model_name, "v1": v1, "v2": v2, "d1": d1, "d2": d2}
    mp.undo()
    get_settings.cache_clear()
    drop_database(server_url, url)


def _card(carded) -> str:
    return carded["client"].get_registered_model(carded["name"]).description


def _described(carded, version) -> str:
    return carded["client"].get_model_version(carded["name"], version.version).description


def test_card_has_every_section_with_the_champions_figures(carded):
    card = _card(carded)
    print(card)
    for section in CARD_SECTIONS:
        assert section in card
    assert f"champion version {carded['v1'].version}" in card
    for feature in FEATURE_DOCS:
        assert f"`{feature}`" in card
    auc = carded["d1"].challenger_auc
    assert f"| ROC AUC | {auc:.4f} |" in card
    assert "Brier score" in card and "Alert when the probability is at least" in card
    assert "Not for:" in card
    # the latest training (the rejected v2) is named with its reason
    assert f"Version {carded['v2'].version}: Gate: not promoted" in card


def test_rejected_version_says_why(carded):
    text = _described(carded, carded["v2"])
    print(text)
    assert text.startswith("**Status: rejected**")
    assert carded["d2"].reason in text
    assert f"champion version {carded['v1'].version}'s" in text and "margin" in text


def test_promoted_version_says_why(carded):
    text = _described(carded, carded["v1"])
    assert text.startswith("**Status: champion**")
    assert "no champion yet" in text


def test_rollback_rewrites_card_and_both_versions(carded):
    client: MlflowClient = carded["client"]
    name, v1, v2 = carded["name"], carded["v1"].version, carded["v2"].version
    promote(client, name, v2, reason="manual promotion (fsp promote)")
    assert f"champion version {v2}" in _card(carded)
    assert _described(carded, carded["v2"]).startswith("**Status: champion**")
    assert "manual promotion (fsp promote)" in _described(carded, carded["v2"])
    assert f"replaced by version {v2}" in _described(carded, carded["v1"])
    promote(client, name, v1, reason="manual promotion (fsp promote)")  # roll back
    assert f"champion version {v1}" in _card(carded)
    assert _described(carded, carded["v1"]).startswith("**Status: champion**")
    assert f"replaced by version {v1}" in _described(carded, carded["v2"])


def _children(carded) -> list:
    client: MlflowClient = carded["client"]
    parent = carded["v1"].run_id
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")


def test_child_runs_carry_params_metrics_and_plots(carded):
    children = {run.info.run_name: run for run in _children(carded)}
    assert set(children) == {
        "logistic_regression",
        "logistic_regression_binned",
        "log_odds_blend",
    }
    lr = children["logistic_regression"]
    assert lr.data.params["estimator__clf__class_weight"] == "balanced"
    assert lr.data.params["method"] == "sigmoid"
    assert "estimator__clf__max_iter" in lr.data.params
    blend = children["log_odds_blend"]
    assert blend.data.params["members"] == "logistic_regression,logistic_regression_binned"
    for run in children.values():
        for metric in ("holdout_auc_roc", "holdout_brier", "holdout_precision", "cv_auc_mean"):
            assert np.isfinite(run.data.metrics[metric])
        plots = {a.path for a in carded["client"].list_artifacts(run.info.run_id, "plots")}
        assert {"plots/roc_curve.png", "plots/calibration.png", "plots/pr_curve.png"} <= plots


def test_parent_run_names_training_and_holdout_sets(carded):
    run = carded["client"].get_run(carded["v1"].run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "holdout"}
    for name, item in inputs.items():
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        assert context == name
        assert len(item.dataset.digest) == 16
        assert '"poor_session"' in item.dataset.profile or "poor_session" in item.dataset.schema


def test_card_fits_what_the_store_keeps_even_with_long_input_docs():
    figures = model_card.CardFigures(
        model_name="m",
        version="1",
        model_type="t",
        window=("a", "b"),
        cutoff="c",
        n_train="1",
        n_holdout="1",
        holdout_days="28",
        metrics={"auc_roc": 0.7},
        threshold=0.5,
        threshold_rule="f1_best",
        precision_target=0.6,
        bands=(("LOW", 0.0),),
        poor_below=3,
        feature_docs={f"feature_{i}": "a long meaning " * 20 for i in range(40)},
        run_id="r",
        data_fingerprint="f",
        git_commit="g",
    )
    card = model_card.model_card(figures)
    assert len(card) <= model_card.DESCRIPTION_MAX_CHARS
    assert "`feature_39`" in card and "## Owners" in card
