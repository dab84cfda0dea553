"""The reconciliation flow (daily): every prediction whose rating has arrived by
`now` gets actual_rating, actual_poor_session (< 3 stars) and prediction_correct.
Idempotent: a rerun for the same `now` changes nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import markdown_table, publish, section
from flows.common import parse_moment
from flows.retrying import RETRYING
from fsp.db import connection
from fsp.outcomes import reconcile
from fsp.settings import Settings, get_settings

ARTIFACT_KEY: Final = "fsp-reconcile"
FIGURES: Final = (
    ("rows_changed", "predictions given their outcome in this run"),
    ("reconciled", "predictions carrying their outcome"),
    ("awaiting_rating", "predictions awaiting a rating"),
    ("poor_sessions", "poor sessions (< 3 stars) among them"),
    ("prediction_accuracy", "share of predictions that were right"),
)
"""The reconciliation's figures, in the order the artifact shows them."""


@task(cache_policy=NO_CACHE, **RETRYING)
def reconcile_ratings(settings: Settings, now: datetime) -> dict[str, Any]:
    """One idempotent UPDATE ... FROM platform.feedback (safe to retry)."""
    with connection(settings) as conn:
        return reconcile(conn, now)


@flow(name="fsp-reconcile", log_prints=True)
def reconcile_flow(now: str | datetime | None = None) -> dict[str, Any]:
    """Join predictions with the ratings submitted by `now`."""
    settings = get_settings()
    summary = reconcile_ratings(settings, parse_moment(now))
    get_run_logger().info(
        "reconciled as of %s: %d prediction(s) given their outcome now, %d in all,"
        " %d awaiting a rating",
        summary["now"],
        summary["rows_changed"],
        summary["reconciled"],
        summary["awaiting_rating"],
    )
    publish_reconciliation(summary)
    return summary


def reconciliation_table(summary: dict[str, Any]) -> str:
    return markdown_table(("figure", "value"), [(label, summary[k]) for k, label in FIGURES])


def publish_reconciliation(summary: dict[str, Any]) -> None:
    publish(
        ARTIFACT_KEY,
        f"Reconciliation {summary['now']}",
        [section("Predictions reconciled", reconciliation_table(summary))],
        "predictions reconciled with the ratings that arrived",
    )
