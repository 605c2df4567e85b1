"""How `mmx-attend` draws attention over an image or a spectrogram: `ContextView`s of the built-in image
and audio encoders, made the way any plugin makes its own (subclass, override the picture)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmxattn.plugin import ContextView, clamp, heatmap, ticks

IMAGE_PANEL_IN = 2.0  # width of one image panel, inches
IMAGE_COLUMNS = 6


@dataclass
class ImageView(ContextView):
    """The image as the model saw it (after resize/pad), and how its positions tile it.

    image: numpy [H, W, 3] uint8. After `prefix` extra positions (a ViT's class/register tokens), the next
    rows × cols positions (`grid`) tile the image row by row. Without a grid the plain heatmap is drawn.
    """

    kind: str = "image"
    image: Any = None
    grid: tuple[int, int] | None = None
    prefix: int = 0

    def position_labels(self, n_positions: int) -> list[str]:
        if self.grid is None:
            return super().position_labels(n_positions)
        cols = self.grid[1]
        return [f"cls{i}" if i < self.prefix else f"r{(i - self.prefix) // cols}c{(i - self.prefix) % cols}"
                for i in range(n_positions)]

    def figure_size(self, n_targets: int, n_positions: int) -> tuple[float, float]:
        if self.image is None or self.grid is None:
            return super().figure_size(n_targets, n_positions)
        panels = n_targets + 1  # the image itself, then one per target token
        cols = min(panels, IMAGE_COLUMNS)
        height, width = self.image.shape[:2]
        panel_h = IMAGE_PANEL_IN * height / width + 0.35  # + the title line
        return cols * IMAGE_PANEL_IN, math.ceil(panels / cols) * panel_h + 0.3

    def draw(self, fig, weights: np.ndarray, target_labels: list[str], title: str) -> None:
        """The image, then one panel per generated token with its weights over the grid laid over the image."""
        if self.image is None or self.grid is None:
            return super().draw(fig, weights, target_labels, title)
        height, width = self.image.shape[:2]
        rows, cols = self.grid
        grid = torch.from_numpy(weights[:, self.prefix : self.prefix + rows * cols]).reshape(-1, 1, rows, cols)
        heat = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
        panels = len(target_labels) + 1
        ncols = min(panels, IMAGE_COLUMNS)
        axes = fig.subplots(math.ceil(panels / ncols), ncols, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        axes[0].imshow(self.image)
        axes[0].set_title(f"input ({rows}×{cols} grid)", fontsize=8)
        for t, (ax, label) in enumerate(zip(axes[1:], target_labels)):
            ax.imshow(self.image)
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


def patch_grid(n_positions: int, height: int, width: int, max_prefix: int = 8) -> tuple[tuple[int, int], int] | None:
    """((rows, cols), prefix) such that prefix + rows·cols = n_positions and rows/cols ≈ height/width.

    Image encoders flatten a feature map (CNN) or patch grid (ViT, maybe after class/register tokens) row by
    row; this recovers the grid from the token count and the image's aspect ratio. None when no grid within
    25% of the aspect ratio fits.
    """
    aspect = height / width
    for prefix in range(0, min(max_prefix, n_positions - 1) + 1):
        n = n_positions - prefix
        best = min(((r, n // r) for r in range(1, n + 1) if n % r == 0), key=lambda g: abs(g[0] / g[1] - aspect))
        if abs(best[0] / best[1] - aspect) <= 0.25 * aspect:
            return best, prefix
    return None


@dataclass
class SpectrogramView(ContextView):
    """Features [frames, bins] (e.g. log-mel) that the context positions cover evenly in time,
    `seconds_per_frame` apart: the heatmap drawn above the spectrogram on one time axis."""

    kind: str = "spectrogram"
    spectrogram: Any = None
    seconds_per_frame: float = 0.01

    def _empty(self) -> bool:
        return self.spectrogram is None or not len(self.spectrogram)

    def position_labels(self, n_positions: int) -> list[str]:
        if self._empty() or not n_positions:
            return super().position_labels(n_positions)
        per_position = len(self.spectrogram) / n_positions  # frames
        return [f"{i * per_position * self.seconds_per_frame:.2f}s" for i in range(n_positions)]

    def figure_size(self, n_targets: int, n_positions: int) -> tuple[float, float]:
        if self._empty():
            return super().figure_size(n_targets, n_positions)
        return clamp(3.0 + len(self.spectrogram) / 40, 6.0, 24.0), 1.2 + clamp(0.28 * n_targets, 1.0, 20.0) + 2.0

    def draw(self, fig, weights: np.ndarray, target_labels: list[str], title: str) -> None:
        if self._empty():
            return super().draw(fig, weights, target_labels, title)
        spec = np.asarray(self.spectrogram)  # [frames, bins]
        duration = len(spec) * self.seconds_per_frame
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[clamp(0.28 * len(target_labels), 1.0, 20.0), 2.0])
        # Position i covers an equal slice of the spectrogram's frames (the encoder subsamples time evenly).
        heatmap(top, weights, extent=(0, duration, len(target_labels) - 0.5, -0.5))
        ticks(top, "y", target_labels)
        top.set_ylabel("generated")
        top.set_title(title, fontsize=9)
        bottom.imshow(spec.T, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, spec.shape[1]))
        bottom.set_ylabel("mel bin")
        bottom.set_xlabel("time (s)")
