"""MLflow: the single source of truth for models (runs, versions, aliases, lineage).

The MLflow client is passed in everywhere so a test can hand in a client on a
temporary store."""

from __future__ import annotations

import json
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities.model_registry import ModelVersion

from fsp.constants import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    POOR_RATING_BELOW,
    PRECISION_TARGET,
    RISK_BANDS,
)
from fsp.features import FEATURE_DOCS
from fsp.model_store import (
    alias_version,
    client_uri,
    load_sklearn,
    store_errors,
    version_or_raise,
)
from fsp.settings import PROJECT_ROOT, Settings
from training import model_card
from training.dataset import TrainingSet
from training.model import choose_threshold, evaluate
from training.plots import save_evaluation_plots

PIP_REQUIREMENTS = (
    "mlflow==3.17.2",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "pandas==2.3.3",
    "numpy==2.4.6",
    "skops==0.16.0",
    "psycopg[binary]==3.3.9",
    "tzdata==2026.6",
)
"""What the logged model needs to load and predict anywhere, pinned to uv.lock: the
pickled model holds fsp.encoding / fsp.estimators classes (shipped beside it as code,
see MODEL_CODE_PATHS), and fsp.encoding imports fsp.features, which imports psycopg
and fsp.calendar (tzdata's tables). mlflow is named so the pin is ours, not MLflow's."""

MODEL_CODE_PATHS = (str(PROJECT_ROOT / "fsp"),)
"""The runtime package, copied into the model's code folder so the model loads
without this repository (only fsp/: nothing under training/ is inside the model)."""


def ensure_experiment(client: MlflowClient, settings: Settings) -> str:
    """The experiment's id, created on first use (artifacts under the state folder by default)."""
    with store_errors(client_uri(client)):
        found = client.get_experiment_by_name(settings.experiment_name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(
            settings.experiment_name, artifact_location=settings.mlflow_artifact_location
        )


def git_commit() -> str:
    """The commit the code was trained from ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607  (git from PATH, fixed arguments)
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def skops_trusted_types(model: Any) -> list[str]:
    """The non-default types inside our own model, which skops must be told to load."""
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


def promote(client: MlflowClient, name: str, version: str | int, reason: str) -> ModelVersion:
    """Make `version` the champion (also a rollback), record why on the version, and
    rewrite the descriptions that change with it (both versions and the model card)."""
    chosen = version_or_raise(client, name, version)
    previous = alias_version(client, name, CHAMPION_ALIAS)
    with store_errors(client_uri(client)):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, chosen.version)
        client.set_model_version_tag(name, chosen.version, "promotion.decision", "champion")
        client.set_model_version_tag(name, chosen.version, "promotion.reason", reason)
        if "promotion.replaced_by" in chosen.tags:  # a rollback: it serves again
            client.delete_model_version_tag(name, chosen.version, "promotion.replaced_by")
        if previous is not None and previous.version != chosen.version:
            client.set_model_version_tag(
                name, previous.version, "promotion.replaced_by", str(chosen.version)
            )
            describe_version(client, name, previous.version)
    describe_version(client, name, chosen.version)
    refresh_model_card(client, name)
    return chosen


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided, with its figures."""

    promoted: bool
    reason: str
    challenger_auc: float
    champion_auc: float | None
    champion_version: str | None
    margin: float = 0.0

    def as_tags(self) -> dict[str, str]:
        return {
            "gate.promoted": str(self.promoted).lower(),
            "gate.reason": self.reason,
            "gate.challenger_auc": f"{self.challenger_auc:.6f}",
            "gate.champion_auc": "" if self.champion_auc is None else f"{self.champion_auc:.6f}",
            "gate.champion_version": self.champion_version or "",
            "gate.margin": f"{self.margin:g}",
        }


def judge(challenger_auc: float, champion_auc: float | None, margin: float) -> tuple[bool, str]:
    """The promotion rule, pure: no champion yet, or beat it by `margin` on the same holdout."""
    if champion_auc is None:
        return True, "no champion yet"
    if challenger_auc >= champion_auc + margin:
        return (
            True,
            f"holdout AUC {challenger_auc:.4f} beats champion {champion_auc:.4f} + margin {margin}",
        )
    return False, (
        f"holdout AUC {challenger_auc:.4f} does not beat champion {champion_auc:.4f} + margin {margin}"
    )


def run_gate(
    client: MlflowClient,
    name: str,
    version: ModelVersion,
    holdout_X: pd.DataFrame,
    holdout_y: np.ndarray,
    challenger_auc: float,
    margin: float,
) -> GateDecision:
    """Give `version` the challenger alias, compare it with the champion on the same
    holdout, promote it when it wins, and write the decision on the version (tags and
    description) and on the model card."""
    from sklearn.metrics import roc_auc_score

    from fsp.estimators import positive_proba

    with store_errors(client_uri(client)):
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version.version)
    champion = alias_version(client, name, CHAMPION_ALIAS)
    champion_auc = None
    if champion is not None:
        model = load_sklearn(f"models:/{name}/{champion.version}")
        champion_auc = float(roc_auc_score(holdout_y, positive_proba(model, holdout_X)))
    promoted, reason = judge(challenger_auc, champion_auc, margin)
    decision = GateDecision(
        promoted,
        reason,
        challenger_auc,
        champion_auc,
        champion.version if champion else None,
        margin,
    )
    with store_errors(client_uri(client)):
        for key, value in decision.as_tags().items():
            client.set_model_version_tag(name, version.version, key, value)
        note = model_card.latest_note(version.version, _gate_from_tags(decision.as_tags()))
        client.set_registered_model_tag(name, LATEST_NOTE_TAG, note)
        if promoted:
            promote(client, name, version.version, reason=f"gate: {reason}")
        else:
            client.set_model_version_tag(name, version.version, "promotion.decision", "rejected")
            client.set_model_version_tag(name, version.version, "promotion.reason", reason)
            describe_version(client, name, version.version)
            refresh_model_card(client, name)
    return decision


