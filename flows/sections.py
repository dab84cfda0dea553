"""What a flow run shows in the Prefect UI, as markdown built from the summary the flow
returned (so the figures shown are the figures returned). Pure text: importing it
starts nothing, and the tests of what a run shows need no Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.artifacts import MISSING, bullet_list, cell, markdown_table, section
from fsp.constants import RISK_BANDS
from monitoring.reports import DRIFT

# --- the scoring run ---------------------------------------------------------------------


def levels_in_band_order(levels: dict[str, int]) -> list[tuple[str, int]]:
    """Every risk band, lowest first, with its count (0 when none scored in it)."""
    return [(band, levels.get(band, 0)) for band, _ in RISK_BANDS]


def scoring_sections(summary: dict[str, Any]) -> list[str]:
    """The artifact's sections: what was scored, by risk level, and what was skipped."""
    lead = (
        f"Model version {summary['model_version']}, alert threshold"
        f" {summary['alert_threshold']:.4f}, sessions starting in the next"
        f" {summary['lookahead_hours']:g} h: {summary['sessions_scored']} scored,"
        f" {summary['above_threshold']} at or above the threshold,"
        f" {summary['rows_changed']} stored row(s) changed."
    )
    levels = markdown_table(
        ("risk level", "sessions"), levels_in_band_order(summary["risk_levels"])
    )
    skipped = summary["sessions_skipped"]
    skipped_body = (
        markdown_table(("reason", "sessions"), sorted(skipped.items()))
        if skipped
        else "None: every upcoming first session could be scored."
    )
    return [
        lead,
        section("Sessions scored by risk level", levels),
        section("Sessions skipped", skipped_body),
    ]


# --- the monitoring run -------------------------------------------------------------------


def performance_table(summary: dict[str, Any]) -> str:
    """Each version's live AUC beside the champion's holdout AUC and its 95 % interval."""
    rows = []
    for row in summary["performance"]:
        check = row["live_check"] or {}
        low, high = check.get("interval") or (None, None)
        rows.append(
            (
                row["model_version"],
                row["sample_size"],
                row["auc_roc"],
                low,
                high,
                check.get("champion_holdout_auc"),
                row["precision"],
                row["recall"],
            )
        )
    headers = (
        "version",
        "rated sessions",
        "live AUC",
        "95% low",
        "95% high",
        "holdout AUC",
        "precision",
        "recall",
    )
    return markdown_table(headers, rows) if rows else "No rated session in the window."


def drift_section(summary: dict[str, Any]) -> str:
    """The drift share against its threshold and every compared feature's score."""
    drift = summary["reports"].get(DRIFT)
    if drift is None:
        return "No drift report (no reference or no scored session; see the run's log)."
    verdict = "drifted" if drift["drifted"] else "not drifted"
    lead = (
        f"Drift share {cell(drift['drift_share'])} (retrain above"
        f" {cell(drift['drift_share_threshold'])}): {verdict};"
        f" {drift['drifted_columns_count']} of {len(drift['compared_columns'])} features drifted."
    )
    drifted = set(drift["drifted_columns"])
    scores = sorted(drift["feature_scores"].items(), key=lambda kv: -(kv[1] or 0.0))
    table = markdown_table(
        ("feature", "drift score", "drifted"), [(n, s, n in drifted) for n, s in scores]
    )
    return f"{lead}\n\n{table}"


def decision_text(summary: dict[str, Any]) -> str:
    """The decision in one paragraph: no retrain, requested, or what the retrain did."""
    reasons = summary["retrain_reasons"]
    if not reasons:
        return "No retrain warranted."
    done = summary["retrain"]
    if done is None:
        outcome = "retrain requested (event fsp.model.retrain-requested)"
    elif "skipped" in done:
        outcome = f"retrain skipped: {done['skipped']}"
    else:
        verdict = "promoted" if done["promoted"] else "not promoted"
        outcome = f"retrained: version {done['version']} {verdict} ({done['gate_reason']})"
    return f"Retrain warranted: {'; '.join(reasons)}. Then {outcome}."


def reports_list(summary: dict[str, Any]) -> str:
    """Where the reports are (links open the HTML pages from this machine)."""
    items = [
        f"{kind}: [{Path(r['html']).name}]({Path(r['html']).as_uri()}) `{r['html']}`"
        for kind, r in summary["reports"].items()
    ]
    items.append(f"MLflow run: `{summary['mlflow_run_id'] or MISSING}`")
    return bullet_list(items, "No report.")


def monitor_sections(summary: dict[str, Any]) -> list[str]:
    """The artifact's sections: window, performance, drift, decision, reports."""
    lead = (
        f"Champion version {summary['champion_version']}, window of {summary['window_days']}"
        f" days to {summary['now']}: {summary['labelled_sessions']} rated sessions,"
        f" {summary['scored_sessions']} scored sessions."
    )
    return [
        lead,
        section("Live performance", performance_table(summary)),
        section("Drift", drift_section(summary)),
        section("Decision", decision_text(summary)),
        section("Reports", reports_list(summary)),
    ]
