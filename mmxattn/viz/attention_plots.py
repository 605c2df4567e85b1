"""Pictures of cross-attention maps (matplotlib, no display needed), one PNG per source.

The picture of a source comes from its `ContextView` (`mmxattn.context`): the plain view draws a heatmap
with generated tokens down and context positions across; an encoder's own view draws its modality (the
built-in image and audio encoders: the image with the weights laid over it, the spectrogram under the
heatmap). Sizes are fixed by the view's `figure_size`, not by a tight bbox, so a picture's pixel size is
known in advance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..context import ContextView
from .attention_maps import AttentionMap

DPI = 100


def figure_size(view: ContextView, n_targets: int, n_positions: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of the picture for T = n_targets tokens over S = n_positions positions."""
    width, height = view.figure_size(n_targets, n_positions)
    return round(width * dpi), round(height * dpi)


def _figure(amap: AttentionMap, source: str, layer: int | str, head: int | str, dpi: int) -> Figure:
    span = amap.span(source)
    weights = amap.select(layer, head, source).numpy()  # [T, S]
    width, height = figure_size(span.view, weights.shape[0], weights.shape[1], dpi)
    # A Figure on its own Agg canvas, never pyplot: no global backend is switched and nothing stays open.
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    which = f"layer {layer}, head {head}"
    title = f"{source}: cross-attention ({which})" if len(amap.sources) > 1 else f"cross-attention ({which})"
    span.view.draw(fig, weights, amap.target_labels, title)
    return fig


def plot_source(amap: AttentionMap, source: str, path: str | Path, *, layer: int | str = "mean",
                head: int | str = "mean", dpi: int = DPI) -> Path:
    """Write the PNG of one source's weights in `amap` (one layer/head, or means) to `path`."""
    fig = _figure(amap, source, layer, head, dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def render_source(amap: AttentionMap, source: str, *, layer: int | str = "mean", head: int | str = "mean",
                  dpi: int = DPI) -> np.ndarray:
    """The same picture as `plot_source`, as RGB pixels [H, W, 3] uint8 (for experiment loggers)."""
    fig = _figure(amap, source, layer, head, dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
