"""Benchmark (issue: any platform's data): how close the chosen model comes to the
generator's own truth, on every demo platform and three seeds.

The generator knows each first session's true probability of going badly. For
each (platform, seed): generate a history ending at NOW into a fresh database;
train as `fsp train` does (same dataset, split, candidates and choice, without
MLflow) as of CUTOFF = NOW - FORWARD_DAYS; then take the first sessions that
started after the cut-off and were rated by NOW (they "happened"), featurise
each as of its own start (what scoring before the session sees), and compare:

- champion: the candidate `fsp train` would choose;
- ceiling: the true probabilities (no model can rank better on these labels);
- baseline: the reference logistic regression candidate (standardised features,
  class-weighted, Platt-calibrated, no learned bins: the original baseline).

Prints AUC, Brier score and expected calibration error (10 bins) per row, and
the champion's gap to the ceiling. Goal: gap <= 0.03 everywhere, champion AUC
never below the baseline's. Run: `.venv/bin/python benchmarks/bench_model_vs_truth.py`
(DATABASE_URL's server when set, else the embedded PostgreSQL)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sklearn.metrics import brier_score_loss, roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
FORWARD_DAYS = 28


def _server_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    from fsp.db import _embedded_url

    return _embedded_url(ROOT / ".fsp" / "bench-pg")


def _fresh_database(server: str) -> tuple[str, str]:
    name = f"fsp_truth_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, make_conninfo("", **(conninfo_to_dict(server) | {"dbname": name}))


def _drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = edges == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def _figures(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "auc": float(roc_auc_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "ece": calibration_error(y, p),
    }


def run_one(url: str, platform: str, seed: int, tutors: int, days: int) -> dict:
    """Generate, train as of the cut-off, judge the sessions after it against the truth."""
    from fsp.demo_data import DemoSpec, generate, write
    from fsp.estimators import positive_proba
    from fsp.settings import get_settings
    from training.dataset import build_training_set
    from training.train import blends_of, choose, fit_candidate, split_training_set

    frames = generate(DemoSpec(tutors=tutors, days=days, seed=seed, now=NOW, platform=platform))
    truth = dict(zip(frames["truth"]["session_id"], frames["truth"]["p_poor"], strict=True))
    with psycopg.connect(url) as conn:
        write(conn, frames)
        cutoff = NOW - timedelta(days=FORWARD_DAYS)
        ts = build_training_set(conn, cutoff)
        later = build_training_set(conn, NOW)
    settings = get_settings()
    split = split_training_set(ts, settings)
    from training.model import CANDIDATES

    fitted = [fit_candidate(c, ts, split, settings) for c in CANDIDATES]
    fitted.extend(blends_of(fitted, ts, split))
    best = choose(fitted, settings)
    after = (later.starts >= cutoff).to_numpy()
    X, y = later.X[after], later.y[after]
    p_true = np.array([truth[s] for s in later.session_ids[after]])
    baseline = next(f for f in fitted if f.candidate.name == "logistic_regression")
    return {
        "platform": platform,
        "seed": seed,
        "n": int(after.sum()),
        "chosen": best.candidate.name,
        "feature_set": best.candidate.feature_set,
        "holdout": {f.candidate.name: round(f.holdout_auc, 4) for f in fitted},
        "champion": _figures(y, positive_proba(best.model, X)),
        "ceiling": _figures(y, p_true),
        "baseline": _figures(y, positive_proba(baseline.model, X)),
    }


def _print_row(r: dict) -> None:
    c, t, b = r["champion"], r["ceiling"], r["baseline"]
    print(
        f"| {r['platform']} | {r['seed']} | {r['n']} | {r['chosen']} | {c['auc']:.4f} |"
        f" {t['auc']:.4f} | {b['auc']:.4f} | {t['auc'] - c['auc']:+.4f} |"
        f" {c['brier']:.4f} | {t['brier']:.4f} | {b['brier']:.4f} | {c['ece']:.4f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutors", type=int, default=1000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--platforms", nargs="+", default=["default", "international"])
    args = parser.parse_args()
    os.environ.setdefault("FSP_CV_FOLDS", "3")
    server = _server_url()
    print(
        "| platform | seed | sessions after cut-off | chosen | champion AUC | ceiling AUC |"
        " baseline AUC | gap to ceiling | champion Brier | ceiling Brier | baseline Brier |"
        " champion ECE |"
    )
    print("|" + " --- |" * 12)
    rows = []
    for platform in args.platforms:
        for seed in args.seeds:
            name, url = _fresh_database(server)
            started = time.perf_counter()
            try:
                rows.append(run_one(url, platform, seed, args.tutors, args.days))
            finally:
                _drop_database(server, name)
            _print_row(rows[-1])
            print(
                f"  (feature set {rows[-1]['feature_set']}; holdout AUCs {rows[-1]['holdout']},"
                f" {time.perf_counter() - started:.0f} s)"
            )
    gaps = [r["ceiling"]["auc"] - r["champion"]["auc"] for r in rows]
    below = [r for r in rows if r["champion"]["auc"] < r["baseline"]["auc"] - 1e-12]
    print(f"largest gap to the ceiling: {max(gaps):.4f} (goal <= 0.03)")
    print(f"runs where the champion ranks below the baseline: {len(below)}")


if __name__ == "__main__":
    main()
