"""The logged model stands on its own: in a fresh virtual environment built only from
the model's requirements.txt, in a folder outside the repository with no PYTHONPATH,
MLflow loads it (its fsp code travels in the model's code folder) and it predicts
exactly what it predicts here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from fsp.db import connect
from fsp.estimators import positive_proba
from fsp.model_store import load_sklearn, make_client
from fsp.settings import PROJECT_ROOT, get_settings
from tests.conftest import DEMO_NOW, configure_env, create_database, drop_database, seed_demo
from training import train as steps
from training.dataset import build_training_set
from training.model import CANDIDATES

pytestmark = pytest.mark.services


@pytest.fixture
def prefect_harness() -> None:
    """Nothing here runs a Prefect flow: these tests need no Prefect API (starting one
    costs a minute on a loaded machine), only PostgreSQL and an MLflow store."""


LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc, mlflow.sklearn
import numpy as np
import pandas as pd
model_dir, rows_file, out_file = sys.argv[1:4]
rows = pd.read_pickle(rows_file)
sk = mlflow.sklearn.load_model(model_dir)
py = mlflow.pyfunc.load_model(model_dir)
import fsp
json.dump(
    {
        "sklearn": sk.predict_proba(rows)[:, 1].tolist(),
        "pyfunc": np.asarray(py.predict(rows))[:, 1].tolist(),
        "fsp_from": fsp.__file__,
        "sys_path": sys.path,
    },
    open(out_file, "w"),
)
"""


@pytest.fixture(scope="module")
def logged_model(server_url, tmp_path_factory):
    """A small model trained on demo data into a temporary MLflow store, and its files."""
    url = create_database(server_url)
    seed_demo(url)
    mp = pytest.MonkeyPatch()
    configure_env(mp, url, tmp_path_factory.mktemp("fresh-store"))
    settings = get_settings()
    client = make_client(settings)
    with connect(url) as conn:
        ts = build_training_set(conn, DEMO_NOW)
    split = steps.split_training_set(ts, settings)
    fitted = steps.fit_candidate(CANDIDATES[0], ts, split, settings)
    version, *_ = steps.log_and_register(client, settings, ts, split, [fitted], fitted)
    uri = f"models:/{settings.model_name}/{version.version}"
    folder = tmp_path_factory.mktemp("downloaded")
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    rows = ts.X[split.holdout].head(8)
    expected = positive_proba(load_sklearn(uri), rows)
    yield {"model_dir": model_dir, "rows": rows, "expected": expected}
    mp.undo()
    get_settings.cache_clear()
    drop_database(server_url, url)


def _build_venv(venv: Path, requirements: Path) -> float:
    """A new python3.11 venv with only the model's requirements; returns the seconds taken."""
    clock = time.perf_counter()
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    uv = Path(sys.executable).parent / "uv"
    python = str(venv / "bin" / "python")
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", python, "-r", str(requirements)],
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
    )
    return time.perf_counter() - clock


def test_model_loads_and_predicts_in_a_fresh_venv(logged_model, tmp_path):
    model_dir: Path = logged_model["model_dir"]
    requirements = model_dir / "requirements.txt"
    print("\nrequirements.txt:\n" + requirements.read_text())
    assert (model_dir / "code" / "fsp" / "encoding.py").is_file()
    assert not (model_dir / "code" / "training").exists()
    venv = tmp_path / "venv"
    print(f"fresh venv built in {_build_venv(venv, requirements):.1f} s")
    work = tmp_path / "elsewhere"
    work.mkdir()
    logged_model["rows"].to_pickle(work / "rows.pkl")
    (work / "load.py").write_text(LOAD_AND_PREDICT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MLFLOW_TRACKING_URI"] = f"file://{work / 'no-store'}"  # nothing of ours is read
    done = subprocess.run(
        [str(venv / "bin" / "python"), "load.py", str(model_dir), "rows.pkl", "out.json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((work / "out.json").read_text())
    print(f"fsp imported from {out['fsp_from']}")
    assert Path(out["fsp_from"]).is_relative_to(model_dir / "code")
    assert not any(str(PROJECT_ROOT) in entry for entry in out["sys_path"] if entry)
    expected = logged_model["expected"]
    print("in repo :", np.round(expected, 6).tolist())
    print("in venv :", np.round(out["sklearn"], 6).tolist())
    np.testing.assert_allclose(out["sklearn"], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["pyfunc"], expected, rtol=0, atol=1e-9)
    shutil.rmtree(venv, ignore_errors=True)
