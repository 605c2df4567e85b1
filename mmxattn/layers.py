"""Transformer building blocks shared by the decoder and the encoder plugins (pre-norm throughout)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import KVCache, Memory, MultiHeadAttention, padding_mask_or_none


def sinusoidal_positions(length: int, dim: int, offset: int = 0, device=None) -> torch.Tensor:
    """[length, dim] sine/cosine position table (Vaswani et al.), starting at position `offset`."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention → feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attn_dropout: float = 0.0):
        super().__init__()
        self.norm_attn, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x [B, S, D]; mask [B, S] True = real
        x = x + self.drop(self.attn(self.norm_attn(x), mask=mask)[0])
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers with a final norm; for encoder plugins that need one."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn_mask = padding_mask_or_none(mask)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Causal self-attention → cross-attention (Q = text, K/V = context) → feed-forward.

    The cross-attention is a module passed in (as torchtune passes its gate): a `MultiHeadAttention` with
    `dim_context` (one softmax over the whole context), or anything with the same `project(context) ->
    memory` and `forward(x, memory, need_weights=...)`, such as per-source gated cross-attention
    (`mmxattn.fusion.GatedCrossAttention`). The layer itself does not know which.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, cross_attention: nn.Module | None = None,
                 dropout: float = 0.1, attn_dropout: float = 0.0):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout)
        self.cross_attn = cross_attention or MultiHeadAttention(dim, num_heads, dim_context=dim, dropout=attn_dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: Memory, cache: KVCache | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x [N, T, D]; memory: this layer's `cross_attn.project(context)`, the context of B = N / beams sources
        x = x + self.drop(self.self_attn(self.norm_self(x), causal=True, cache=cache)[0])
        h, weights = self.cross_attn(self.norm_cross(x), memory, need_weights=need_weights)
        x = x + self.drop(h)
        return x + self.drop(self.ffn(self.norm_ffn(x))), weights
