"""The monitoring's decision functions, pure: when a retrain is warranted (live AUC
against the champion's holdout AUC and the floor, drift over enough sessions), how far
the drift reference is widened, which windows and version tags are accepted, and how
the runs' artifacts show their figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flows.artifacts import artifact_key, cell, markdown_table
from flows.sections import (
    decision_text,
    drift_section,
    levels_in_band_order,
    performance_table,
    scoring_sections,
)
from fsp.errors import InvalidInput
from fsp.settings import Settings
from monitoring.champion import champion_from_tags, tag_moment
from monitoring.decision import drift_reasons, live_reasons, retrain_reasons
from monitoring.reference import MIN_REFERENCE_ROWS, comparable_slice
from monitoring.reports import SavedReport
from monitoring.summary import report_summary
from monitoring.window import validate_window

SETTINGS = Settings(
    FSP_AUC_FLOOR=0.6,
    FSP_DRIFT_SHARE=0.2,
    FSP_MONITOR_MIN_LABELLED=50,
    FSP_MONITOR_MIN_DRIFT_ROWS=200,
)
CUTOFF = datetime(2026, 11, 1, tzinfo=UTC)


def champion_row(
    auc: float = 0.8,
    interval: tuple[float, float] = (0.75, 0.85),
    holdout: float = 0.8,
    n: int = 100,
    champion: bool = True,
) -> dict[str, Any]:
    """A performance row as the window computes it, with its live check."""
    below_champion = interval[1] < holdout - 0.02
    check = {
        "live_auc": auc,
        "interval": list(interval),
        "champion_holdout_auc": holdout,
        "tolerance": 0.02,
        "sample_size": n,
        "floor": 0.6,
        "below_champion": below_champion,
        "below_floor": auc < 0.6,
    }
    return {
        "model_version": "3",
        "is_champion": champion,
        "sample_size": n,
        "metrics": {"auc_roc": auc},
        "live_check": check if champion else None,
    }


def drift(share: float, drifted: bool, rows: int) -> SavedReport:
    figures = {
        "drift_share": share,
        "drifted": drifted,
        "drifted_columns": ["avg_rating", "subject"] if drifted else [],
        "drifted_columns_count": 2 if drifted else 0,
        "drift_share_threshold": 0.2,
        "compared_columns": ["avg_rating", "subject", "student_age"],
        "columns": {
            "avg_rating": {"score": 0.41, "method": "wasserstein", "threshold": 0.2},
            "subject": {"score": 0.3, "method": "jensenshannon", "threshold": 0.2},
            "student_age": {"score": 0.05, "method": "wasserstein", "threshold": 0.2},
        },
    }
    return SavedReport("data_drift", Path("/r/d.html"), Path("/r/d.json"), figures, 5000, rows)


def test_a_healthy_champion_and_a_calm_platform_warrant_nothing() -> None:
    assert retrain_reasons([champion_row()], [drift(0.1, False, 500)], SETTINGS) == []


def test_a_live_auc_significantly_below_the_holdout_auc_warrants_a_retrain() -> None:
    row = champion_row(auc=0.70, interval=(0.64, 0.75), holdout=0.80)
    [reason] = retrain_reasons([row], [], SETTINGS)
    assert "below its own holdout AUC 0.8000 minus 0.02" in reason and "100 rated" in reason


def test_a_live_auc_under_the_floor_warrants_a_retrain() -> None:
    row = champion_row(auc=0.55, interval=(0.5, 0.62), holdout=0.6)
    assert any("below the floor 0.6" in r for r in live_reasons(row, SETTINGS))


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (champion_row(auc=0.5, interval=(0.4, 0.6), n=49), "too few rated sessions"),
        (champion_row(auc=0.5, interval=(0.4, 0.6), champion=False), "not the champion"),
    ],
)
def test_a_low_auc_is_not_acted_on_over_too_few_sessions_or_for_another_version(
    row: dict[str, Any], why: str
) -> None:
    assert live_reasons(row, SETTINGS) == [], why


def test_drift_warrants_a_retrain_only_over_enough_scored_sessions() -> None:
    [reason] = drift_reasons([drift(0.5, True, 200)], SETTINGS)
    assert reason.startswith("50% of features drifted (avg_rating, subject)")
    assert drift_reasons([drift(0.5, True, 199)], SETTINGS) == []
    assert drift_reasons([drift(0.1, False, 5000)], SETTINGS) == []


def test_the_reference_slice_is_widened_until_it_holds_enough_rows() -> None:
    days_before = np.repeat(np.arange(1, 121), 5)  # 5 sessions a day for 120 days
    starts = pd.Series(pd.to_datetime([CUTOFF - timedelta(days=int(d)) for d in days_before]))
    mask, span = comparable_slice(starts, CUTOFF, 14)
    assert span == 56 and mask.sum() >= MIN_REFERENCE_ROWS  # 14 → 28 → 56 days
    mask, span = comparable_slice(starts.iloc[:100], CUTOFF, 2)  # never enough: all rows
    assert span is None and mask.all()


@pytest.mark.parametrize("days", [0, -7, 1.5, "week", float("nan"), 4000])
def test_the_window_is_a_whole_number_of_days_within_bounds(days: Any) -> None:
    with pytest.raises(InvalidInput, match="--window-days"):
        validate_window(days)


def test_the_champion_is_read_from_its_version_tags() -> None:
    tags = {"cutoff": "2026-11-01T00:00:00Z", "holdout_auc_roc": "0.81", "model_type": "lr"}
    champion = champion_from_tags("4", "run", tags)
    assert champion.cutoff == CUTOFF and champion.holdout_auc == 0.81
    assert champion.threshold == 0.5 and champion.model_type == "lr"
    with pytest.raises(InvalidInput, match="cutoff tag '2026-11-01' has no UTC offset"):
        tag_moment("2026-11-01", "cutoff")


def test_artifact_keys_follow_prefects_rule_and_cells_show_figures() -> None:
    assert artifact_key("fsp-score") == "fsp-score"
    for bad in ("fsp_score", "Fsp-score", "fsp score", "-fsp"):
        with pytest.raises(InvalidInput, match="artifact key"):
            artifact_key(bad)
    assert [cell(v) for v in (0.123456, None, True, 7, "a|b")] == [
        "0.1235",
        "n/a",
        "yes",
        "7",
        "a\\|b",
    ]
    assert markdown_table(("a", "b"), [(1, 2.0)]).splitlines()[-1] == "| 1 | 2.0000 |"


def test_the_monitor_artifact_shows_the_interval_the_scores_and_the_decision() -> None:
    row = champion_row(auc=0.7, interval=(0.64, 0.75), holdout=0.8)
    perf = {
        "model_version": "3",
        "sample_size": 100,
        "auc_roc": 0.7,
        "precision": 0.5,
        "recall": 0.4,
        "live_check": row["live_check"],
    }
    summary = {
        "performance": [perf],
        "reports": {"data_drift": report_summary(drift(0.5, True, 300))},
        "retrain_reasons": ["live AUC low"],
        "retrain": {"version": "5", "promoted": True, "gate_reason": "beats it"},
    }
    assert "| 3 | 100 | 0.7000 | 0.6400 | 0.7500 | 0.8000 |" in performance_table(summary)
    section = drift_section(summary)
    assert "Drift share 0.5000 (retrain above 0.2000): drifted" in section
    assert section.index("| avg_rating | 0.4100 | yes |") < section.index("| student_age |")
    assert decision_text(summary) == (
        "Retrain warranted: live AUC low. Then retrained: version 5 promoted (beats it)."
    )
    assert decision_text({**summary, "retrain_reasons": []}) == "No retrain warranted."


def test_the_score_artifact_lists_every_band_and_the_skipped_reasons() -> None:
    assert levels_in_band_order({"HIGH": 3}) == [
        ("LOW", 0),
        ("MEDIUM", 0),
        ("HIGH", 3),
        ("CRITICAL", 0),
    ]
    summary = {
        "model_version": "2",
        "alert_threshold": 0.31,
        "lookahead_hours": 24.0,
        "sessions_scored": 3,
        "above_threshold": 3,
        "rows_changed": 3,
        "risk_levels": {"HIGH": 3},
        "sessions_skipped": {"unknown tutor": 2},
    }
    text = "\n\n".join(scoring_sections(summary))
    assert "| HIGH | 3 |" in text and "| unknown tutor | 2 |" in text
