"""What a monitoring run found and did, as one JSON-able summary: what `fsp monitor`
prints, what the demo reads and what the run's Prefect artifact shows."""

from __future__ import annotations

from typing import Any

from monitoring.champion import Champion
from monitoring.reports import DRIFT, SavedReport
from monitoring.window import METRIC_NAMES, Window

SUMMARY_DECIMALS = 4


def performance_summary(row: dict[str, Any]) -> dict[str, Any]:
    """One version's live figures, rounded for reading."""
    rounded = {
        k: (round(row["metrics"][k], SUMMARY_DECIMALS) if row["metrics"][k] is not None else None)
        for k in METRIC_NAMES
    }
    return {
        "model_version": row["model_version"],
        "sample_size": row["sample_size"],
        **rounded,
        "live_check": row.get("live_check"),
    }


def feature_scores(report: SavedReport) -> dict[str, float | None]:
    """Each compared feature's drift score (drift report only)."""
    return {name: c.get("score") for name, c in report.figures.get("columns", {}).items()}


def report_summary(report: SavedReport) -> dict[str, Any]:
    """Where a report is, its sizes and its figures (per-feature scores for drift)."""
    figures = {k: v for k, v in report.figures.items() if k != "columns"}
    if report.kind == DRIFT:
        figures["feature_scores"] = feature_scores(report)
    return {"html": str(report.html), "json": str(report.json), **report.sizes, **figures}


def summarize(
    champion: Champion,
    window: Window,
    performance: list[dict[str, Any]],
    saved: list[SavedReport],
    run_id: str,
    reasons: list[str],
    retrained: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a monitoring run found and did, JSON-able."""
    return {
        "now": window.now.isoformat(),
        "window_days": window.days,
        "champion_version": champion.version,
        "labelled_sessions": len(window.labelled),
        "scored_sessions": len(window.scored),
        "skipped_start_out_of_range": window.skipped_start_out_of_range,
        "performance": [performance_summary(r) for r in performance],
        "alerts_vs_holdout": performance[0]["alerts_vs_holdout"] if performance else None,
        "reports": {r.kind: report_summary(r) for r in saved},
        "mlflow_run_id": run_id,
        "retrain_reasons": reasons,
        "retrain": retrained,
    }
