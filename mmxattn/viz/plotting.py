"""Small matplotlib helpers that context views share when they draw attention (`ContextView.draw`): mmxattn's
own views and plugins' (`mmxattn.plugin` exports them), so that every picture of attention looks alike.

Figures are `matplotlib.figure.Figure` objects built directly (Agg canvas), never through pyplot, so no
global backend is switched and nothing is kept open.
"""

from __future__ import annotations

import math

import numpy as np

CMAP = "viridis"


def clamp(value: float, low: float, high: float) -> float:
    """`value` held within [low, high]: for figure sizes in inches that grow with the tokens and positions
    drawn, within bounds."""
    return max(low, min(high, value))


def ticks(ax, axis: str, labels: list[str], max_ticks: int = 80) -> None:
    """Label the "x" or "y" axis of `ax` with `labels`, one per row or column of a heatmap; when there are
    more than `max_ticks`, every n-th one (evenly spaced) so that they stay readable. Small font; x labels
    run vertically."""
    step = max(1, math.ceil(len(labels) / max_ticks))
    index = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(index, [labels[i] for i in index], rotation=90, fontsize=8)
    else:
        ax.set_yticks(index, [labels[i] for i in index], fontsize=8)


def heatmap(ax, weights: np.ndarray, **kwargs):
    """Draw attention weights [T generated tokens, S positions] into `ax` as a heatmap: one row per token,
    one cell per position, the colour scale from 0 to the largest weight; kwargs go to `ax.imshow` (e.g.
    `extent` to place the positions on a time axis). Returns matplotlib's image, for `colorbar`."""
    return ax.imshow(weights, cmap=CMAP, vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto",
                     interpolation="nearest", **kwargs)


def colorbar(fig, image, ax, **kwargs) -> None:
    """A slim colour scale for `image` (from `heatmap` or `ax.imshow`) beside `ax`; kwargs go to
    `fig.colorbar` (e.g. `label`)."""
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, **kwargs)
