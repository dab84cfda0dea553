"""Is the champion still as good as it was? A live AUC judged against the champion's
own holdout figure, with the uncertainty of a small window taken into account.

A fixed floor (say 0.60) lets a champion that scored 0.86 lose a quarter of its
skill unnoticed. Here the live AUC over the window's rated sessions is
bootstrapped (resampling sessions with replacement, fixed seed) into a 95 %
interval, and a retrain is warranted when even the interval's upper end lies
below the champion's holdout AUC minus a tolerance: the drop is then both real
(not sampling noise) and large enough to matter."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

BOOTSTRAP_SEED = 0
INTERVAL = 0.95
RESAMPLE_CELLS = 2_000_000
"""At most this many resampled sessions are ranked at once (bounds the memory)."""


def bootstrap_auc_interval(
    y: np.ndarray, p: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The percentile interval (INTERVAL) of the AUC over bootstrap resamples; resamples
    with one class only are skipped. (nan, nan) when fewer than 2 classes."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = len(y)
    step = max(1, RESAMPLE_CELLS // n)  # resamples ranked at once
    aucs = []
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)  # drawn in order: the same draws as one by one
        aucs.append(resampled_aucs(y, p, np.stack([rng.integers(0, n, n) for _ in range(rows)])))
    tail = (1 - INTERVAL) / 2 * 100
    low, high = np.percentile(np.concatenate(aucs), [tail, 100 - tail])
    return float(low), float(high)


def resampled_aucs(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The AUC of each resample (a row of `idx`) that holds both classes, all at once:
    the Mann-Whitney statistic over average ranks, which counts a tie half as
    roc_auc_score does (the same figure, without its per-call checks: 200 calls of it
    took seconds)."""
    rows, n = idx.shape
    codes = np.unique(p, return_inverse=True)[1].ravel()  # scores as dense integer ranks
    keyed = (codes[idx] + (codes.max() + 1) * np.arange(rows)[:, None]).ravel()
    ordered = np.sort(keyed)  # each row's keys sort apart from every other row's
    below = np.searchsorted(ordered, keyed, "left")
    upto = np.searchsorted(ordered, keyed, "right")
    ranks = (below + upto + 1) / 2 - n * np.repeat(np.arange(rows), n)
    positive = y[idx]
    n1 = positive.sum(axis=1)
    rank_sum = (ranks.reshape(rows, n) * positive).sum(axis=1)
    both = (n1 > 0) & (n1 < n)
    n1, rank_sum = n1[both], rank_sum[both]
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * (n - n1))


@dataclass(frozen=True)
class LiveCheck:
    """The figures behind the decision, and the decision."""

    live_auc: float | None
    interval: tuple[float | None, float | None]
    champion_holdout_auc: float | None
    tolerance: float
    sample_size: int
    floor: float
    below_champion: bool
    below_floor: bool

    @property
    def retrain(self) -> bool:
        return self.below_champion or self.below_floor

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval": list(self.interval), "retrain": self.retrain}


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def live_check(
    y: np.ndarray,
    p: np.ndarray,
    champion_holdout_auc: float | None,
    tolerance: float,
    floor: float,
    resamples: int,
) -> LiveCheck:
    """Judge the live AUC: below the champion's own holdout AUC minus `tolerance` (the
    whole bootstrap interval), or below the fixed `floor`."""
    y = np.asarray(y, dtype=int)
    two = len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, p)) if two else None
    low, high = bootstrap_auc_interval(y, p, resamples) if two else (None, None)
    reference = _finite(champion_holdout_auc)
    below_champion = bool(
        reference is not None and high is not None and high < reference - tolerance
    )
    return LiveCheck(
        live_auc=auc,
        interval=(_finite(low), _finite(high)),
        champion_holdout_auc=reference,
        tolerance=tolerance,
        sample_size=len(y),
        floor=floor,
        below_champion=below_champion,
        below_floor=bool(auc is not None and auc < floor),
    )
