"""Pictures of cross-attention maps (matplotlib, no display needed), one PNG per source.

What the context axis shows comes from the source's `ContextView` (see `mmxattn.context`):
- tokens / positions: a heatmap, target tokens down, context positions across, labelled;
- image: the image as the model saw it, then one panel per target token with its weights over the patch
  grid upsampled to the image and laid over it;
- spectrogram: the heatmap above the log-mel spectrogram, sharing the time axis.

Figures are built on `matplotlib.figure.Figure` directly (Agg canvas), never through pyplot, so no global
backend is switched and nothing is kept open. Sizes are fixed by `figure_size`, not by a tight bbox, so
a picture's pixel size is known in advance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .attention_maps import AttentionMap
from .context import ContextView

DPI = 100
IMAGE_PANEL_IN = 2.0  # width of one image panel, inches
IMAGE_COLUMNS = 6
CMAP = "viridis"


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _layout(view: ContextView) -> str:
    """Which picture a source gets: 'image', 'spectrogram' or 'matrix'."""
    if view.kind == "image" and view.image is not None and view.grid is not None:
        return "image"
    if view.kind == "spectrogram" and view.spectrogram is not None and len(view.spectrogram):
        return "spectrogram"
    return "matrix"


def figure_size(view: ContextView, n_targets: int, n_positions: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of the picture for T = n_targets tokens over S = n_positions positions."""
    layout = _layout(view)
    if layout == "image":
        panels = n_targets + 1  # the image itself, then one per target token
        cols = min(panels, IMAGE_COLUMNS)
        rows = math.ceil(panels / cols)
        height, width = view.image.shape[:2]
        panel_h = IMAGE_PANEL_IN * height / width + 0.35  # + the title line
        inches = (cols * IMAGE_PANEL_IN, rows * panel_h + 0.3)
    elif layout == "spectrogram":
        inches = (_clamp(3.0 + len(view.spectrogram) / 40, 6.0, 24.0), 1.2 + _clamp(0.28 * n_targets, 1.0, 20.0) + 2.0)
    else:
        inches = (_clamp(2.2 + 0.3 * n_positions, 4.0, 30.0), _clamp(1.6 + 0.3 * n_targets, 3.0, 30.0))
    return round(inches[0] * dpi), round(inches[1] * dpi)


def plot_source(amap: AttentionMap, source: str, path: str | Path, *, layer: int | str = "mean",
                head: int | str = "mean", dpi: int = DPI) -> Path:
    """Write the PNG of one source's weights in `amap` (one layer/head, or means) to `path`."""
    span = amap.span(source)
    weights = amap.select(layer, head, source).numpy()  # [T, S]
    width, height = figure_size(span.view, weights.shape[0], weights.shape[1], dpi)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    which = f"layer {layer}, head {head}"
    title = f"{source}: cross-attention ({which})" if len(amap.sources) > 1 else f"cross-attention ({which})"
    layout = _layout(span.view)
    if layout == "image":
        _draw_image(fig, weights, span.view, amap.target_labels, title)
    elif layout == "spectrogram":
        _draw_spectrogram(fig, weights, span.view, amap.target_labels, title)
    else:
        _draw_matrix(fig, weights, span.labels, amap.target_labels, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _ticks(ax, axis: str, labels: list[str], max_ticks: int = 80) -> None:
    step = max(1, math.ceil(len(labels) / max_ticks))
    index = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(index, [labels[i] for i in index], rotation=90, fontsize=8)
    else:
        ax.set_yticks(index, [labels[i] for i in index], fontsize=8)


def _draw_matrix(fig: Figure, weights: np.ndarray, context_labels: list[str], target_labels: list[str], title: str) -> None:
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap=CMAP, vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto",
                      interpolation="nearest")
    _ticks(ax, "x", context_labels)
    _ticks(ax, "y", target_labels)
    ax.set_xlabel("context")
    ax.set_ylabel("generated")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)


def _draw_image(fig: Figure, weights: np.ndarray, view: ContextView, target_labels: list[str], title: str) -> None:
    image = view.image  # [H, W, 3] uint8
    height, width = image.shape[:2]
    rows, cols = view.grid
    grid = torch.from_numpy(weights[:, view.prefix : view.prefix + rows * cols]).reshape(-1, 1, rows, cols)
    heat = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
    panels = len(target_labels) + 1
    ncols = min(panels, IMAGE_COLUMNS)
    nrows = math.ceil(panels / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(image)
    axes[0].set_title(f"input ({rows}×{cols} grid)", fontsize=8)
    for t, (ax, label) in enumerate(zip(axes[1:], target_labels)):
        ax.imshow(image)
        # Each token's own scale: where it looks matters more than how peaked it is; the title says how
        # much of its attention went to the grid at all (the rest: prefix tokens or other sources).
        ax.imshow(heat[t], cmap="jet", alpha=0.5, vmin=0.0, vmax=max(float(heat[t].max()), 1e-6),
                  extent=(0, width, height, 0), interpolation="bilinear")
        for r in range(1, rows):
            ax.axhline(r * height / rows, color="white", linewidth=0.3, alpha=0.6)
        for c in range(1, cols):
            ax.axvline(c * width / cols, color="white", linewidth=0.3, alpha=0.6)
        ax.set_title(f"{label} ({100 * float(grid[t].sum()):.0f}%)", fontsize=8)
    fig.suptitle(title, fontsize=9)


def _draw_spectrogram(fig: Figure, weights: np.ndarray, view: ContextView, target_labels: list[str], title: str) -> None:
    spec = np.asarray(view.spectrogram)  # [frames, bins]
    duration = len(spec) * view.seconds_per_frame
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[_clamp(0.28 * len(target_labels), 1.0, 20.0), 2.0])
    # Position i covers an equal slice of the spectrogram's frames (the encoder subsamples time evenly).
    top.imshow(weights, cmap=CMAP, vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto",
               interpolation="nearest", extent=(0, duration, len(target_labels) - 0.5, -0.5))
    _ticks(top, "y", target_labels)
    top.set_ylabel("generated")
    top.set_title(title, fontsize=9)
    bottom.imshow(spec.T, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, spec.shape[1]))
    bottom.set_ylabel("mel bin")
    bottom.set_xlabel("time (s)")
