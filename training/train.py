"""Training, as importable steps: fit the candidates, choose one, log it to MLflow,
register it and pass it through the promotion gate. `flows/train.py` strings these
together as a Prefect flow."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature

from fsp.constants import PRECISION_TARGET, RISK_BANDS
from fsp.encoding import OTHER_LEVEL
from fsp.errors import NotEnoughData
from fsp.estimators import LogOddsBlend, positive_proba
from fsp.features import FEATURE_DOCS, MODEL_INPUT_COLUMNS
from fsp.scoring import grouping
from fsp.settings import Settings
from training.dataset import TrainingSet
from training.model import (
    BLEND,
    BLENDS,
    Candidate,
    calibrated,
    choose_threshold,
    cross_validated_auc,
    evaluate,
    pick_best,
    time_split,
)
from training.plots import save_evaluation_plots
from training.registry import (
    MODEL_CODE_PATHS,
    PIP_REQUIREMENTS,
    bands_tag,
    ensure_experiment,
    git_commit,
    integer_schema_hint_quiet,
    log_candidate_run,
    log_datasets,
    skops_trusted_types,
)

log = logging.getLogger(__name__)


@dataclass
class FittedCandidate:
    """One candidate's fitted model and how it did."""

    candidate: Candidate
    model: object
    cv_auc: np.ndarray
    holdout_p: np.ndarray
    holdout_auc: float


@dataclass(frozen=True)
class Split:
    """The time-ordered split of a training set."""

    train: np.ndarray
    holdout: np.ndarray


def split_training_set(ts: TrainingSet, settings: Settings) -> Split:
    """Holdout = the most recent weeks; refuse when either side is too small to trust."""
    train, holdout = time_split(ts.starts, ts.cutoff, settings.holdout_days)
    n_train, n_hold = int(train.sum()), int(holdout.sum())
    if n_train < settings.min_training_sessions or n_hold < settings.min_holdout_sessions:
        raise NotEnoughData(
            f"too few labelled first sessions before {ts.cutoff.isoformat()}: {n_train} to train"
            f" (need {settings.min_training_sessions}), {n_hold} in the {settings.holdout_days}-day"
            f" holdout (need {settings.min_holdout_sessions})"
        )
    for side, mask in (("training", train), ("holdout", holdout)):
        if len(np.unique(ts.y[mask])) < 2:
            raise NotEnoughData(f"the {side} part has only one class; cannot train or judge")
    return Split(train=train, holdout=holdout)


def fit_candidate(candidate: Candidate, ts: TrainingSet, split: Split, settings: Settings):
    """CV on the training part, then a calibrated fit scored on the holdout."""
    from sklearn.metrics import roc_auc_score

    X_train, y_train = ts.X[split.train], ts.y[split.train]
    cv = cross_validated_auc(candidate, X_train, y_train, settings.cv_folds, settings.random_seed)
    model = calibrated(candidate, settings.random_seed).fit(X_train, y_train)
    p = positive_proba(model, ts.X[split.holdout])
    auc = float(roc_auc_score(ts.y[split.holdout], p))
    return FittedCandidate(candidate, model, cv, p, auc)


def blend_of(
    fitted: list[FittedCandidate], ts: TrainingSet, split: Split, blend: Candidate = BLEND
) -> FittedCandidate:
    """The log-odds blend of the fitted candidates, judged on the same holdout (it has
    no CV of its own: its members' are logged beside it)."""
    from sklearn.metrics import roc_auc_score

    model = LogOddsBlend(tuple(f.model for f in fitted)).fit()
    p = positive_proba(model, ts.X[split.holdout])
    auc = float(roc_auc_score(ts.y[split.holdout], p))
    cv = np.array([f.cv_auc.mean() for f in fitted])
    return FittedCandidate(blend, model, cv, p, auc)


def blends_of(fitted: list[FittedCandidate], ts: TrainingSet, split: Split):
    """One blend per feature set, of the candidates fitted on that set (a blend on the
    base features must not carry the extended ones in through a member)."""
    out = []
    for blend in BLENDS:
        members = [f for f in fitted if f.candidate.feature_set == blend.feature_set]
        if members:
            out.append(blend_of(members, ts, split, blend))
    return out


def choose(fitted: list[FittedCandidate], settings: Settings) -> FittedCandidate:
    """Best holdout AUC, ties (within the configured tolerance) to the simpler model."""
    name = pick_best({f.candidate.name: f.holdout_auc for f in fitted}, settings.tie_tolerance)
    return next(f for f in fitted if f.candidate.name == name)


