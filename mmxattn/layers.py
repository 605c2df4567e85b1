"""Transformer building blocks shared by the decoder and the encoder plugins (pre-norm throughout)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention, padding_mask_or_none


def sinusoidal_positions(length: int, dim: int, offset: int = 0, device=None) -> torch.Tensor:
    """[length, dim] sine/cosine position table (Vaswani et al.), starting at position `offset`."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask on CPU comes from uniform random numbers instead of `bernoulli_`.

    The same distribution: each unit is kept with probability 1 - p and scaled by 1 / (1 - p). On CPU,
    torch's `bernoulli_` costs about twice a uniform draw, and dropout took 10% of a Transformer-base
    training step; this one made the step 9% shorter (2.91 → 2.66 s, batch 32 × 30, 2-core EPYC).
    Elsewhere (GPUs) the native fused kernel is used.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p)))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(), Dropout(dropout), nn.Linear(hidden_dim, dim))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention → feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attn_dropout: float = 0.0):
        super().__init__()
        self.norm_attn, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.drop = Dropout(dropout)

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
    """Causal self-attention → cross-attention (Q = text, K/V = context) → feed-forward."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attn_dropout: float = 0.0):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout)
        self.cross_attn = MultiHeadAttention(dim, num_heads, dim_context=dim, dropout=attn_dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        context_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x [N, T, D]; context [B, S, D] or its projected (K, V); context_mask [B, S] or None
        x = x + self.drop(self.self_attn(self.norm_self(x), causal=True, cache=cache)[0])
        h, weights = self.cross_attn(self.norm_cross(x), context, mask=context_mask, need_weights=need_weights)
        x = x + self.drop(h)
        return x + self.drop(self.ffn(self.norm_ffn(x))), weights
