"""The drift reference: the champion's own training data, rebuilt point-in-time from the
cut-off on its version tags, narrowed to its last weeks so the comparison with this
window is like with like (a tutor's record three months ago is not this week's)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import numpy as np
import pandas as pd
import psycopg

from fsp.errors import NotEnoughData
from monitoring.champion import Champion
from monitoring.drift import sample_reference
from training.dataset import build_training_set

log = logging.getLogger(__name__)

MIN_REFERENCE_ROWS: Final = 200
"""Fewest reference rows a drift test is run on; a thinner slice is widened."""
MAX_WIDENING: Final = 8
"""The slice is widened (doubled) up to this many times the window, then all rows are used."""


@dataclass(frozen=True)
class Reference:
    """The drift reference: the champion's most recent training rows, over as many
    days as the monitoring window (widened when that holds too few rows)."""

    features: pd.DataFrame
    days: int | None  # None: the whole training set


def comparable_slice(
    starts: pd.Series, cutoff: datetime, days: int
) -> tuple[np.ndarray, int | None]:
    """Rows that started in the last `days` before the cut-off, doubling the span
    until there are MIN_REFERENCE_ROWS of them (None: all rows)."""
    span = days
    while span <= MAX_WIDENING * days:
        mask = (starts >= pd.Timestamp(cutoff - timedelta(days=span))).to_numpy()
        if mask.sum() >= MIN_REFERENCE_ROWS:
            return mask, span
        span *= 2
    log.info(
        "fewer than %d training rows within %d days of the cut-off: the whole training set"
        " is the reference",
        MIN_REFERENCE_ROWS,
        MAX_WIDENING * days,
    )
    return np.ones(len(starts), dtype=bool), None


def reference_features(conn: psycopg.Connection, champion: Champion, days: int) -> Reference:
    """The champion's training data as of its cut-off, its last `days` (widened when thin),
    sampled to a fixed size; `NotEnoughData` when the champion has no cut-off tag."""
    if champion.cutoff is None:
        raise NotEnoughData(f"champion version {champion.version} has no cutoff tag")
    ts = build_training_set(conn, champion.cutoff)
    mask, span = comparable_slice(ts.starts, champion.cutoff, days)
    return Reference(sample_reference(ts.X[mask]), span)
