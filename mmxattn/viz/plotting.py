"""Small matplotlib helpers that context views share when they draw attention (`ContextView.draw`).

Figures are `matplotlib.figure.Figure` objects built directly (Agg canvas), never through pyplot, so no
global backend is switched and nothing is kept open.
"""

from __future__ import annotations

import math

import numpy as np

CMAP = "viridis"


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def ticks(ax, axis: str, labels: list[str], max_ticks: int = 80) -> None:
    """Label an axis with at most `max_ticks` of `labels` (evenly spaced)."""
    step = max(1, math.ceil(len(labels) / max_ticks))
    index = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(index, [labels[i] for i in index], rotation=90, fontsize=8)
    else:
        ax.set_yticks(index, [labels[i] for i in index], fontsize=8)


def heatmap(ax, weights: np.ndarray, **kwargs):
    """weights [T, S] as an image, 0 to its maximum; returns matplotlib's image (for a colorbar)."""
    return ax.imshow(weights, cmap=CMAP, vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto",
                     interpolation="nearest", **kwargs)


def colorbar(fig, image, ax) -> None:
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
