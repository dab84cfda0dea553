"""`fsp package` and `fsp serve`: the champion into the BentoML model store, the Bento
built from bentofile.yaml (offline), and the latest Bento served.

The BentoML store lives in `BENTOML_HOME`, by default `<state folder>/bentoml`, so
the embedded default keeps everything under one folder. The store is addressed by
explicit path and the build runs as its own process, so several stores can be
used from one Python process (the tests do)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fsp.constants import CHAMPION_ALIAS
from fsp.errors import FspError
from fsp.features import MODEL_INPUT_COLUMNS
from fsp.settings import PROJECT_ROOT, Settings
from service.config import BENTO_MODEL_ARTIFACT, FAST_PATH_FILE, SERVICE_NAME

log = logging.getLogger(__name__)

BENTOFILE = PROJECT_ROOT / "bentofile.yaml"
FAST_PATH_TOLERANCE = 1e-9
PROBE_ROWS = 2000


class PackagingFailed(FspError):
    """The Bento could not be built; the message says why."""


class NotPackaged(FspError):
    """No Bento has been built yet in this BentoML store."""


def bentoml_home(settings: Settings) -> Path:
    """BENTOML_HOME when set, else `<state folder>/bentoml`."""
    configured = os.environ.get("BENTOML_HOME")
    return Path(configured) if configured else settings.state_dir / "bentoml"


def bentoml_env(home: Path) -> dict[str, str]:
    """The environment of a BentoML subprocess: this store, no usage tracking (offline)."""
    env = dict(os.environ)
    env["BENTOML_HOME"] = str(home)
    env["BENTOML_DO_NOT_TRACK"] = "True"
    return env


def _bentoml_cli() -> str:
    found = Path(sys.executable).parent / "bentoml"
    return str(found) if found.exists() else "bentoml"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def probe_rows(example: pd.DataFrame, n: int = PROBE_ROWS, seed: int = 0) -> pd.DataFrame:
    """Model input covering the example's subjects (and an unseen one), hour, weekday, and
    counts from zero to large, around the logged input example: what the fast path
    is checked on before a Bento is built."""
    rng = np.random.default_rng(seed)
    base = example.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)
    counts = (
        "tutor_tenure_days",
        "n_ratings",
        "n_rated_first_sessions",
        "session_count",
        "n_first_sessions_in_subject",
        "n_first_sessions_in_age_band",
    )
    for column in counts:
        base[column] = rng.choice([0.0, 1.0, 3.0, 40.0, 900.0], size=n) * rng.random(n)
    base["local_hour"] = rng.integers(0, 96, size=n) / 4.0
    base["local_dow"] = rng.integers(0, 7, size=n).astype(float)
    base["student_age"] = rng.integers(5, 70, size=n).astype(float)
    subjects = [*example["subject"].astype(str).unique(), "a subject never seen in training"]
    base["subject"] = rng.choice(subjects, size=n)
    return base[list(MODEL_INPUT_COLUMNS)]


def fast_path_error(scoring_model, params, X: pd.DataFrame) -> float:
    """Largest difference between the fast path and ScoringModel (probabilities and
    contributions) on X."""
    from service.fastpath import FastLinearScorer, ModelRows  # sklearn: off `fsp serve`'s path

    fast = FastLinearScorer(params)
    rows = ModelRows.from_frame(X)
    p, c = fast.score(rows)
    return float(
        max(
            np.max(np.abs(p - scoring_model.probabilities(X))),
            np.max(np.abs(c - scoring_model.contributions(X))),
        )
    )


def _existing_model(home: Path, name: str, version: str, run_id: str) -> Any:
    """The newest BentoML model imported from this MLflow version and run, or None."""
    from service.bentoml_adapter import models_named  # bentoml: off the CLI's start

    same = [
        m
        for m in models_named(home, name)
        if m.info.labels.get("mlflow_version") == version
        and m.info.labels.get("mlflow_run_id") == run_id
    ]
    return max(same, key=lambda m: m.creation_time) if same else None


def _imported(model: Any, number: str, run_id: str, imported: bool) -> dict[str, Any]:
    """What `import_champion` reports of a BentoML model."""
    return {
        "model_tag": str(model.tag),
        "mlflow_version": number,
        "mlflow_run_id": run_id,
        "scoring_path": model.info.metadata.get("scoring_path"),
        "imported": imported,
    }


def _fast_path(scoring: Any, local: Path) -> tuple[Any, float | None]:
    """The fast-path parameters of a linear model when they reproduce it to
    FAST_PATH_TOLERANCE on the probe rows (else None), and the error measured."""
    from service.fastpath import LinearParams  # sklearn: off `fsp serve`'s path

    if not scoring.is_linear:
        return None, None
    params = LinearParams.from_scoring_model(scoring)
    example = pd.read_json(local / "input_example.json", orient="split")
    error = fast_path_error(scoring, params, probe_rows(example))
    if not error <= FAST_PATH_TOLERANCE:
        return None, error  # serve through sklearn rather than risk a different answer
    return params, error


def _model_metadata(settings: Settings, version: Any, fast: bool, error: float | None) -> dict:
    """The BentoML model's metadata: the MLflow version's tags the service reports."""
    tags = version.tags
    return {
        "alert_threshold": float(tags.get("alert_threshold", "0.5")),
        "model_type": tags.get("model_type", ""),
        "holdout_auc_roc": tags.get("holdout_auc_roc", ""),
        "cutoff": tags.get("cutoff", ""),
        "training_window": tags.get("training_window", ""),
        "data_fingerprint": tags.get("data_fingerprint", ""),
        "scoring_path": "numpy fast path" if fast else "sklearn",
        # BentoML metadata takes no None: a non-linear champion has no fast path.
        "fast_path_max_error": error if error is not None else "n/a (not linear)",
        "mlflow_tracking_uri": settings.resolved_mlflow_uri,
    }


def import_champion(settings: Settings, home: Path) -> dict[str, Any]:
    """The champion's MLflow model into the BentoML store (once per version): the logged
    model folder as downloaded, plus the fast-path parameters when the model is linear
    and they reproduce it to 1e-9 on the probe rows.

    Why not `bentoml.mlflow.import_model`, which also downloads the logged model into
    the BentoML model's `mlflow_model` folder: it writes into the store of BENTOML_HOME
    as read when bentoml was first imported (the tests package into several stores
    from one process), and it saves the model before returning, so the fast-path
    file could only be added to a model already saved. `bentoml.models.create`
    (through `service.bentoml_adapter`, for the store's folder) does both in one
    step; the served Bento opens the folder the same way either would write it."""
    # MLflow, sklearn and bentoml: imported only when a model is packaged.
    import mlflow

    from fsp.model_store import aliased_version, load_sklearn, make_client
    from fsp.scoring import ScoringModel
    from service.bentoml_adapter import create_model

    version = aliased_version(make_client(settings), settings.model_name, CHAMPION_ALIAS)
    number, run_id = str(version.version), version.run_id or ""
    existing = _existing_model(home, settings.model_name, number, run_id)
    if existing is not None:
        return _imported(existing, number, run_id, imported=False)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{settings.model_name}/{number}", dst_path=tmp
            )
        )
        threshold = float(version.tags.get("alert_threshold", "0.5"))
        scoring = ScoringModel(
            load_sklearn(str(local)), number, threshold, run_id, settings.model_name
        )
        params, error = _fast_path(scoring, local)
        labels = {"mlflow_model": settings.model_name, "mlflow_version": number}
        labels["mlflow_run_id"] = run_id
        metadata = _model_metadata(settings, version, params is not None, error)
        with create_model(home, settings.model_name, labels, metadata) as model:
            shutil.copytree(local, model.path_of(BENTO_MODEL_ARTIFACT))
            if params is not None:
                params.save(Path(model.path_of(FAST_PATH_FILE)))
    return _imported(model, number, run_id, imported=True)


def build_bento(home: Path, model: dict[str, Any]) -> str:
    """`bentoml build` of bentofile.yaml with the exact model tag as a Bento argument
    (offline: exact pins, lock_packages false). Returns the Bento tag."""
    command = [
        _bentoml_cli(),
        "build",
        "-f",
        str(BENTOFILE),
        "--arg",
        f"model_tag={model['model_tag']}",
        "--label",
        f"mlflow_version={model['mlflow_version']}",
        "--label",
        f"mlflow_run_id={model['mlflow_run_id'] or 'none'}",
        "--output",
        "tag",
        str(PROJECT_ROOT),
    ]
    done = subprocess.run(  # noqa: S603  (our own bentoml command, fixed arguments)
        command, cwd=PROJECT_ROOT, env=bentoml_env(home), capture_output=True, text=True
    )
    tags = [line for line in done.stdout.splitlines() if line.startswith("__tag__:")]
    if done.returncode != 0 or not tags:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise PackagingFailed(f"bentoml build failed: {detail[-1] if detail else done.returncode}")
    return tags[-1].removeprefix("__tag__:")


def package_champion(settings: Settings) -> dict[str, Any]:
    """Build the Bento of the current champion; returns what was built and its figures."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    home = bentoml_home(settings)
    started = time.perf_counter()
    model = import_champion(settings, home)
    imported = time.perf_counter()
    bento_tag = build_bento(home, model)
    built = time.perf_counter()
    name, version = bento_tag.split(":", 1)
    bento_dir = home / "bentos" / name / version
    model_name, model_version = model["model_tag"].split(":", 1)
    model_bytes = _dir_bytes(home / "models" / model_name / model_version)
    bento_bytes = _dir_bytes(bento_dir)
    return {
        "bento_tag": bento_tag,
        "model_tag": model["model_tag"],
        "mlflow_version": model["mlflow_version"],
        "mlflow_run_id": model["mlflow_run_id"],
        "scoring_path": model["scoring_path"],
        "model_imported": model["imported"],
        "import_seconds": round(imported - started, 3),
        "build_seconds": round(built - imported, 3),
        "bento_size_bytes": bento_bytes + model_bytes,
        "bento_dir_bytes": bento_bytes,
        "model_size_bytes": model_bytes,
        "bentoml_home": str(home),
        "bento_path": str(bento_dir),
    }


def latest_bento(home: Path) -> str:
    """The tag of the most recently built Bento of this service."""
    from service.bentoml_adapter import latest_bento_tag  # bentoml: off the CLI's start

    tag = latest_bento_tag(home, SERVICE_NAME)
    if tag is None:
        raise NotPackaged(f"no Bento in {home}: run `fsp package` first")
    return tag


def serving_env(settings: Settings, home: Path) -> dict[str, str]:
    """The served Bento's environment: its settings (DATABASE_URL resolved now, so the
    embedded default is started once, here, under FSP_STATE_DIR) and the store."""
    from fsp.db import database_url

    env = bentoml_env(home)
    env["DATABASE_URL"] = database_url(settings)
    env["FSP_STATE_DIR"] = str(settings.state_dir.resolve())
    return env


DEFAULT_HOST = "127.0.0.1"
"""Where `fsp serve` listens unless told otherwise: this machine only."""


def serve_command(tag: str, port: int, host: str = DEFAULT_HOST) -> list[str]:
    """The `bentoml serve` command line of a Bento on host:port."""
    return [_bentoml_cli(), "serve", tag, "--port", str(port), "--host", host]


def exposure_warning(settings: Settings, host: str) -> str | None:
    """A warning when the API would be reachable from other machines without a key."""
    import ipaddress

    if settings.api_keys:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, not an address: only "localhost" is known loopback
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"fsp serve: warning: listening on {host} without FSP_API_KEY: anyone who can reach"
        " it can read predictions and store new ones"
    )


def serve_packaged(settings: Settings, port: int, host: str = DEFAULT_HOST) -> None:
    """Serve the latest Bento in the foreground (`bentoml serve TAG --port P --host H`);
    this process becomes the server, so Ctrl-C and signals reach it directly."""
    home = bentoml_home(settings)
    tag = latest_bento(home)
    command = serve_command(tag, port, host)
    warning = exposure_warning(settings, host)
    if warning:
        log.warning(warning)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, serving_env(settings, home))  # noqa: S606  (replaces this process with bentoml serve, fixed arguments)
