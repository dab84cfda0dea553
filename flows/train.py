"""The training flow: point-in-time dataset → candidates → MLflow run → registered
version → promotion gate. Each step is a small task; the logic is in `training/`.
The run's Prefect artifact shows every candidate's holdout AUC, the one chosen and
what the gate decided."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mlflow.entities.model_registry import ModelVersion
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import markdown_table, publish, section
from flows.common import Laps, parse_moment
from flows.retrying import RETRYING
from fsp.db import connection
from fsp.model_store import make_client
from fsp.settings import Settings, get_settings
from training import train as steps
from training.dataset import TrainingSet, build_training_set
from training.model import CANDIDATES
from training.registry import GateDecision, run_gate

ARTIFACT_KEY: Final = "fsp-train"


@dataclass(frozen=True)
class Registered:
    """The chosen candidate as registered: its version and holdout figures."""

    version: ModelVersion
    metrics: dict[str, float]
    threshold: float
    rule: str


@task(cache_policy=NO_CACHE, **RETRYING)
def load_training_set(settings: Settings, cutoff: datetime) -> TrainingSet:
    """Labelled first sessions before the cut-off, featurised as of their starts."""
    with connection(settings) as conn:
        return build_training_set(conn, cutoff)


@task(cache_policy=NO_CACHE)
def split(settings: Settings, ts: TrainingSet) -> steps.Split:
    """The most recent weeks are the holdout (NotEnoughData when either side is thin)."""
    return steps.split_training_set(ts, settings)


@task(cache_policy=NO_CACHE)
def fit_all(settings: Settings, ts: TrainingSet, part: steps.Split) -> list[steps.FittedCandidate]:
    """Fit and score every candidate on the same split, then a log-odds blend per
    feature set."""
    fitted = [steps.fit_candidate(c, ts, part, settings) for c in CANDIDATES]
    return [*fitted, *steps.blends_of(fitted, ts, part)]


@task(cache_policy=NO_CACHE)
def register(
    settings: Settings,
    ts: TrainingSet,
    part: steps.Split,
    fitted: list[steps.FittedCandidate],
    best: steps.FittedCandidate,
) -> Registered:
    """The MLflow run (a child per candidate) and the registered version. Not retried:
    a second attempt would register a second version."""
    version, metrics, threshold, rule = steps.log_and_register(
        make_client(settings), settings, ts, part, fitted, best
    )
    return Registered(version, metrics, threshold, rule)


@task(cache_policy=NO_CACHE)
def gate(
    settings: Settings,
    ts: TrainingSet,
    part: steps.Split,
    registered: Registered,
    best: steps.FittedCandidate,
) -> GateDecision:
    """Challenger alias, compared with the champion on the same holdout, promoted if it wins."""
    return run_gate(
        make_client(settings),
        settings.model_name,
        registered.version,
        ts.X[part.holdout],
        ts.y[part.holdout],
        best.holdout_auc,
        settings.promotion_margin,
    )


def summarize(
    ts: TrainingSet,
    part: steps.Split,
    fitted: list[steps.FittedCandidate],
    best: steps.FittedCandidate,
    registered: Registered,
    decision: GateDecision,
) -> dict[str, Any]:
    """What a training run did, JSON-able (`seconds` is added by the flow)."""
    return {
        "cutoff": ts.cutoff.isoformat(),
        "model": best.candidate.name,
        "feature_set": best.candidate.feature_set,
        "version": registered.version.version,
        "candidates": {f.candidate.name: round(f.holdout_auc, 4) for f in fitted},
        "n_train": int(part.train.sum()),
        "n_holdout": int(part.holdout.sum()),
        "holdout_auc": registered.metrics["auc_roc"],
        "precision": registered.metrics["precision"],
        "recall": registered.metrics["recall"],
        "threshold": registered.threshold,
        "threshold_rule": registered.rule,
        "promoted": decision.promoted,
        "gate_reason": decision.reason,
    }


def candidate_sections(summary: dict[str, Any]) -> list[str]:
    """The candidates' holdout AUCs, the one chosen and the gate's decision, as markdown
    (shared with the retraining flow's artifact)."""
    rows = [(name, auc, name == summary["model"]) for name, auc in summary["candidates"].items()]
    chosen = (
        f"Chosen: **{summary['model']}**, registered as version {summary['version']};"
        f" alert threshold {summary['threshold']:.4f} ({summary['threshold_rule']})."
    )
    verdict = "promoted to champion" if summary["promoted"] else "not promoted"
    return [
        section(
            "Candidates (holdout AUC)", markdown_table(("candidate", "holdout AUC", "chosen"), rows)
        ),
        section("Chosen", chosen),
        section(
            "Promotion gate", f"Version {summary['version']} {verdict}: {summary['gate_reason']}."
        ),
    ]


def publish_training(summary: dict[str, Any]) -> None:
    """The run's artifact: candidates, choice, gate."""
    lead = (
        f"Cut-off {summary['cutoff']}: {summary['n_train']} sessions to train,"
        f" {summary['n_holdout']} in the holdout."
    )
    publish(
        ARTIFACT_KEY,
        f"Training as of {summary['cutoff']}",
        [lead, *candidate_sections(summary)],
        "candidates' holdout AUCs, the chosen model, the promotion gate's decision",
    )


def log_training(summary: dict[str, Any]) -> None:
    """What the run trained, chose and decided, in the run's log."""
    logger = get_run_logger()
    logger.info(
        "training set as of %s: %d sessions to train, %d in the holdout",
        summary["cutoff"],
        summary["n_train"],
        summary["n_holdout"],
    )
    aucs = ", ".join(f"{name} {auc:.4f}" for name, auc in summary["candidates"].items())
    logger.info("candidates' holdout AUC: %s; chose %s", aucs, summary["model"])
    logger.info(
        "version %s %s: %s",
        summary["version"],
        "promoted" if summary["promoted"] else "not promoted",
        summary["gate_reason"],
    )


@flow(name="fsp-train", log_prints=True)
def train_flow(as_of: str | datetime | None = None) -> dict[str, Any]:
    """Train as of `as_of` (default: now) and pass the result through the promotion gate."""
    settings = get_settings()
    cutoff = parse_moment(as_of, "--as-of")
    laps = Laps()
    ts = load_training_set(settings, cutoff)
    part = split(settings, ts)
    laps.lap("training_set")
    fitted = fit_all(settings, ts, part)
    best = steps.choose(fitted, settings)
    laps.lap("fit_candidates")
    registered = register(settings, ts, part, fitted, best)
    laps.lap("log_and_register")
    decision = gate(settings, ts, part, registered, best)
    summary = {**summarize(ts, part, fitted, best, registered, decision), "seconds": laps.seconds}
    log_training(summary)
    publish_training(summary)
    return summary
