"""The context sequence an encoder hands to the decoder, and the bridge that fits it to the decoder width."""

from __future__ import annotations

from dataclasses import dataclass

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