def explain_weights(best: FittedCandidate, ts: TrainingSet, split: Split) -> pd.DataFrame:
    """Coefficients (linear) or permutation importances (others), for the run's artifacts."""
    calibrated = getattr(best.model, "calibrated_classifiers_", None)
    inner = calibrated[0].estimator if calibrated else None
    coef = getattr(inner.named_steps["clf"], "coef_", None) if inner is not None else None
    if inner is not None and coef is not None:
        names = inner.named_steps["encode"].get_feature_names_out()
        return pd.DataFrame({"feature": names, "coefficient": coef[0]})
    from sklearn.inspection import permutation_importance

    result = permutation_importance(
        best.model,
        ts.X[split.holdout],
        ts.y[split.holdout],
        scoring="roc_auc",
        n_repeats=3,
        random_state=0,
    )
    return pd.DataFrame({"feature": list(ts.X.columns), "importance": result.importances_mean})


def _log_candidate_child(f: FittedCandidate, y_hold: np.ndarray, fitted: list[FittedCandidate]):
    """A child run per candidate; a blend names its members (their models are its params):
    the single candidates fitted on its feature set."""
    feature_set = f.candidate.feature_set
    extra = {"calibration": f.candidate.calibration, "feature_set": feature_set}
    if isinstance(f.model, LogOddsBlend):
        members = [g for g in fitted if g.candidate.feature_set == feature_set]
        extra["members"] = ",".join(
            g.candidate.name for g in members if not isinstance(g.model, LogOddsBlend)
        )
    log_candidate_run(f.candidate.name, f.model, y_hold, f.holdout_p, f.cv_auc, extra)


