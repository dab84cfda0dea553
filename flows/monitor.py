"""The monitoring flow (weekly): how the models really did, whether the data drifted,
and a retrain when either warrants it.

1. performance on reconciled predictions whose session started in the window,
   per model version → fsp.model_performance_logs (one row per version; a rerun
   for the same `now` rewrites the same values);
2. Evidently reports → HTML + JSON under `state_dir/reports/`, logged to MLflow
   (one monitoring run per (version, now, window), with each feature's drift score
   as a metric) and indexed in fsp.monitoring_reports (scores in fsp.drift_scores):
   data drift between the last `window` days of the champion's training data
   (rebuilt point-in-time from its `cutoff` tag) and the stored features of the
   sessions scored in the window, compared as `monitoring.drift.drift_view` says;
   classification quality where labels exist;
3. when the champion's live AUC is significantly below its own holdout AUC (the
   whole bootstrap interval under it minus a tolerance, `monitoring.live_check`) or
   below the floor, or the drifted share of compared features exceeds the
   configured share: an event `fsp.model.retrain-requested`
   (a prefect.yaml trigger turns it into a training run) and, when run from
   `fsp monitor`, the training flow directly; the promotion gate decides, and a
   promotion rebuilds the Bento. A model already trained as of `now` is never
   trained again, so the flow stays idempotent."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import psycopg
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import parse_moment
from flows.retrying import RETRYING
from fsp.constants import (
    CHAMPION_ALIAS,
    EARLIEST_START,
    LATEST_START,
    MONITOR_WINDOW_DAYS,
)
from fsp.db import connection
from fsp.errors import InvalidInput, NotEnoughData
from fsp.features import read_frame
from fsp.model_store import aliased_version, make_client
from fsp.outcomes import holdout_comparison
from fsp.settings import Settings, get_settings
from monitoring.drift import (
    ReportResult,
    classification_report,
    drift_report,
    features_frame,
    sample_reference,
    save_report,
)
from monitoring.live_check import live_check
from training.dataset import build_training_set
from training.model import evaluate
from training.registry import ensure_experiment

RETRAIN_EVENT: Final = "fsp.model.retrain-requested"
DEFAULT_WINDOW_DAYS: Final = MONITOR_WINDOW_DAYS
MAX_WINDOW_DAYS: Final = 3650
MONITOR_KEY_TAG: Final = "fsp.monitor_key"

WINDOW_PREDICTIONS = """
SELECT session_id, model_version, scheduled_start, prediction_date, risk_probability,
       alert_threshold, risk_prediction, actual_poor_session, features
FROM fsp.first_session_predictions
WHERE ((scheduled_start > %(since)s AND scheduled_start <= %(now)s)
   OR (prediction_date > %(since)s AND prediction_date <= %(now)s))
  AND scheduled_start >= %(earliest)s AND scheduled_start < %(latest)s
"""
OUT_OF_RANGE_IN_WINDOW = """
SELECT count(*) FROM fsp.first_session_predictions
WHERE prediction_date > %(since)s AND prediction_date <= %(now)s
  AND NOT (scheduled_start >= %(earliest)s AND scheduled_start < %(latest)s)
"""


def validate_window(days: Any) -> int:
    """The window in whole days, or `InvalidInput` naming the parameter."""
    try:
        value = float(days)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"--window-days must be a whole number of days, got {days!r}") from exc
    if math.isnan(value) or value != int(value) or not 1 <= value <= MAX_WINDOW_DAYS:
        raise InvalidInput(f"--window-days must be between 1 and {MAX_WINDOW_DAYS}, got {days!r}")
    return int(value)


@dataclass(frozen=True)
class Champion:
    """The champion's identity and lineage (what its training data was)."""

    version: str
    model_type: str
    cutoff: datetime | None
    run_id: str
    threshold: float
    holdout_auc: float | None = None


