"""Evidently reports: data drift of the model's input between the champion's training
data and the sessions scored in the window, and classification quality where
ratings have arrived. Results are read from `snapshot.dict()["metrics"]` by each
metric's `config["type"]` (Evidently 0.7 API)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from training.features import MODEL_INPUT_COLUMNS

CATEGORICAL: Final = ("subject",)
NUMERICAL: Final = tuple(c for c in MODEL_INPUT_COLUMNS if c not in CATEGORICAL)
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


def _definition(with_classification: bool = False):
    from evidently import BinaryClassification, DataDefinition

    if with_classification:
        return DataDefinition(
            numerical_columns=["prediction"],
            classification=[BinaryClassification(target="target", prediction_probas="prediction")],
        )
    return DataDefinition(numerical_columns=list(NUMERICAL), categorical_columns=list(CATEGORICAL))


def features_frame(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """Model input as a typed frame (from stored `features` jsonb or a training set)."""
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=list(MODEL_INPUT_COLUMNS))
    for column in NUMERICAL:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["subject"] = frame["subject"].astype(str)
    return frame


def sample_reference(X: pd.DataFrame, n: int = REFERENCE_SAMPLE) -> pd.DataFrame:
    """A fixed-seed sample of the reference data (all of it when small)."""
    if len(X) <= n:
        return X.reset_index(drop=True)
    return X.sample(n=n, random_state=SAMPLE_SEED).reset_index(drop=True)


def _metrics(snapshot) -> list[dict[str, Any]]:
    return snapshot.dict()["metrics"]


def _type(metric: dict[str, Any]) -> str:
    return str(metric["config"]["type"]).rsplit(":", 1)[-1]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float):
    """Data drift per feature (Evidently's default test per column type and size) and
    the share of drifted features; `drifted` when that share exceeds `drift_share`."""
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = features_frame(reference), features_frame(current)
    definition = _definition()
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
    count, share, columns = 0.0, 0.0, {}
    for metric in _metrics(snapshot):
        kind = _type(metric)
        if kind == "DriftedColumnsCount":
            count, share = float(metric["value"]["count"]), float(metric["value"]["share"])
        elif kind == "ValueDrift":
            column = metric["config"].get("column")
            columns[column] = {
                "score": _number(metric["value"]),
                "method": metric["config"].get("method"),
                "threshold": metric["config"].get("threshold"),
            }
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
            "columns": columns,
        },
        reference_rows=len(reference),
        current_rows=len(current),
    )


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
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
