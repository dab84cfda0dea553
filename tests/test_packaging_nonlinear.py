"""A champion that is not linear (gradient boosting, or the log-odds blend of every
candidate) packages into a Bento and is served through the logged sklearn model,
with the same probabilities and reasons that sum to its log-odds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import logit

from fsp.db import connect
from fsp.model_store import make_client
from fsp.settings import get_settings
from tests.conftest import DEMO_NOW, configure_env
from training import train as steps
from training.dataset import build_training_set
from training.model import CANDIDATES
from training.registry import promote

pytestmark = pytest.mark.services


@pytest.mark.parametrize("family", ["gradient_boosting", "log_odds_blend"])
def test_a_nonlinear_champion_packages_and_serves_through_sklearn(
    family, trained_world, tmp_path, monkeypatch
):
    configure_env(monkeypatch, trained_world["database_url"], tmp_path / "state")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    settings = get_settings()
    client = make_client(settings)
    with connect(settings.database_url) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    split = steps.split_training_set(ts, settings)
    members = [steps.fit_candidate(c, ts, split, settings) for c in CANDIDATES]
    fitted = next((f for f in members if f.candidate.name == family), None)
    fitted = fitted or steps.blends_of(members, ts, split)[0]
    version, *_ = steps.log_and_register(client, settings, ts, split, [fitted], fitted)
    promote(client, settings.model_name, version.version, reason="test: boosting champion")

    from service.bentoml_adapter import models_named
    from service.fastpath import SklearnScorer
    from service.packaging import package_champion
    from service.served_model import load_served_model

    built = package_champion(settings)
    assert built["scoring_path"] == "sklearn"
    models = models_named(tmp_path / "bentoml", settings.model_name)
    stored = next(m for m in models if str(m.tag) == built["model_tag"])
    assert stored.info.metadata["fast_path_max_error"] == "n/a (not linear)"
    served = load_served_model(
        Path(stored.path), built["model_tag"], stored.info.labels, stored.info.metadata
    )
    assert not served.fast and served.mlflow_version == str(version.version)
    X = ts.X[split.holdout]
    expected = fitted.model.predict_proba(X)[:, 1]
    assert isinstance(served.scorer, SklearnScorer)
    assert np.allclose(served.scorer.model.probabilities(X), expected, atol=1e-12)
    gap = logit(expected) - served.scorer.model.contributions(X).sum(axis=1)
    assert np.ptp(gap) < 1e-8  # exact reasons: one constant away from the log-odds