def champion_info(client: MlflowClient, name: str) -> Champion:
    """The champion version and its lineage tags, or NoChampion."""
    version = aliased_version(client, name, CHAMPION_ALIAS)
    tags = version.tags or {}
    cutoff = parse_moment(tags["cutoff"], "cutoff tag") if tags.get("cutoff") else None
    return Champion(
        version=str(version.version),
        model_type=tags.get("model_type", "unknown"),
        cutoff=cutoff,
        run_id=version.run_id or "",
        threshold=float(tags.get("alert_threshold", "0.5")),
        holdout_auc=float(tags["holdout_auc_roc"]) if tags.get("holdout_auc_roc") else None,
    )


@dataclass
class Window:
    """The predictions relevant to a monitoring window."""

    now: datetime
    days: int
    labelled: pd.DataFrame
    scored: pd.DataFrame
    skipped_start_out_of_range: int = 0

    @property
    def since(self) -> datetime:
        return self.now - timedelta(days=self.days)


def read_window(conn: psycopg.Connection, now: datetime, days: int) -> Window:
    """Labelled predictions of sessions that started in the window, and the features of
    every session scored in it."""
    since = now - timedelta(days=days)
    params = {"since": since, "now": now, "earliest": EARLIEST_START, "latest": LATEST_START}
    rows = read_frame(conn, WINDOW_PREDICTIONS, params)
    skipped = conn.execute(OUT_OF_RANGE_IN_WINDOW, params).fetchone()[0]  # type: ignore[index]
    if rows.empty:
        return Window(now, days, rows, rows, skipped)
    starts = pd.to_datetime(rows["scheduled_start"], utc=True)
    scored_at = pd.to_datetime(rows["prediction_date"], utc=True)
    in_start = (starts > since) & (starts <= now)
    labelled = rows[in_start & rows["actual_poor_session"].notna()].reset_index(drop=True)
    scored = rows[(scored_at > since) & (scored_at <= now)].reset_index(drop=True)
    return Window(now, days, labelled, scored, skipped)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def performance_rows(
    window: Window, champion: Champion, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """One evaluation per model version that has labelled predictions in the window;
    the champion's also carries its live check against its own holdout AUC."""
    settings = settings or get_settings()
    out = []
    for version, group in window.labelled.groupby("model_version", sort=True):
        y = group["actual_poor_session"].astype(bool).to_numpy().astype(int)
        p = group["risk_probability"].to_numpy(dtype=float)
        threshold = (
            float(group["alert_threshold"].dropna().iloc[0])
            if group["alert_threshold"].notna().any()
            else champion.threshold
        )
        metrics = evaluate(y, p, threshold)
        out.append(
            {
                "model_version": str(version),
                "is_champion": str(version) == champion.version,
                "threshold": threshold,
                "metrics": {k: _finite(v) for k, v in metrics.items()},
                "sample_size": len(y),
                "live_check": _live_check(y, p, champion, settings)
                if str(version) == champion.version
                else None,
            }
        )
    return out


def _live_check(y: np.ndarray, p: np.ndarray, champion: Champion, settings: Settings) -> dict:
    return live_check(
        y,
        p,
        champion.holdout_auc,
        settings.monitor_auc_drop_tolerance,
        settings.monitor_auc_floor,
        settings.monitor_bootstrap_resamples,
    ).as_dict()


def store_performance(
    conn: psycopg.Connection,
    rows: list[dict[str, Any]],
    model_types: dict[str, str],
    window: Window,
    extra: dict[str, Any],
) -> int:
    """Upsert one performance log row per version for (version, now, window)."""
    with conn.transaction():
        for row in rows:
            m = row["metrics"]
            detail = {**m, "threshold": row["threshold"], "is_champion": row["is_champion"]}
            if row.get("live_check"):
                detail["live_check"] = row["live_check"]
            detail.update(extra)
            conn.execute(
                "INSERT INTO fsp.model_performance_logs (model_type, model_version,"
                " evaluation_date, accuracy, precision, recall, f1_score, auc_roc, sample_size,"
                " time_window_days, metrics_detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s) ON CONFLICT (model_version, evaluation_date, time_window_days)"
                " DO UPDATE SET model_type = EXCLUDED.model_type, accuracy = EXCLUDED.accuracy,"
                " precision = EXCLUDED.precision, recall = EXCLUDED.recall,"
                " f1_score = EXCLUDED.f1_score, auc_roc = EXCLUDED.auc_roc,"
                " sample_size = EXCLUDED.sample_size, metrics_detail = EXCLUDED.metrics_detail",
                (
                    model_types.get(row["model_version"], "unknown"),
                    row["model_version"],
                    window.now,
                    m["accuracy"],
                    m["precision"],
                    m["recall"],
                    m["f1"],
                    m["auc_roc"],
                    row["sample_size"],
                    window.days,
                    json.dumps(detail, default=str),
                ),
            )
    return len(rows)


MIN_REFERENCE_ROWS: Final = 200
"""Fewest reference rows a drift test is run on; a thinner slice is widened."""


@dataclass(frozen=True)
class Reference:
    """The drift reference: the champion's most recent training rows, over as many
    days as the monitoring window (widened when that holds too few rows)."""

    features: pd.DataFrame
    days: int | None  # None: the whole training set


def comparable_slice(
    starts: pd.Series, cutoff: datetime, days: int
) -> tuple[np.ndarray, int | None]:
    """Rows that started in the last `days` before the cut-off, doubling the span
    until there are MIN_REFERENCE_ROWS of them (None: all rows)."""
    span = days
    while span <= 8 * days:
        mask = (starts >= pd.Timestamp(cutoff - timedelta(days=span))).to_numpy()
        if mask.sum() >= MIN_REFERENCE_ROWS:
            return mask, span
        span *= 2
    return np.ones(len(starts), dtype=bool), None


def reference_features(conn: psycopg.Connection, champion: Champion, days: int) -> Reference:
    """The champion's training data, rebuilt point-in-time from its cutoff: the last
    weeks of it, as long as the window, so the comparison is like with like (a tutor's
    record three months ago is not this week's)."""
    if champion.cutoff is None:
        raise NotEnoughData(f"champion version {champion.version} has no cutoff tag")
    ts = build_training_set(conn, champion.cutoff)
    mask, span = comparable_slice(ts.starts, champion.cutoff, days)
    return Reference(sample_reference(ts.X[mask]), span)


def current_features(window: Window) -> pd.DataFrame:
    """The stored model input of every session scored in the window."""
    records = (
        [
            json.loads(f) if isinstance(f, str) else f
            for f in window.scored["features"].dropna().tolist()
        ]
        if not window.scored.empty
        else []
    )
    return features_frame(records)


def report_folder(settings: Settings, champion: Champion, window: Window) -> Path:
    """One folder per (now, champion, window): a rerun overwrites the same files."""
    stamp = window.now.strftime("%Y%m%dT%H%M%SZ")
    return settings.reports_dir / f"{stamp}-v{champion.version}-w{window.days}d"


def build_reports(
    settings: Settings, champion: Champion, reference: Reference | None, window: Window
) -> list[ReportResult]:
    """Drift when there are scored sessions and a reference; classification quality
    when enough labelled sessions of both classes exist."""
    results = []
    current = current_features(window)
    if reference is not None and len(current) and len(reference.features):
        drift = drift_report(reference.features, current, settings.monitor_drift_share, window.days)
        drift.figures["reference_window_days"] = reference.days
        results.append(drift)
    labelled = window.labelled
    if len(labelled) >= settings.monitor_min_labelled:
        y = labelled["actual_poor_session"].astype(bool).to_numpy().astype(int)
        if len(np.unique(y)) == 2:
            results.append(
                classification_report(y, labelled["risk_probability"].to_numpy(dtype=float))
            )
    return results


@dataclass
class SavedReport:
    """A report written to disk (and where)."""

    kind: str
    html: Path
    json: Path
    figures: dict[str, Any]
    reference_rows: int
    current_rows: int
    sizes: dict[str, int] = field(default_factory=dict)


def save_reports(results: list[ReportResult], folder: Path) -> list[SavedReport]:
    """HTML + JSON per report."""
    saved = []
    for result in results:
        html, data = save_report(result, folder)
        saved.append(
            SavedReport(
                result.kind,
                html,
                data,
                result.figures,
                result.reference_rows,
                result.current_rows,
                {"html_bytes": html.stat().st_size, "json_bytes": data.stat().st_size},
            )
        )
    return saved


def monitor_key(champion: Champion, window: Window) -> str:
    return f"v{champion.version}|{window.now.isoformat()}|{window.days}d"


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
    import mlflow

    experiment_id = ensure_experiment(client, settings)
    key = monitor_key(champion, window)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{MONITOR_KEY_TAG}` = '{key}'", max_results=1
    )
    run_id = found[0].info.run_id if found else None
    name = f"monitor {window.now.isoformat()} v{champion.version}"
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(
            {
                MONITOR_KEY_TAG: key,
                "fsp.run_type": "monitoring",
                "model_version": champion.version,
                "champion_run_id": champion.run_id,
                "evaluation_date": window.now.isoformat(),
                "time_window_days": str(window.days),
            }
        )
        metrics = {}
        for row in performance:
            if row["is_champion"]:
                for k in ("auc_roc", "precision", "recall", "f1", "accuracy"):
                    if row["metrics"].get(k) is not None:
                        metrics[f"live_{k}"] = row["metrics"][k]
                metrics["live_sample_size"] = row["sample_size"]
        metrics.update(_live_check_metrics(performance))
        for report in saved:
            if report.kind == "data_drift":
                metrics["drift_share"] = report.figures["drift_share"]
                metrics["drifted_columns_count"] = report.figures["drifted_columns_count"]
                metrics.update(_drift_score_metrics(report.figures))
        if metrics:
            mlflow.log_metrics(metrics)
        if saved:
            mlflow.log_artifacts(str(folder), artifact_path="monitoring")
        return run.info.run_id


def _drift_score_metrics(figures: dict[str, Any]) -> dict[str, float]:
    """Each compared feature's drift score as an MLflow metric `drift_score.<feature>`."""
    return {
        f"drift_score.{name}": float(c["score"])
        for name, c in figures.get("columns", {}).items()
        if c.get("score") is not None
    }


def _live_check_metrics(performance: list[dict[str, Any]]) -> dict[str, float]:
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


def store_drift_scores(
    conn: psycopg.Connection, saved: list[SavedReport], champion: Champion, window: Window
) -> int:
    """One row per compared feature in fsp.drift_scores (upsert: a rerun rewrites it)."""
    rows = [
        (name, c.get("method"), c.get("score"), c.get("threshold"), name in drifted, as_)
        for report in saved
        if report.kind == "data_drift"
        for drifted in [set(report.figures["drifted_columns"])]
        for name, c in report.figures["columns"].items()
        for as_ in [report.figures.get("compared_as", {}).get(name)]
    ]
    with conn.transaction():
        for row in rows:
            conn.execute(
                "INSERT INTO fsp.drift_scores (model_version, evaluation_date,"
                " time_window_days, feature, method, score, threshold, drifted, compared_as)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (model_version,"
                " evaluation_date, time_window_days, feature) DO UPDATE SET"
                " method = EXCLUDED.method, score = EXCLUDED.score,"
                " threshold = EXCLUDED.threshold, drifted = EXCLUDED.drifted,"
                " compared_as = EXCLUDED.compared_as",
                (champion.version, window.now, window.days, *row),
            )
    return len(rows)


def index_reports(
    conn: psycopg.Connection,
    saved: list[SavedReport],
    champion: Champion,
    window: Window,
    run_id: str | None,
) -> int:
    """One row per report in fsp.monitoring_reports (upsert on kind/version/now/window)."""
    with conn.transaction():
        for report in saved:
            conn.execute(
                "INSERT INTO fsp.monitoring_reports (kind, model_version, evaluation_date,"
                " time_window_days, html_path, json_path, mlflow_run_id, reference_rows,"
                " current_rows, summary) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (kind, model_version, evaluation_date, time_window_days) DO UPDATE"
                " SET html_path = EXCLUDED.html_path, json_path = EXCLUDED.json_path,"
                " mlflow_run_id = EXCLUDED.mlflow_run_id,"
                " reference_rows = EXCLUDED.reference_rows,"
                " current_rows = EXCLUDED.current_rows, summary = EXCLUDED.summary",
                (
                    report.kind,
                    champion.version,
                    window.now,
                    window.days,
                    str(report.html),
                    str(report.json),
                    run_id,
                    report.reference_rows,
                    report.current_rows,
                    json.dumps(
                        {k: v for k, v in report.figures.items() if k != "columns"}, default=str
                    ),
                ),
            )
    return len(saved)


def retrain_reasons(
    performance: list[dict[str, Any]], saved: list[SavedReport], settings: Settings
) -> list[str]:
    """Why a retrain is warranted (empty: it is not)."""
    reasons = []
    for row in performance:
        check = row.get("live_check")
        if not (
            row["is_champion"] and check and row["sample_size"] >= settings.monitor_min_labelled
        ):
            continue
        auc, (low, high) = check["live_auc"], check["interval"]
        if check["below_champion"]:
            reasons.append(
                f"live AUC {auc:.4f} (95% interval {low:.4f}-{high:.4f}, {row['sample_size']}"
                f" rated sessions) of version {row['model_version']} is below its own holdout"
                f" AUC {check['champion_holdout_auc']:.4f} minus {check['tolerance']}"
            )
        if check["below_floor"]:
            reasons.append(
                f"live AUC {auc:.4f} of version {row['model_version']} is below the floor"
                f" {settings.monitor_auc_floor} ({row['sample_size']} rated sessions)"
            )
    for report in saved:
        if (
            report.kind == "data_drift"
            and report.figures["drifted"]
            and report.current_rows >= settings.monitor_min_drift_rows
        ):
            reasons.append(
                f"{report.figures['drift_share']:.0%} of features drifted"
                f" ({', '.join(report.figures['drifted_columns'])}), more than the configured"
                f" {settings.monitor_drift_share:.0%}"
            )
    return reasons


def trained_as_of(client: MlflowClient, name: str, moment: datetime) -> str | None:
    """A registered version already trained with this cutoff (then retraining is a no-op)."""
    for version in client.search_model_versions(f"name='{name}'"):
        cutoff = (version.tags or {}).get("cutoff")
        if cutoff and parse_moment(cutoff, "cutoff tag") == moment:
            return str(version.version)
    return None


def request_retrain(name: str, moment: datetime, reasons: list[str], version: str) -> bool:
    """Emit the event the prefect.yaml trigger turns into a training run."""
    try:
        from prefect.events import emit_event

        event = emit_event(
            event=RETRAIN_EVENT,
            resource={"prefect.resource.id": f"fsp.model.{name}", "prefect.resource.name": name},
            payload={"as_of": moment.isoformat(), "reasons": reasons, "champion": version},
        )
    except Exception:  # an event is a notification: never fail monitoring because of it
        return False
    return event is not None


def package_champion_bento(settings: Settings) -> dict[str, Any]:
    """Rebuild the Bento of the (new) champion (`service.packaging`)."""
    try:
        from service.packaging import package_champion
    except ImportError as exc:
        return {"skipped": f"service.packaging is not available: {exc}"}
    return dict(package_champion(settings))


def retrain_and_package(settings: Settings, moment: datetime) -> dict[str, Any]:
    """Training flow as of `moment` → promotion gate → Bento rebuilt on promotion."""
    from flows.train import train_flow

    client = make_client(settings)
    existing = trained_as_of(client, settings.model_name, moment)
    if existing is not None:
        return {"skipped": f"version {existing} was already trained as of {moment.isoformat()}"}
    summary = train_flow(as_of=moment)
    result: dict[str, Any] = {
        "version": str(summary["version"]),
        "promoted": bool(summary["promoted"]),
        "gate_reason": summary["gate_reason"],
        "holdout_auc": summary["holdout_auc"],
    }
    if summary["promoted"]:
        result["bento"] = package_champion_bento(settings)
    return result


# --- tasks -------------------------------------------------------------------------


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
    """Evaluate per version and upsert fsp.model_performance_logs."""
    rows = performance_rows(window, champion, settings)
    client = make_client(settings)
    types = {champion.version: champion.model_type}
    for row in rows:
        if row["model_version"] not in types:
            try:
                v = client.get_model_version(settings.model_name, row["model_version"])
                types[row["model_version"]] = (v.tags or {}).get("model_type", "unknown")
            except Exception:
                types[row["model_version"]] = "unknown"
    with connection(settings) as conn:
        comparison = holdout_comparison(conn, window.since, window.now)
        store_performance(conn, rows, types, window, {"alerts_vs_holdout": comparison})
    for row in rows:
        row["alerts_vs_holdout"] = comparison
    return rows


@task(cache_policy=NO_CACHE, **RETRYING)
def load_reference(settings: Settings, champion: Champion, days: int) -> Reference | None:
    """The champion's most recent training rows (None when its lineage cannot be
    rebuilt: then there is no drift report, and the run says why in its log)."""
    try:
        with connection(settings) as conn:
            return reference_features(conn, champion, days)
    except NotEnoughData as exc:
        get_run_logger().warning("no drift reference: %s", exc)
        return None


@task(cache_policy=NO_CACHE)
def write_reports(
    settings: Settings, champion: Champion, reference: Reference | None, window: Window
) -> list[SavedReport]:
    """Evidently reports → HTML + JSON files."""
    results = build_reports(settings, champion, reference, window)
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
    return log_monitoring_run(
        make_client(settings),
        settings,
        champion,
        window,
        performance,
        saved,
        report_folder(settings, champion, window),
    )


@task(cache_policy=NO_CACHE, **RETRYING)
def index_in_db(
    settings: Settings, saved: list[SavedReport], champion: Champion, window: Window, run_id: str
) -> int:
    """Index the reports in fsp.monitoring_reports."""
    with connection(settings) as conn:
        store_drift_scores(conn, saved, champion, window)
        return index_reports(conn, saved, champion, window, run_id)


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
        request_retrain(settings.model_name, moment, reasons, champion.version)
        if retrain:
            from flows.retrain import retrain_flow

            retrained = retrain_flow(as_of=moment)
    return summarize(champion, window, performance, saved, run_id, reasons, retrained)


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
        "performance": [
            {
                "model_version": r["model_version"],
                "sample_size": r["sample_size"],
                **{
                    k: (round(r["metrics"][k], 4) if r["metrics"][k] is not None else None)
                    for k in ("auc_roc", "accuracy", "precision", "recall", "f1")
                },
                "live_check": r.get("live_check"),
            }
            for r in performance
        ],
        "alerts_vs_holdout": performance[0]["alerts_vs_holdout"] if performance else None,
        "reports": {
            r.kind: {
                "html": str(r.html),
                "json": str(r.json),
                **r.sizes,
                **{k: v for k, v in r.figures.items() if k != "columns"},
            }
            for r in saved
        },
        "mlflow_run_id": run_id,
        "retrain_reasons": reasons,
        "retrain": retrained,
    }
