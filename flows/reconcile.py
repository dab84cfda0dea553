"""The reconciliation flow (daily): every prediction whose rating has arrived by
`now` gets actual_rating, actual_poor_session (< 3 stars) and prediction_correct.
Idempotent: a rerun for the same `now` changes nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import parse_moment
from flows.retrying import RETRYING
from fsp.db import connection
from fsp.outcomes import reconcile
from fsp.settings import Settings, get_settings


@task(cache_policy=NO_CACHE, **RETRYING)
def reconcile_ratings(settings: Settings, now: datetime) -> dict[str, Any]:
    """One idempotent UPDATE ... FROM platform.feedback (safe to retry)."""
    with connection(settings) as conn:
        return reconcile(conn, now)


@flow(name="fsp-reconcile", log_prints=True)
def reconcile_flow(now: str | datetime | None = None) -> dict[str, Any]:
    """Join predictions with the ratings submitted by `now`."""
    settings = get_settings()
    return reconcile_ratings(settings, parse_moment(now))
