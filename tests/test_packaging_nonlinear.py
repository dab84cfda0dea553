"""A champion that is not linear (gradient boosting) packages into a Bento and is
served through the logged sklearn model, with the same probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO_NOW, configure_env
from training import train as steps
from training.dataset import build_training_set
from training.db import connect
from training.model import CANDIDATES
from training.registry import make_client, promote
from training.settings import get_settings

pytestmark = pytest.mark.services


def test_a_boosting_champion_packages_and_serves_through_sklearn(
    trained_world, tmp_path, monkeypatch
):
    configure_env(monkeypatch, trained_world["database_url"], tmp_path / "state")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    settings = get_settings()
    client = make_client(settings)
    with connect(settings.database_url) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    split = steps.split_training_set(ts, settings)
    boosting = next(c for c in CANDIDATES if c.name == "gradient_boosting")
    fitted = steps.fit_candidate(boosting, ts, split, settings)
    version, *_ = steps.log_and_register(client, settings, ts, split, [fitted], fitted)
    promote(client, settings.model_name, version.version, reason="test: boosting champion")

    from bentoml._internal.models.model import ModelStore

    from service.fastpath import SklearnScorer
    from service.logic import load_served_model
    from service.packaging import package_champion

    built = package_champion(settings)
    assert built["scoring_path"] == "sklearn"
    stored = ModelStore(str(tmp_path / "bentoml" / "models")).get(built["model_tag"])
    assert stored.info.metadata["fast_path_max_error"] == "n/a (not linear)"
    served = load_served_model(
        Path(stored.path), built["model_tag"], stored.info.labels, stored.info.metadata
    )
    assert not served.fast and served.mlflow_version == str(version.version)
    X = ts.X[split.holdout]
    expected = fitted.model.predict_proba(X)[:, 1]
    assert isinstance(served.scorer, SklearnScorer)
    assert np.allclose(served.scorer.model.probabilities(X), expected, atol=1e-12)