def _log_artifacts(best: FittedCandidate, ts: TrainingSet, split: Split, threshold: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        y_hold = ts.y[split.holdout]
        save_evaluation_plots(y_hold, best.holdout_p, threshold, folder / "plots")
        explain_weights(best, ts, split).to_csv(folder / "weights.csv", index=False)
        used = used_features(best.model)
        docs = {name: doc for name, doc in FEATURE_DOCS.items() if name in used}
        (folder / "features.json").write_text(json.dumps(docs, indent=2))
        vocabulary = learned_vocabulary(best.model, ts.X[split.train])
        (folder / "vocabulary.json").write_text(json.dumps(vocabulary, indent=2))
        mlflow.log_artifacts(str(folder / "plots"), artifact_path="plots")
        for name in ("weights.csv", "features.json", "vocabulary.json"):
            mlflow.log_artifact(str(folder / name))


def used_features(model) -> set[str]:
    """The model input columns the model's encoders read (its feature set's)."""
    encoders = [_encoder_of(m) for m in getattr(model, "members", ())] or [_encoder_of(model)]
    used: set[str] = set()
    for encoder in encoders:
        groups = grouping(encoder.get_feature_names_out().tolist())
        used |= {MODEL_INPUT_COLUMNS[j] for j in np.flatnonzero(groups.sum(axis=0))}
    return used


def learned_vocabulary(model, X_train: pd.DataFrame) -> dict:
    """The categorical levels the fitted model learned, with the training counts behind
    them: what a subject must be spelled like to count as itself, not 'other'."""
    encoder = _encoder_of(model)
    counts = X_train["subject"].astype(str).value_counts()
    return {
        "subject": {
            "levels": list(encoder.subjects_),
            "other_level": OTHER_LEVEL,
            "min_count": encoder.min_category_count,
            "training_counts": {str(k): int(v) for k, v in counts.items()},
        }
    }


def log_and_register(
    client: MlflowClient,
    settings: Settings,
    ts: TrainingSet,
    split: Split,
    fitted: list[FittedCandidate],
    best: FittedCandidate,
) -> tuple[ModelVersion, dict[str, float], float, str]:
    """One parent run (the chosen model, its metrics, plots, lineage) with a child run
    per candidate; the model is registered and its version tagged.
    Returns (version, holdout metrics, threshold, threshold rule)."""
    y_hold = ts.y[split.holdout]
    threshold, rule = choose_threshold(y_hold, best.holdout_p, PRECISION_TARGET)
    metrics = evaluate(y_hold, best.holdout_p, threshold)
    window = ts.window
    mlflow.set_experiment(experiment_id=ensure_experiment(client, settings))
    with mlflow.start_run(run_name=f"train {ts.cutoff.isoformat()}") as run:
        for f in fitted:
            _log_candidate_child(f, y_hold, fitted)
        log_datasets(ts, split.train, split.holdout)
        mlflow.set_tags(
            {
                "training_window_start": window[0],
                "training_window_end": window[1],
                "cutoff": ts.cutoff.isoformat(),
                "data_fingerprint": ts.fingerprint,
                "git_commit": git_commit(),
                "chosen_model": best.candidate.name,
                "feature_set": best.candidate.feature_set,
            }
        )
        mlflow.log_params(
            {
                "model_type": best.candidate.name,
                "feature_set": best.candidate.feature_set,
                "calibration": best.candidate.calibration,
                "holdout_days": settings.holdout_days,
                "cv_folds": settings.cv_folds,
                "n_train": int(split.train.sum()),
                "n_holdout": int(split.holdout.sum()),
                "seed": settings.random_seed,
                "alert_threshold": threshold,
                "threshold_rule": rule,
            }
        )
        mlflow.log_metrics(
            {
                **{f"holdout_{k}": v for k, v in metrics.items() if np.isfinite(v)},
                "cv_auc_mean": float(best.cv_auc.mean()),
                "cv_auc_sd": float(best.cv_auc.std()),
            }
        )
        mlflow.log_dict({k: metrics[k] for k in ("tn", "fp", "fn", "tp")}, "confusion_matrix.json")
        _log_artifacts(best, ts, split, threshold)
        info = _log_model(best, ts, settings)
    version = client.get_model_version(settings.model_name, str(info.registered_model_version))
    _tag_version(client, settings, version, run.info.run_id, ts, best, metrics, threshold, rule)
    return version, metrics, threshold, rule


REGISTRATION_NOTICES: Final = (
    "Successfully registered model",
    "Registered model",
    "Created version",
)
"""How MLflow's registration notices begin: it prints them straight to stderr."""


@contextlib.contextmanager
def registration_notices_logged() -> Iterator[None]:
    """MLflow's registration notices go to this module's log (INFO) instead of the
    terminal, so a clean `fsp train` prints nothing on stderr; anything else printed
    to stderr meanwhile (a warning) is passed on as it came."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if line.startswith(REGISTRATION_NOTICES):
                log.info("mlflow: %s", line.strip())
            else:
                sys.stderr.write(line)


def _log_model(best: FittedCandidate, ts: TrainingSet, settings: Settings):
    example = ts.X.head(5)
    proba = best.model.predict_proba(example)  # type: ignore[attr-defined]
    with registration_notices_logged(), integer_schema_hint_quiet():
        return _log_and_register(best, example, proba, settings)


def _log_and_register(best: FittedCandidate, example: pd.DataFrame, proba, settings: Settings):
    """The chosen candidate as an MLflow model, registered under the model's name."""
    return mlflow.sklearn.log_model(
        sk_model=best.model,
        name="model",
        signature=infer_signature(example, proba),
        input_example=example,
        pip_requirements=list(PIP_REQUIREMENTS),
        code_paths=list(MODEL_CODE_PATHS),
        pyfunc_predict_fn="predict_proba",
        serialization_format="skops",
        skops_trusted_types=skops_trusted_types(best.model),
        registered_model_name=settings.model_name,
    )


def _tag_version(
    client: MlflowClient,
    settings: Settings,
    version: ModelVersion,
    run_id: str,
    ts: TrainingSet,
    best: FittedCandidate,
    metrics: dict[str, float],
    threshold: float,
    rule: str,
) -> None:
    tags = {
        "alert_threshold": f"{threshold:.6f}",
        "threshold_rule": rule,
        "risk_bands": bands_tag(),
        "model_type": best.candidate.name,
        "feature_set": best.candidate.feature_set,
        "training_window": " .. ".join(ts.window),
        "cutoff": ts.cutoff.isoformat(),
        "data_fingerprint": ts.fingerprint,
        "run_id": run_id,
        "vocabulary.subject": json.dumps(list(_encoder_of(best.model).subjects_))[:5000],
        **{f"holdout_{k}": f"{metrics[k]:.6f}" for k in ("auc_roc", "precision", "recall", "f1")},
    }
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version.version, key, value)


def _encoder_of(model):
    """The fitted encoder (a blend's members all learn the same vocabulary)."""
    if isinstance(model, LogOddsBlend):
        return _encoder_of(model.members[0])
    return model.calibrated_classifiers_[0].estimator.named_steps["encode"]


def describe_bands() -> str:
    """The bands in words, for CLI output."""
    return ", ".join(f"{name} >= {lower:.2f}" for name, lower in RISK_BANDS)
