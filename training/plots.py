"""Evaluation figures logged with every training run (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(5, 4), dpi=100)


def save_evaluation_plots(
    y: np.ndarray, p: np.ndarray, threshold: float, folder: Path
) -> list[Path]:
    """ROC, precision-recall, calibration and confusion-matrix images; returns their paths."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    folder.mkdir(parents=True, exist_ok=True)
    drawings = {
        "roc_curve.png": lambda ax: RocCurveDisplay.from_predictions(y, p, ax=ax),
        "pr_curve.png": lambda ax: PrecisionRecallDisplay.from_predictions(y, p, ax=ax),
        "calibration.png": lambda ax: CalibrationDisplay.from_predictions(
            y, p, n_bins=10, strategy="quantile", ax=ax
        ),
        "confusion_matrix.png": lambda ax: ConfusionMatrixDisplay.from_predictions(
            y, (p >= threshold).astype(int), display_labels=["ok", "poor"], ax=ax, colorbar=False
        ),
    }
    paths = []
    for name, draw in drawings.items():
        plt, fig, ax = _figure()
        draw(ax)
        ax.set_title(name.removesuffix(".png").replace("_", " "))
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        paths.append(folder / name)
    return paths
