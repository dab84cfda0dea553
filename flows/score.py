"""The scoring flow (hourly): every scheduled first session starting in (now, now + H]
is featurised as of `now` with the shared feature code, scored by the champion and
upserted into fsp.first_session_predictions with the model version and top factors.

Re-running for the same `now` changes nothing; re-scoring never touches the alert
or outcome columns, so an alerted session is never alerted again."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import pandas as pd
import psycopg
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish
from flows.common import parse_moment
from flows.retrying import RETRYING
from flows.sections import scoring_sections
from fsp.db import connection
from fsp.errors import InvalidInput
from fsp.features import TutorHistory, load_history
from fsp.model_store import make_client
from fsp.platform_rows import check_sessions
from fsp.predictions import (
    model_input_as_of,
    prediction_rows,
    upcoming_sessions,
    upsert_predictions,
)
from fsp.scoring import ScoringModel, load_scoring_model, score
from fsp.settings import Settings, get_settings

DEFAULT_LOOKAHEAD_HOURS: Final = 24.0
MAX_LOOKAHEAD_HOURS: Final = 24.0 * 31
"""Far enough for any booking horizon; beyond it a typo (hours vs minutes) is likelier."""
ARTIFACT_KEY: Final = "fsp-score"


def validate_lookahead(hours: Any) -> float:
    """The lookahead in hours, or `InvalidInput` naming the parameter."""
    try:
        value = float(hours)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"--lookahead-hours must be a number, got {hours!r}") from exc
    if math.isnan(value) or not 0 < value <= MAX_LOOKAHEAD_HOURS:
        raise InvalidInput(
            f"--lookahead-hours must be > 0 and <= {MAX_LOOKAHEAD_HOURS:g}, got {hours!r}"
        )
    return value


@dataclass(frozen=True)
class Upcoming:
    """The sessions to score, the tutor history as it stood at `now`, and the platform
    rows set aside as unscorable (reason → count; see fsp.platform_rows)."""

    sessions: pd.DataFrame
    history: TutorHistory | None
    skipped: dict[str, int] = field(default_factory=dict)


def read_upcoming(conn: psycopg.Connection, now: datetime, hours: float) -> Upcoming:
    """Upcoming first sessions fit to score; the history is only read when there is
    something to score. A bad row is skipped with a named reason, never fatal."""
    sessions = upcoming_sessions(conn, now, hours)
    history = load_history(conn, now) if not sessions.empty else None
    checked = check_sessions(sessions, history)
    return Upcoming(checked.sessions, history, checked.skipped)


def score_rows(model: ScoringModel, upcoming: Upcoming, now: datetime) -> pd.DataFrame:
    """Featurise as of `now`, score, and shape the rows to store."""
    if upcoming.sessions.empty or upcoming.history is None:
        return pd.DataFrame()
    X = model_input_as_of(upcoming.history, upcoming.sessions, now)
    scored = score(model, X)
    return prediction_rows(upcoming.sessions, X, scored, now, model.threshold)


def score_upcoming(
    conn: psycopg.Connection, model: ScoringModel, now: datetime, hours: float
) -> dict[str, Any]:
    """The whole scoring step without Prefect (benchmarks and tests call it directly)."""
    upcoming = read_upcoming(conn, now, hours)
    rows = score_rows(model, upcoming, now)
    changed = upsert_predictions(conn, rows)
    return summarize(rows, changed, model, now, hours, upcoming.skipped)


def summarize(
    rows: pd.DataFrame,
    changed: int,
    model: ScoringModel,
    now: datetime,
    hours: float,
    skipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What a scoring run did, JSON-able."""
    levels = rows["risk_level"].value_counts().to_dict() if not rows.empty else {}
    return {
        "now": now.isoformat(),
        "lookahead_hours": hours,
        "model_version": model.version,
        "alert_threshold": round(model.threshold, 6),
        "sessions_scored": len(rows),
        "rows_changed": changed,
        "above_threshold": int(rows["risk_prediction"].sum()) if not rows.empty else 0,
        "risk_levels": {k: int(v) for k, v in sorted(levels.items())},
        "sessions_skipped": dict(sorted((skipped or {}).items())),
    }


@task(cache_policy=NO_CACHE, **RETRYING)
def load_champion(settings: Settings) -> ScoringModel:
    """The champion from MLflow (NoChampion with the command that fixes it)."""
    return load_scoring_model(make_client(settings), settings.model_name)


@task(cache_policy=NO_CACHE, **RETRYING)
def load_upcoming(settings: Settings, now: datetime, hours: float) -> Upcoming:
    """Read the sessions to score and the history as of `now`."""
    with connection(settings) as conn:
        return read_upcoming(conn, now, hours)


@task(cache_policy=NO_CACHE)
def featurise_and_score(model: ScoringModel, upcoming: Upcoming, now: datetime) -> pd.DataFrame:
    """Pure computation: the same feature code as training, then the champion."""
    return score_rows(model, upcoming, now)


@task(cache_policy=NO_CACHE, **RETRYING)
def store_predictions(settings: Settings, rows: pd.DataFrame) -> int:
    """Idempotent bulk upsert (COPY + ON CONFLICT); safe to retry after a lost connection."""
    with connection(settings) as conn:
        return upsert_predictions(conn, rows)


@flow(name="fsp-score", log_prints=True)
def score_flow(
    now: str | datetime | None = None, lookahead_hours: float = DEFAULT_LOOKAHEAD_HOURS
) -> dict[str, Any]:
    """Score scheduled first sessions starting in (now, now + lookahead_hours]."""
    settings = get_settings()
    moment = parse_moment(now)
    hours = validate_lookahead(lookahead_hours)
    model = load_champion(settings)
    upcoming = load_upcoming(settings, moment, hours)
    rows = featurise_and_score(model, upcoming, moment)
    changed = store_predictions(settings, rows)
    summary = summarize(rows, changed, model, moment, hours, upcoming.skipped)
    log_summary(summary)
    publish_scoring(summary)
    return summary


def log_summary(summary: dict[str, Any]) -> None:
    """What the run scored, stored and set aside, in the run's log."""
    logger = get_run_logger()
    logger.info(
        "scored %d session(s) starting in the next %g h with version %s: %d at or above the"
        " alert threshold %.4f, %d row(s) changed",
        summary["sessions_scored"],
        summary["lookahead_hours"],
        summary["model_version"],
        summary["above_threshold"],
        summary["alert_threshold"],
        summary["rows_changed"],
    )
    for reason, count in summary["sessions_skipped"].items():
        logger.warning("skipped %d session(s) from the platform: %s", count, reason)


def publish_scoring(summary: dict[str, Any]) -> None:
    publish(
        ARTIFACT_KEY,
        f"Scoring {summary['now']}",
        scoring_sections(summary),
        "sessions scored by risk level, and the sessions skipped with their reasons",
    )
