"""The window's Evidently reports, built and written to disk: data drift between the
drift reference and the sessions scored in the window, and classification quality
where enough ratings of both kinds have arrived. Each report is an HTML page and a
JSON file in one folder per (now, champion, window), so a rerun overwrites its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsp.settings import Settings
from monitoring.champion import Champion
from monitoring.drift import ReportResult, classification_report, drift_report, save_report
from monitoring.reference import Reference
from monitoring.window import Window, current_features

log = logging.getLogger(__name__)

DRIFT = "data_drift"
CLASSIFICATION = "classification"


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


def report_folder(settings: Settings, champion: Champion, window: Window) -> Path:
    """One folder per (now, champion, window): a rerun overwrites the same files."""
    stamp = window.now.strftime("%Y%m%dT%H%M%SZ")
    return settings.reports_dir / f"{stamp}-v{champion.version}-w{window.days}d"


def drift_result(
    settings: Settings, reference: Reference | None, window: Window
) -> ReportResult | None:
    """The drift report, or None (logged) when there is nothing to compare."""
    if reference is None or not len(reference.features):
        log.info("no drift report: no reference rows to compare with")
        return None
    current = current_features(window)
    if not len(current):
        log.info("no drift report: no session was scored in the window")
        return None
    drift = drift_report(reference.features, current, settings.monitor_drift_share, window.days)
    drift.figures["reference_window_days"] = reference.days
    return drift


def classification_result(settings: Settings, window: Window) -> ReportResult | None:
    """The classification report, or None (logged) when too few or one-class labels."""
    labelled = window.labelled
    if len(labelled) < settings.monitor_min_labelled:
        log.info(
            "no classification report: %d rated sessions, fewer than the %d required",
            len(labelled),
            settings.monitor_min_labelled,
        )
        return None
    y = labelled["actual_poor_session"].astype(bool).to_numpy().astype(int)
    if len(np.unique(y)) < 2:
        log.info("no classification report: every rated session has the same outcome")
        return None
    return classification_report(y, labelled["risk_probability"].to_numpy(dtype=float))


def build_reports(
    settings: Settings, reference: Reference | None, window: Window
) -> list[ReportResult]:
    """Drift when there are scored sessions and a reference; classification quality
    when enough labelled sessions of both classes exist."""
    results = (drift_result(settings, reference, window), classification_result(settings, window))
    return [r for r in results if r is not None]


def save_reports(results: list[ReportResult], folder: Path) -> list[SavedReport]:
    """HTML + JSON per report, with their sizes."""
    saved = []
    for result in results:
        html, data = save_report(result, folder)
        sizes = {"html_bytes": html.stat().st_size, "json_bytes": data.stat().st_size}
        saved.append(
            SavedReport(
                result.kind,
                html,
                data,
                result.figures,
                result.reference_rows,
                result.current_rows,
                sizes,
            )
        )
    return saved


def drift_of(saved: list[SavedReport]) -> SavedReport | None:
    """The drift report among the saved ones, if any."""
    return next((r for r in saved if r.kind == DRIFT), None)
