"""The context sequence an encoder hands to the decoder, and the bridge that fits it to the decoder width."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    An encoder's processor may return one from `Processor.describe_context(raw, n_positions)`; without it
    the positions are just numbered. This class draws the plain picture: a heatmap with the generated
    tokens down and the context positions across, labelled with `labels` (a text encoder gives its source
    pieces). A plugin shows its own modality by subclassing it and overriding `position_labels`,
    `figure_size` and `draw`, as the built-in image and audio encoders do (encoders/views.py); mmxattn
    itself knows no modality.

    kind: a short name for what the positions are ("tokens", "positions", or a subclass's own), for tables
    and JSON; the picture comes from the class.
    """

    kind: str = "positions"
    labels: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def position_labels(self, n_positions: int) -> list[str]:
        """A short name per context position, for tables and axis ticks."""
        if self.labels is not None and len(self.labels) == n_positions:
            return list(self.labels)
        return [f"#{i}" for i in range(n_positions)]

    def figure_size(self, n_targets: int, n_positions: int) -> tuple[float, float]:
        """(width, height) in inches of the picture of T = n_targets tokens over S = n_positions positions."""
        from .viz.plotting import clamp

        return clamp(2.2 + 0.3 * n_positions, 4.0, 30.0), clamp(1.6 + 0.3 * n_targets, 3.0, 30.0)

    def draw(self, fig, weights, target_labels: list[str], title: str) -> None:
        """Draw weights [T, S] (numpy; row t = what generated token t read) into the matplotlib Figure `fig`."""
        from .viz.plotting import colorbar, heatmap, ticks

        ax = fig.add_subplot()
        image = heatmap(ax, weights)
        ticks(ax, "x", self.position_labels(weights.shape[1]))
        ticks(ax, "y", target_labels)
        ax.set_xlabel("context")
        ax.set_ylabel("generated")
        ax.set_title(title, fontsize=9)
        colorbar(fig, image, ax)
