"""The monitoring window: the predictions of sessions that started (labelled ones) or
were scored (all) in (now - days, now], each model version's live performance over
them, and the one row per version kept in fsp.model_performance_logs."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd
import psycopg

from fsp.constants import EARLIEST_START, LATEST_START
from fsp.errors import InvalidInput
from fsp.features import read_frame
from fsp.settings import Settings
from monitoring.champion import Champion
from monitoring.drift import features_frame
from monitoring.live_check import live_check
from training.model import evaluate

log = logging.getLogger(__name__)

MAX_WINDOW_DAYS: Final = 3650
METRIC_NAMES: Final = ("auc_roc", "accuracy", "precision", "recall", "f1")
"""The figures of a version's live performance shown in summaries and logged to MLflow."""

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
UPSERT_PERFORMANCE = (
    "INSERT INTO fsp.model_performance_logs (model_type, model_version,"
    " evaluation_date, accuracy, precision, recall, f1_score, auc_roc, sample_size,"
    " time_window_days, metrics_detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
    " %s, %s) ON CONFLICT (model_version, evaluation_date, time_window_days)"
    " DO UPDATE SET model_type = EXCLUDED.model_type, accuracy = EXCLUDED.accuracy,"
    " precision = EXCLUDED.precision, recall = EXCLUDED.recall,"
    " f1_score = EXCLUDED.f1_score, auc_roc = EXCLUDED.auc_roc,"
    " sample_size = EXCLUDED.sample_size, metrics_detail = EXCLUDED.metrics_detail"
)


def validate_window(days: Any) -> int:
    """The window in whole days, or `InvalidInput` naming the parameter."""
    try:
        value = float(days)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"--window-days must be a whole number of days, got {days!r}") from exc
    if math.isnan(value) or value != int(value) or not 1 <= value <= MAX_WINDOW_DAYS:
        raise InvalidInput(f"--window-days must be between 1 and {MAX_WINDOW_DAYS}, got {days!r}")
    return int(value)


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
    every session scored in it. A start outside pandas' range is left out and counted."""
    since = now - timedelta(days=days)
    params = {"since": since, "now": now, "earliest": EARLIEST_START, "latest": LATEST_START}
    rows = read_frame(conn, WINDOW_PREDICTIONS, params)
    skipped = conn.execute(OUT_OF_RANGE_IN_WINDOW, params).fetchone()[0]  # type: ignore[index]
    if skipped:
        log.warning(
            "left out %d prediction(s) whose start is outside %s..%s",
            skipped,
            EARLIEST_START,
            LATEST_START,
        )
    if rows.empty:
        return Window(now, days, rows, rows, skipped)
    starts = pd.to_datetime(rows["scheduled_start"], utc=True)
    scored_at = pd.to_datetime(rows["prediction_date"], utc=True)
    in_start = (starts > since) & (starts <= now)
    labelled = rows[in_start & rows["actual_poor_session"].notna()].reset_index(drop=True)
    scored = rows[(scored_at > since) & (scored_at <= now)].reset_index(drop=True)
    return Window(now, days, labelled, scored, skipped)


def current_features(window: Window) -> pd.DataFrame:
    """The stored model input of every session scored in the window."""
    if window.scored.empty:
        return features_frame([])
    records = [
        json.loads(f) if isinstance(f, str) else f
        for f in window.scored["features"].dropna().tolist()
    ]
    return features_frame(records)


def finite(value: float | None) -> float | None:
    """The value, or None when it is missing or not finite (JSON and SQL take None)."""
    return float(value) if value is not None and np.isfinite(value) else None


def version_threshold(group: pd.DataFrame, champion: Champion) -> float:
    """The alert threshold stored with a version's predictions (the champion's when none was)."""
    stored = group["alert_threshold"].dropna()
    return float(stored.iloc[0]) if len(stored) else champion.threshold


def performance_rows(
    window: Window, champion: Champion, settings: Settings
) -> list[dict[str, Any]]:
    """One evaluation per model version that has labelled predictions in the window;
    the champion's also carries its live check against its own holdout AUC."""
    out = []
    for version, group in window.labelled.groupby("model_version", sort=True):
        y = group["actual_poor_session"].astype(bool).to_numpy().astype(int)
        p = group["risk_probability"].to_numpy(dtype=float)
        threshold = version_threshold(group, champion)
        is_champion = str(version) == champion.version
        out.append(
            {
                "model_version": str(version),
                "is_champion": is_champion,
                "threshold": threshold,
                "metrics": {k: finite(v) for k, v in evaluate(y, p, threshold).items()},
                "sample_size": len(y),
                "live_check": champion_check(y, p, champion, settings) if is_champion else None,
            }
        )
    return out


def champion_check(
    y: np.ndarray, p: np.ndarray, champion: Champion, settings: Settings
) -> dict[str, Any]:
    """The champion's live AUC judged against its own holdout AUC (`live_check`)."""
    return live_check(
        y,
        p,
        champion.holdout_auc,
        settings.monitor_auc_drop_tolerance,
        settings.monitor_auc_floor,
        settings.monitor_bootstrap_resamples,
    ).as_dict()


def performance_detail(row: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """What metrics_detail keeps beyond the columns: every metric, the threshold, the
    live check and the alerted-vs-holdout comparison."""
    detail = {**row["metrics"], "threshold": row["threshold"], "is_champion": row["is_champion"]}
    if row.get("live_check"):
        detail["live_check"] = row["live_check"]
    return {**detail, **extra}


def store_performance(
    conn: psycopg.Connection,
    rows: list[dict[str, Any]],
    types: dict[str, str],
    window: Window,
    extra: dict[str, Any],
) -> int:
    """Upsert one performance log row per version for (version, now, window): a rerun
    for the same `now` rewrites the same values."""
    with conn.transaction():
        for row in rows:
            m = row["metrics"]
            conn.execute(
                UPSERT_PERFORMANCE,
                (
                    types.get(row["model_version"], "unknown"),
                    row["model_version"],
                    window.now,
                    m["accuracy"],
                    m["precision"],
                    m["recall"],
                    m["f1"],
                    m["auc_roc"],
                    row["sample_size"],
                    window.days,
                    json.dumps(performance_detail(row, extra), default=str),
                ),
            )
    return len(rows)