LATEST_NOTE_TAG = "card.latest_training"
"""Registered-model tag keeping the last gate's verdict, so the card repeats it after
a later manual promotion or rollback."""


def _gate_figures(tags: dict[str, str]) -> model_card.GateFigures | None:
    """The gate's figures from a version's tags; None for a version no gate judged."""
    return _gate_from_tags(tags) if "gate.promoted" in tags else None


def _gate_from_tags(tags: dict[str, str]) -> model_card.GateFigures:
    return model_card.GateFigures(
        promoted=tags["gate.promoted"] == "true",
        reason=tags.get("gate.reason", ""),
        challenger_auc=tags.get("gate.challenger_auc", ""),
        champion_auc=tags.get("gate.champion_auc", ""),
        champion_version=tags.get("gate.champion_version", ""),
        margin=tags.get("gate.margin", ""),
    )


def version_figures(version: ModelVersion, is_champion: bool) -> model_card.VersionFigures:
    """What a version's description states, read from its tags."""
    tags = dict(version.tags)
    metrics = {k.removeprefix("holdout_"): v for k, v in tags.items() if k.startswith("holdout_")}
    return model_card.VersionFigures(
        version=str(version.version),
        model_type=tags.get("model_type", "unknown"),
        window=tags.get("training_window", "unknown"),
        cutoff=tags.get("cutoff", "unknown"),
        metrics=metrics,
        threshold=tags.get("alert_threshold", "unknown"),
        threshold_rule=tags.get("threshold_rule", "unknown"),
        run_id=tags.get("run_id", str(version.run_id)),
        is_champion=is_champion,
        decision=tags.get("promotion.decision", ""),
        decision_reason=tags.get("promotion.reason", ""),
        gate=_gate_figures(tags),
        replaced_by=tags.get("promotion.replaced_by", ""),
    )


def describe_version(client: MlflowClient, name: str, version: str | int) -> str:
    """Rewrite a version's description from its tags (why it serves or does not)."""
    with store_errors(client_uri(client)):
        current = client.get_model_version(name, str(version))
        is_champion = CHAMPION_ALIAS in current.aliases
        text = model_card.version_description(version_figures(current, is_champion))
        client.update_model_version(name, str(version), description=text)
    return text


def card_figures(
    client: MlflowClient, champion: ModelVersion, latest_note: str
) -> model_card.CardFigures:
    """The card's figures: the champion's tags and the metrics and params of its run."""
    tags = dict(champion.tags)
    with store_errors(client_uri(client)):
        run = client.get_run(tags.get("run_id") or str(champion.run_id))
    params, run_tags = run.data.params, run.data.tags
    metrics = {
        k.removeprefix("holdout_"): v
        for k, v in run.data.metrics.items()
        if k.startswith("holdout_")
    }
    return model_card.CardFigures(
        model_name=champion.name,
        version=str(champion.version),
        model_type=tags.get("model_type", "unknown"),
        window=(
            run_tags.get("training_window_start", "?"),
            run_tags.get("training_window_end", "?"),
        ),
        cutoff=tags.get("cutoff", "unknown"),
        n_train=params.get("n_train", "?"),
        n_holdout=params.get("n_holdout", "?"),
        holdout_days=params.get("holdout_days", "?"),
        metrics=metrics,
        threshold=float(tags.get("alert_threshold", "nan")),
        threshold_rule=tags.get("threshold_rule", "unknown"),
        precision_target=PRECISION_TARGET,
        bands=RISK_BANDS,
        poor_below=POOR_RATING_BELOW,
        feature_docs=FEATURE_DOCS,
        run_id=run.info.run_id,
        data_fingerprint=tags.get("data_fingerprint", "unknown"),
        git_commit=run_tags.get("git_commit", "unknown"),
        latest_note=latest_note,
    )


