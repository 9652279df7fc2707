"""Plots shared by every learner: learning curves with mean ± std bands across seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(
    path: str | Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Plots `{label: (x[T], y[seeds, T] or y[T])}` with mean ± std bands; writes a PNG."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (x, y) in curves.items():
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        mean, std = y.mean(axis=0), y.std(axis=0)
        ax.plot(x, mean, label=label)
        if y.shape[0] > 1:
            ax.fill_between(x, mean - std, mean + std, alpha=0.25)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
