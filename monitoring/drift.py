"""Evidently reports: data drift of the model's input between the champion's training
data and the sessions scored in the window, and classification quality where
ratings have arrived. Results are read from `snapshot.dict()["metrics"]` by each
metric's `config["type"]` (Evidently 0.7 API)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from fsp.features import MODEL_INPUT_COLUMNS

log = logging.getLogger(__name__)

CATEGORICAL: Final = ("subject",)
NUMERICAL: Final = tuple(c for c in MODEL_INPUT_COLUMNS if c not in CATEGORICAL)
WEEKLY_CALENDAR: Final = ("local_dow",)
"""Calendar features whose distribution is a property of whole weeks only."""
REFERENCE_SAMPLE: Final = 5000
"""Rows of the training data kept as the drift reference: enough for stable tests,
small enough for a report that renders in about a second."""
SAMPLE_SEED: Final = 0
NUMERICAL_TEST: Final = "wasserstein"
NUMERICAL_THRESHOLD: Final = 0.2
CATEGORICAL_TEST: Final = "jensenshannon"
CATEGORICAL_THRESHOLD: Final = 0.2
"""Effect sizes, not p-values. Sessions of one tutor share that tutor's history
features, so rows are far from independent and p-value tests (K-S, chi-square)
flag about half the features on two random halves of the same training data.
A normed Wasserstein distance of 0.2 (a fifth of a standard deviation) and a
Jensen-Shannon distance of 0.2 flag ~1 feature in 13 on a same-distribution
sample of 300 sessions, and most of the features that really moved."""


@dataclass
class ReportResult:
    """One Evidently report: its snapshot and the figures read from it."""

    kind: str
    snapshot: Any
    figures: dict[str, Any] = field(default_factory=dict)
    reference_rows: int = 0
    current_rows: int = 0


def _definition(with_classification: bool = False, columns: tuple[str, ...] = ()):
    # Evidently takes seconds to import: only a monitoring run that builds a report pays.
    from evidently import BinaryClassification, DataDefinition

    if with_classification:
        return DataDefinition(
            numerical_columns=["prediction"],
            classification=[BinaryClassification(target="target", prediction_probas="prediction")],
        )
    columns = columns or tuple(MODEL_INPUT_COLUMNS)
    return DataDefinition(
        numerical_columns=[c for c in columns if c not in CATEGORICAL],
        categorical_columns=[c for c in columns if c in CATEGORICAL],
    )


def features_frame(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """Model input as a typed frame (from stored `features` jsonb or a training set)."""
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=list(MODEL_INPUT_COLUMNS))
    for column in NUMERICAL:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["subject"] = frame["subject"].astype(str)
    return frame


def column_kind(name: str) -> str:
    """How a model input column is compared for drift, by rule (never by a list that
    must be kept in step with the features): the subject is categorical; the weekday
    is a weekly calendar; `*_count` is the base growth count and `n_*` the growth
    counts measured against it (both rise by construction as tutors teach);
    everything else is numerical as it stands."""
    if name in CATEGORICAL:
        return "categorical"
    if name in WEEKLY_CALENDAR:
        return "weekly_calendar"
    if name.endswith("_count"):
        return "base_count"
    if name.startswith("n_"):
        return "growth_count"
    return "numerical"


@dataclass(frozen=True)
class DriftView:
    """What the drift test compares: the columns kept (growth counts as shares of the
    base count), and the columns left out with the reason."""

    compared: tuple[str, ...]
    compared_as: dict[str, str]
    excluded: dict[str, str]


def drift_view(window_days: int | None) -> DriftView:
    """Which columns to compare and in what form, for a window of `window_days`.

    Counts of a tutor's sessions and ratings grow whenever tutors keep teaching, so
    their raw distribution drifts on a platform that does not change at all; the
    share of ratings per session taught does not. The weekday mix is only a
    distribution over whole weeks."""
    compared, compared_as, excluded = [], {}, {}
    base = next((c for c in MODEL_INPUT_COLUMNS if column_kind(c) == "base_count"), None)
    for name in MODEL_INPUT_COLUMNS:
        kind = column_kind(name)
        if kind == "base_count":
            excluded[name] = "grows by construction as tutors teach; its shares are compared"
        elif kind == "weekly_calendar" and (window_days is None or window_days % 7):
            excluded[name] = f"a weekday mix needs whole weeks; the window is {window_days} days"
        else:
            compared.append(name)
            if kind == "growth_count" and base is not None:
                compared_as[name] = f"{name} / ({base} + 1)"
    return DriftView(tuple(compared), compared_as, excluded)


def apply_view(frame: pd.DataFrame, view: DriftView) -> pd.DataFrame:
    """The frame in the view's form (growth counts as shares of the base count)."""
    out = features_frame(frame)
    base = next((c for c in MODEL_INPUT_COLUMNS if column_kind(c) == "base_count"), None)
    for name in view.compared_as:
        out[name] = out[name] / (out[base] + 1.0)
    return out[list(view.compared)]


