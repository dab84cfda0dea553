"""The training flow: point-in-time dataset → candidates → MLflow run → registered
version → promotion gate. Each step is a small task; the logic is in `training/`."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import parse_moment
from training import train as steps
from training.dataset import TrainingSet, build_training_set
from training.db import connection
from training.model import CANDIDATES
from training.registry import make_client, run_gate
from training.settings import Settings, get_settings


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_training_set(settings: Settings, cutoff: datetime) -> TrainingSet:
    """Labelled first sessions before the cut-off, featurised as of their starts."""
    with connection(settings) as conn:
        return build_training_set(conn, cutoff)


@task(cache_policy=NO_CACHE)
def fit_all(settings: Settings, ts: TrainingSet, split: steps.Split) -> list[steps.FittedCandidate]:
    """Fit and score every candidate on the same split, then a log-odds blend per
    feature set."""
    fitted = [steps.fit_candidate(c, ts, split, settings) for c in CANDIDATES]
    return [*fitted, *steps.blends_of(fitted, ts, split)]


@flow(name="fsp-train", log_prints=True)
def train_flow(as_of: str | datetime | None = None) -> dict[str, Any]:
    """Train as of `as_of` (default: now) and pass the result through the promotion gate."""
    settings = get_settings()
    cutoff = parse_moment(as_of, "--as-of")
    client = make_client(settings)
    clock = time.perf_counter()
    ts = load_training_set(settings, cutoff)
    split = steps.split_training_set(ts, settings)
    seconds = {"training_set": time.perf_counter() - clock}
    fitted = fit_all(settings, ts, split)
    best = steps.choose(fitted, settings)
    seconds["fit_candidates"] = time.perf_counter() - clock - sum(seconds.values())
    version, metrics, threshold, rule = steps.log_and_register(
        client, settings, ts, split, fitted, best
    )
    seconds["log_and_register"] = time.perf_counter() - clock - sum(seconds.values())
    decision = run_gate(
        client,
        settings.model_name,
        version,
        ts.X[split.holdout],
        ts.y[split.holdout],
        best.holdout_auc,
        settings.promotion_margin,
    )
    return {
        "cutoff": cutoff.isoformat(),
        "model": best.candidate.name,
        "feature_set": best.candidate.feature_set,
        "version": version.version,
        "candidates": {f.candidate.name: round(f.holdout_auc, 4) for f in fitted},
        "n_train": int(split.train.sum()),
        "n_holdout": int(split.holdout.sum()),
        "holdout_auc": metrics["auc_roc"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "threshold": threshold,
        "threshold_rule": rule,
        "promoted": decision.promoted,
        "gate_reason": decision.reason,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