def refresh_model_card(client: MlflowClient, name: str) -> str:
    """Rewrite the registered model's description for the version that serves now."""
    with store_errors(client_uri(client)):
        note = client.get_registered_model(name).tags.get(LATEST_NOTE_TAG, "")
    champion = alias_version(client, name, CHAMPION_ALIAS)
    if champion is None:
        text = model_card.no_champion_card(name, note)
    else:
        text = model_card.model_card(card_figures(client, champion, note))
    with store_errors(client_uri(client)):
        client.update_registered_model(name, description=text)
    return text


def bands_tag() -> str:
    """The risk bands as a JSON tag value."""
    return json.dumps(dict(RISK_BANDS))


PARAM_TEXT_MAX = 250
"""Longest parameter value logged (MLflow truncates long ones; a list longer than this
is left out rather than cut)."""
TARGET_COLUMN = "poor_session"
"""The label's column in the datasets logged as run inputs (1 = rated below 3 stars)."""


def _simple(value: Any) -> str | None:
    """A parameter value as short text, or None when it is no simple value."""
    scalar = (str, int, float, bool, type(None), np.integer, np.floating)
    if isinstance(value, scalar):
        text = str(value)
    elif isinstance(value, list | tuple) and all(isinstance(v, scalar) for v in value):
        text = str(list(value))
    else:
        return None
    return text if len(text) <= PARAM_TEXT_MAX else None


def flat_params(model: Any) -> dict[str, str]:
    """The estimator's hyperparameters (get_params, nested ones as a__b), simple values only."""
    params = model.get_params(deep=True) if hasattr(model, "get_params") else {}
    flat = {key: _simple(value) for key, value in sorted(params.items())}
    return {key: text for key, text in flat.items() if text is not None}


def log_candidate_run(
    name: str,
    model: Any,
    y_hold: np.ndarray,
    p_hold: np.ndarray,
    cv_auc: np.ndarray,
    extra_params: dict[str, str],
) -> None:
    """One candidate's child run: its hyperparameters, its holdout metrics at its own
    threshold (same rule as the chosen model), its CV AUCs and its evaluation plots."""
    threshold, rule = choose_threshold(y_hold, p_hold, PRECISION_TARGET)
    metrics = evaluate(y_hold, p_hold, threshold)
    with mlflow.start_run(run_name=name, nested=True):
        mlflow.log_params(
            {**flat_params(model), **extra_params, "candidate": name, "threshold_rule": rule}
        )
        finite = {f"holdout_{k}": v for k, v in metrics.items() if np.isfinite(v)}
        mlflow.log_metrics(
            {
                **finite,
                "alert_threshold": threshold,
                "cv_auc_mean": float(cv_auc.mean()),
                "cv_auc_sd": float(cv_auc.std()),
            }
        )
        for fold, auc in enumerate(cv_auc):
            mlflow.log_metric("cv_auc", float(auc), step=fold)
        with tempfile.TemporaryDirectory() as tmp:
            save_evaluation_plots(y_hold, p_hold, threshold, Path(tmp))
            mlflow.log_artifacts(tmp, artifact_path="plots")


INTEGER_SCHEMA_HINT = "Hint: Inferred schema contains integer column"
"""The start of MLflow's warning that an integer column cannot hold a missing value,
given whenever it infers a schema: ours are counts the feature code always fills, so
on every training run it would only be noise."""


@contextmanager
def integer_schema_hint_quiet() -> Iterator[None]:
    """MLflow's integer-column hint silenced while it infers a schema (see above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=INTEGER_SCHEMA_HINT, category=UserWarning)
        yield


def log_datasets(ts: TrainingSet, train: np.ndarray, holdout: np.ndarray) -> None:
    """The training and holdout parts as the active run's inputs: their schema, size,
    label column and fingerprint (the rows stay in PostgreSQL; nothing is copied)."""
    for context, mask in (("training", train), ("holdout", holdout)):
        part = TrainingSet(ts.X[mask], ts.y[mask], ts.starts[mask], ts.session_ids[mask], ts.cutoff)
        start, end = part.window
        source = CodeDatasetSource(
            {
                "mlflow.source.name": "training.dataset.build_training_set (PostgreSQL)",
                "cutoff": ts.cutoff.isoformat(),
                "first_start": start,
                "last_start": end,
            }
        )
        with integer_schema_hint_quiet():
            dataset = from_pandas(
                part.X.assign(**{TARGET_COLUMN: part.y}),
                source=source,
                targets=TARGET_COLUMN,
                name=context,
                digest=part.fingerprint,
            )
            mlflow.log_input(dataset, context=context)
