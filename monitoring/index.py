"""The database's index of the monitoring: one row per report in fsp.monitoring_reports
(where its files are, which MLflow run carries them, its headline figures) and one row
per compared feature in fsp.drift_scores. Both are upserts: a rerun rewrites its rows."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from monitoring.champion import Champion
from monitoring.reports import SavedReport, drift_of
from monitoring.window import Window

UPSERT_DRIFT_SCORE = (
    "INSERT INTO fsp.drift_scores (model_version, evaluation_date,"
    " time_window_days, feature, method, score, threshold, drifted, compared_as)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (model_version,"
    " evaluation_date, time_window_days, feature) DO UPDATE SET"
    " method = EXCLUDED.method, score = EXCLUDED.score,"
    " threshold = EXCLUDED.threshold, drifted = EXCLUDED.drifted,"
    " compared_as = EXCLUDED.compared_as"
)
UPSERT_REPORT = (
    "INSERT INTO fsp.monitoring_reports (kind, model_version, evaluation_date,"
    " time_window_days, html_path, json_path, mlflow_run_id, reference_rows,"
    " current_rows, summary) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (kind, model_version, evaluation_date, time_window_days) DO UPDATE"
    " SET html_path = EXCLUDED.html_path, json_path = EXCLUDED.json_path,"
    " mlflow_run_id = EXCLUDED.mlflow_run_id,"
    " reference_rows = EXCLUDED.reference_rows,"
    " current_rows = EXCLUDED.current_rows, summary = EXCLUDED.summary"
)


def drift_score_rows(saved: list[SavedReport]) -> list[tuple[Any, ...]]:
    """(feature, method, score, threshold, drifted, compared as) per compared feature."""
    drift = drift_of(saved)
    if drift is None:
        return []
    drifted = set(drift.figures["drifted_columns"])
    compared_as = drift.figures.get("compared_as", {})
    return [
        (
            name,
            c.get("method"),
            c.get("score"),
            c.get("threshold"),
            name in drifted,
            compared_as.get(name),
        )
        for name, c in drift.figures["columns"].items()
    ]


def store_drift_scores(
    conn: psycopg.Connection, saved: list[SavedReport], champion: Champion, window: Window
) -> int:
    """One row per compared feature in fsp.drift_scores (upsert: a rerun rewrites it)."""
    rows = drift_score_rows(saved)
    with conn.transaction():
        for row in rows:
            conn.execute(UPSERT_DRIFT_SCORE, (champion.version, window.now, window.days, *row))
    return len(rows)


def headline(report: SavedReport) -> str:
    """A report's figures without the per-column detail, as JSON."""
    return json.dumps({k: v for k, v in report.figures.items() if k != "columns"}, default=str)


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
                UPSERT_REPORT,
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
                    headline(report),
                ),
            )
    return len(saved)