def sample_reference(X: pd.DataFrame, n: int = REFERENCE_SAMPLE) -> pd.DataFrame:
    """A fixed-seed sample of the reference data (all of it when small)."""
    if len(X) <= n:
        return X.reset_index(drop=True)
    return X.sample(n=n, random_state=SAMPLE_SEED).reset_index(drop=True)


def _metrics(snapshot) -> list[dict[str, Any]]:
    return snapshot.dict()["metrics"]


def _type(metric: dict[str, Any]) -> str:
    return str(metric["config"]["type"]).rsplit(":", 1)[-1]


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    drift_share: float,
    window_days: int | None = None,
):
    """Data drift per compared feature (`drift_view`: growth counts as shares, the
    weekday only over whole weeks) and the share of drifted features; `drifted` when
    that share exceeds `drift_share`."""
    # Evidently takes seconds to import: only a monitoring run that builds a report pays.
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    view = drift_view(window_days)
    reference, current = apply_view(reference, view), apply_view(current, view)
    definition = _definition(columns=view.compared)
    preset = DataDriftPreset(
        drift_share=drift_share,
        num_method=NUMERICAL_TEST,
        num_threshold=NUMERICAL_THRESHOLD,
        cat_method=CATEGORICAL_TEST,
        cat_threshold=CATEGORICAL_THRESHOLD,
    )
    snapshot = Report([preset]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    count, share, columns = _drift_figures(snapshot)
    drifted_columns = _drifted_columns(columns)
    return ReportResult(
        kind="data_drift",
        snapshot=snapshot,
        figures={
            "drifted_columns_count": int(count),
            "drift_share": round(share, 4),
            "drift_share_threshold": drift_share,
            "drifted": share > drift_share,
            "drifted_columns": drifted_columns,
            "compared_columns": list(view.compared),
            "compared_as": view.compared_as,
            "excluded_columns": view.excluded,
            "columns": columns,
        },
        reference_rows=len(reference),
        current_rows=len(current),
    )


def _drift_figures(snapshot: Any) -> tuple[float, float, dict[str, dict[str, Any]]]:
    """(drifted count, drifted share, per-column score/method/threshold) of a drift snapshot."""
    count, share, columns = 0.0, 0.0, {}
    for metric in _metrics(snapshot):
        kind = _type(metric)
        if kind == "DriftedColumnsCount":
            count, share = float(metric["value"]["count"]), float(metric["value"]["share"])
        elif kind == "ValueDrift":
            columns[metric["config"].get("column")] = {
                "score": _number(metric["value"]),
                "method": metric["config"].get("method"),
                "threshold": metric["config"].get("threshold"),
            }
    return count, share, columns


def _number(value: Any) -> float | None:
    """A figure of Evidently's as a finite float, or None (a value that is not a number
    is logged: the report then shows that figure as missing)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        log.warning("Evidently figure %r is not a number: recorded as missing", value)
        return None
    return number if np.isfinite(number) else None


P_VALUE_TESTS: Final = frozenset(
    {
        "ks",
        "chisquare",
        "z",
        "t_test",
        "anderson",
        "fisher_exact",
        "cramer_von_mises",
        "g_test",
        "mannw",
        "epps_singleton",
        "empirical_mmd",
    }
)


def column_drifted(method: str, score: float | None, threshold: float | None) -> bool:
    """Evidently's per-column verdict: a p-value below, or a distance at/above, the threshold."""
    if score is None or threshold is None:
        return False
    is_p_value = method in P_VALUE_TESTS or "p_value" in method
    return score < threshold if is_p_value else score >= threshold


def _drifted_columns(columns: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(
        name
        for name, c in columns.items()
        if column_drifted(str(c.get("method") or ""), c.get("score"), c.get("threshold"))
    )


def classification_report(y: np.ndarray, p: np.ndarray):
    """Classification quality of the stored probabilities against the arrived labels."""
    # Evidently takes seconds to import: only a monitoring run that builds a report pays.
    from evidently import Dataset, Report
    from evidently.presets import ClassificationPreset

    current = pd.DataFrame({"target": np.asarray(y, dtype=int), "prediction": np.asarray(p)})
    snapshot = Report([ClassificationPreset()]).run(
        Dataset.from_pandas(current, data_definition=_definition(with_classification=True)),
        None,
    )
    figures = {}
    for metric in _metrics(snapshot):
        kind = _type(metric)
        if kind in ("Accuracy", "Precision", "Recall", "F1Score", "RocAuc", "LogLoss"):
            figures[kind] = _number(metric["value"])
    return ReportResult(
        kind="classification", snapshot=snapshot, figures=figures, current_rows=len(current)
    )


def save_report(result: ReportResult, folder: Path) -> tuple[Path, Path]:
    """Write the report as a self-contained HTML page and as JSON; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{result.kind}.html"
    data = folder / f"{result.kind}.json"
    result.snapshot.save_html(str(html))
    data.write_text(
        json.dumps(
            {"figures": result.figures, "snapshot": json.loads(result.snapshot.json())},
            default=str,
        )
    )
    return html, data
