"""The context sequence an encoder hands to the decoder, and the bridge that fits it to the decoder width."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


@dataclass
class Context:
    """What the decoder's cross-attention reads.

    states: [B, S, D] encoder output
    mask:   [B, S] bool, True where a position is real (False = padding)
    """

    states: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.states.dim() != 3 or self.mask.shape != self.states.shape[:2]:
            raise ValueError(
                f"Context expects states [B, S, D] and mask [B, S]; got states {tuple(self.states.shape)} "
                f"and mask {tuple(self.mask.shape)}"
            )

    def index_select(self, index: torch.Tensor) -> "Context":
        return Context(self.states.index_select(0, index), self.mask.index_select(0, index))


class Bridge(nn.Module):
    """Linear map from an encoder's width to the decoder's (identity when they already match)."""

    def __init__(self, encoder_dim: int, decoder_dim: int, *, source: str = "encoder"):
        super().__init__()
        if not isinstance(encoder_dim, int) or encoder_dim <= 0:
            raise ConfigError(
                f"encoder '{source}' reports output_dim={encoder_dim!r}; an encoder must expose a positive "
                "integer `output_dim` (the width D of its context states [B, S, D])."
            )
        self.encoder_dim, self.decoder_dim = encoder_dim, decoder_dim
        self.proj = nn.Identity() if encoder_dim == decoder_dim else nn.Linear(encoder_dim, decoder_dim)
        self.source = source

    def forward(self, context: Context) -> Context:
        width = context.states.shape[-1]
        if width != self.encoder_dim:
            raise ConfigError(
                f"encoder '{self.source}' produced states of width {width}, but declared output_dim="
                f"{self.encoder_dim}; the bridge to the decoder (d_model={self.decoder_dim}) was built for "
                f"{self.encoder_dim}. Fix the encoder's `output_dim` to match what its forward returns."
            )
        return Context(self.proj(context.states), context.mask)


@dataclass
class ContextView:
    """What one sample's context positions show, for people looking at attention (`mmx-attend`).

    An encoder's processor may return one from `Processor.describe_context(raw, n_positions)`; without
    it the positions are just numbered. `kind` picks the picture:
    - "tokens":      `labels`, one per position (a text encoder: its source pieces);
    - "image":       `image` [H, W, 3] uint8 as the model saw it (after resize/crop); the last
                     rows × cols positions tile it row by row as `grid`, after `prefix` extra positions
                     (a ViT's class/register tokens);
    - "spectrogram": `spectrogram` [frames, bins] (log-mel features) that the positions cover evenly in
                     time, `seconds_per_frame` apart;
    - "positions":   nothing to show but position numbers.
    """

    kind: str = "positions"
    labels: list[str] | None = None
    image: Any = None  # numpy [H, W, 3] uint8
    grid: tuple[int, int] | None = None
    prefix: int = 0
    spectrogram: Any = None  # numpy [frames, bins]
    seconds_per_frame: float = 0.01
    extra: dict = field(default_factory=dict)

    def position_labels(self, n_positions: int) -> list[str]:
        """A short name per context position, for tables and axis ticks."""
        if self.kind == "tokens" and self.labels is not None and len(self.labels) == n_positions:
            return list(self.labels)
        if self.kind == "image" and self.grid is not None:
            cols = self.grid[1]
            return [f"cls{i}" if i < self.prefix else f"r{(i - self.prefix) // cols}c{(i - self.prefix) % cols}"
                    for i in range(n_positions)]
        if self.kind == "spectrogram" and self.spectrogram is not None and n_positions:
            per_position = len(self.spectrogram) / n_positions  # frames
            return [f"{i * per_position * self.seconds_per_frame:.2f}s" for i in range(n_positions)]
        return [f"#{i}" for i in range(n_positions)]


def patch_grid(n_positions: int, height: int, width: int, max_prefix: int = 8) -> tuple[tuple[int, int], int] | None:
    """((rows, cols), prefix) such that prefix + rows·cols = n_positions and rows/cols ≈ height/width.

    Image encoders flatten a feature map (CNN) or patch grid (ViT, maybe after class/register tokens)
    row by row; this recovers the grid from the token count and the image's aspect ratio. None when no
    grid within 25% of the aspect ratio fits.
    """
    aspect = height / width
    for prefix in range(0, min(max_prefix, n_positions - 1) + 1):
        n = n_positions - prefix
        best = min(((r, n // r) for r in range(1, n + 1) if n % r == 0), key=lambda g: abs(g[0] / g[1] - aspect))
        if abs(best[0] / best[1] - aspect) <= 0.25 * aspect:
            return best, prefix
    return None
