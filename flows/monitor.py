"""The monitoring flow (weekly): how the models really did, whether the data drifted,
and a retrain when either warrants it. Each step is a task; the logic is in
`monitoring/`.

1. performance on reconciled predictions whose session started in the window, per
   model version → fsp.model_performance_logs (`monitoring.window`);
2. Evidently reports (drift against the champion's own recent training data,
   `monitoring.reference`; classification quality where ratings arrived) → HTML + JSON
   under `state_dir/reports/`, an MLflow monitoring run and the database's index
   (`monitoring.reports`, `monitoring.tracking`, `monitoring.index`);
3. the decision (`monitoring.decision`): when warranted, the event
   `fsp.model.retrain-requested` and, when run from `fsp monitor`, the retraining flow.

The run's Prefect artifact shows the live AUC against the holdout AUC with its
interval, the drift scores, the decision and where the reports are."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import cell, publish
from flows.common import parse_moment
from flows.retrain import retrain_flow
from flows.retrying import RETRYING
from flows.sections import decision_text, monitor_sections
from fsp.constants import MONITOR_WINDOW_DAYS
from fsp.db import connection
from fsp.errors import NotEnoughData
from fsp.model_store import make_client
from fsp.outcomes import holdout_comparison
from fsp.settings import Settings, get_settings
from monitoring.champion import Champion, champion_info, model_types
from monitoring.decision import request_retrain, retrain_reasons
from monitoring.index import index_reports, store_drift_scores
from monitoring.reference import Reference, reference_features
from monitoring.reports import SavedReport, build_reports, report_folder, save_reports
from monitoring.summary import summarize
from monitoring.tracking import log_monitoring_run
from monitoring.window import (
    Window,
    performance_rows,
    read_window,
    store_performance,
    validate_window,
)

DEFAULT_WINDOW_DAYS: Final = MONITOR_WINDOW_DAYS
ARTIFACT_KEY: Final = "fsp-monitor"


@task(cache_policy=NO_CACHE, **RETRYING)
def load_champion(settings: Settings) -> Champion:
    """The champion and its lineage from MLflow."""
    return champion_info(make_client(settings), settings.model_name)


@task(cache_policy=NO_CACHE, **RETRYING)
def load_window(settings: Settings, now: datetime, days: int) -> Window:
    """Predictions of the window (labelled and scored)."""
    with connection(settings) as conn:
        return read_window(conn, now, days)


@task(cache_policy=NO_CACHE, **RETRYING)
def log_performance(settings: Settings, window: Window, champion: Champion) -> list[dict[str, Any]]:
    """Evaluate per version, compare alerted with held-out sessions, and upsert
    fsp.model_performance_logs."""
    rows = performance_rows(window, champion, settings)
    versions = [row["model_version"] for row in rows]
    types = model_types(make_client(settings), settings.model_name, versions, champion)
    with connection(settings) as conn:
        comparison = holdout_comparison(conn, window.since, window.now)
        store_performance(conn, rows, types, window, {"alerts_vs_holdout": comparison})
    return [{**row, "alerts_vs_holdout": comparison} for row in rows]


@task(cache_policy=NO_CACHE, **RETRYING)
def load_reference(settings: Settings, champion: Champion, days: int) -> Reference | None:
    """The champion's most recent training rows (None when its lineage cannot be
    rebuilt: then there is no drift report, and the run says why in its log)."""
    try:
        with connection(settings) as conn:
            return reference_features(conn, champion, days)
    except NotEnoughData as exc:
        get_run_logger().warning("no drift report: no reference, %s", exc)
        return None


@task(cache_policy=NO_CACHE)
def write_reports(
    settings: Settings, champion: Champion, reference: Reference | None, window: Window
) -> list[SavedReport]:
    """Evidently reports → HTML + JSON files."""
    results = build_reports(settings, reference, window)
    return save_reports(results, report_folder(settings, champion, window))


@task(cache_policy=NO_CACHE, **RETRYING)
def log_to_mlflow(
    settings: Settings,
    champion: Champion,
    window: Window,
    performance: list[dict[str, Any]],
    saved: list[SavedReport],
) -> str:
    """The monitoring run with its metrics and the report files."""
    folder = report_folder(settings, champion, window)
    client = make_client(settings)
    return log_monitoring_run(client, settings, champion, window, performance, saved, folder)


@task(cache_policy=NO_CACHE, **RETRYING)
def index_in_db(
    settings: Settings, saved: list[SavedReport], champion: Champion, window: Window, run_id: str
) -> int:
    """Index the reports in fsp.monitoring_reports and the drift scores in fsp.drift_scores."""
    with connection(settings) as conn:
        store_drift_scores(conn, saved, champion, window)
        return index_reports(conn, saved, champion, window, run_id)


@task(cache_policy=NO_CACHE)
def ask_for_retrain(settings: Settings, moment: datetime, reasons: list[str], version: str) -> bool:
    """The retrain-requested event (a failure to send it is logged, never fatal)."""
    return request_retrain(settings.model_name, moment, reasons, version)


@flow(name="fsp-monitor", log_prints=True)
def monitor_flow(
    now: str | datetime | None = None,
    window_days: int = DEFAULT_WINDOW_DAYS,
    retrain: bool = True,
) -> dict[str, Any]:
    """Log live performance, write the drift report, and retrain when warranted.

    `retrain`: run the training flow here when warranted (the CLI); deployments set
    it to false and let the prefect.yaml trigger react to the event instead."""
    settings = get_settings()
    moment = parse_moment(now)
    days = validate_window(window_days)
    champion = load_champion(settings)
    window = load_window(settings, moment, days)
    performance = log_performance(settings, window, champion)
    reference = load_reference(settings, champion, days)
    saved = write_reports(settings, champion, reference, window)
    run_id = log_to_mlflow(settings, champion, window, performance, saved)
    index_in_db(settings, saved, champion, window, run_id)
    reasons = retrain_reasons(performance, saved, settings)
    retrained: dict[str, Any] | None = None
    if reasons:
        ask_for_retrain(settings, moment, reasons, champion.version)
        if retrain:
            retrained = retrain_flow(as_of=moment)
    summary = summarize(champion, window, performance, saved, run_id, reasons, retrained)
    log_summary(summary)
    publish_monitoring(summary)
    return summary


def log_summary(summary: dict[str, Any]) -> None:
    """What the run found and decided, in the run's log."""
    logger = get_run_logger()
    logger.info(
        "window of %d days to %s: %d rated, %d scored sessions (%d left out: start out of range)",
        summary["window_days"],
        summary["now"],
        summary["labelled_sessions"],
        summary["scored_sessions"],
        summary["skipped_start_out_of_range"],
    )
    for row in summary["performance"]:
        logger.info(
            "version %s: live AUC %s on %d rated sessions",
            row["model_version"],
            cell(row["auc_roc"]),
            row["sample_size"],
        )
    for kind, report in summary["reports"].items():
        logger.info("%s report: %s", kind, report["html"])
    logger.info("decision: %s", decision_text(summary))


# --- the run's artifact -----------------------------------------------------------------


def publish_monitoring(summary: dict[str, Any]) -> None:
    publish(
        ARTIFACT_KEY,
        f"Monitoring {summary['now']}",
        monitor_sections(summary),
        "live AUC vs holdout, drift scores, the retrain decision and the reports",
    )
