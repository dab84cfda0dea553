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


def bootstrap_auc_interval(
    y: np.ndarray, p: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The percentile interval (INTERVAL) of the AUC over bootstrap resamples; resamples
    with one class only are skipped. (nan, nan) when fewer than 2 classes."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            aucs.append(roc_auc_score(y[idx], p[idx]))
    tail = (1 - INTERVAL) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


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
