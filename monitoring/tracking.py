"""The monitoring run in MLflow: one run per (champion, now, window), found again by its
key tag so a rerun updates it instead of adding another. It carries the champion's live
metrics and live check, the drift share and each compared feature's drift score, and
the report files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import mlflow
from mlflow import MlflowClient

from fsp.settings import Settings
from monitoring.champion import Champion
from monitoring.reports import SavedReport, drift_of
from monitoring.window import METRIC_NAMES, Window
from training.registry import ensure_experiment

MONITOR_KEY_TAG: Final = "fsp.monitor_key"
ARTIFACT_FOLDER: Final = "monitoring"


def monitor_key(champion: Champion, window: Window) -> str:
    return f"v{champion.version}|{window.now.isoformat()}|{window.days}d"


def run_tags(champion: Champion, window: Window) -> dict[str, str]:
    return {
        MONITOR_KEY_TAG: monitor_key(champion, window),
        "fsp.run_type": "monitoring",
        "model_version": champion.version,
        "champion_run_id": champion.run_id,
        "evaluation_date": window.now.isoformat(),
        "time_window_days": str(window.days),
    }


def live_metrics(performance: list[dict[str, Any]]) -> dict[str, float]:
    """The champion's live metrics `live_<name>` and its sample size."""
    for row in performance:
        if row["is_champion"]:
            found = {f"live_{k}": row["metrics"].get(k) for k in METRIC_NAMES}
            metrics = {k: float(v) for k, v in found.items() if v is not None}
            return {**metrics, "live_sample_size": float(row["sample_size"])}
    return {}


def live_check_metrics(performance: list[dict[str, Any]]) -> dict[str, float]:
    """The champion's live check (AUC interval, its holdout figure) as MLflow metrics."""
    for row in performance:
        check = row.get("live_check")
        if row["is_champion"] and check:
            figures = {
                "live_auc_ci_low": check["interval"][0],
                "live_auc_ci_high": check["interval"][1],
                "champion_holdout_auc": check["champion_holdout_auc"],
                "retrain_below_champion": float(check["below_champion"]),
            }
            return {k: float(v) for k, v in figures.items() if v is not None}
    return {}


def drift_metrics(saved: list[SavedReport]) -> dict[str, float]:
    """The drift share, the drifted count and each compared feature's score
    (`drift_score.<feature>`)."""
    drift = drift_of(saved)
    if drift is None:
        return {}
    scores = {
        f"drift_score.{name}": float(c["score"])
        for name, c in drift.figures.get("columns", {}).items()
        if c.get("score") is not None
    }
    return {
        "drift_share": float(drift.figures["drift_share"]),
        "drifted_columns_count": float(drift.figures["drifted_columns_count"]),
        **scores,
    }


def existing_run(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """The run already logged for this key (a rerun), or None."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{MONITOR_KEY_TAG}` = '{key}'", max_results=1
    )
    return found[0].info.run_id if found else None


def log_monitoring_run(
    client: MlflowClient,
    settings: Settings,
    champion: Champion,
    window: Window,
    performance: list[dict[str, Any]],
    saved: list[SavedReport],
    folder: Path,
) -> str:
    """One MLflow run per (champion, now, window), reused by a rerun (idempotent)."""
    experiment_id = ensure_experiment(client, settings)
    run_id = existing_run(client, experiment_id, monitor_key(champion, window))
    name = f"monitor {window.now.isoformat()} v{champion.version}"
    metrics = {
        **live_metrics(performance),
        **live_check_metrics(performance),
        **drift_metrics(saved),
    }
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(run_tags(champion, window))
        if metrics:
            mlflow.log_metrics(metrics)
        if saved:
            mlflow.log_artifacts(str(folder), artifact_path=ARTIFACT_FOLDER)
        return run.info.run_id
