"""Transformer building blocks shared by the decoder and the encoder plugins (pre-norm throughout)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention, padding_mask_or_none
from .fast_linear import Linear


def sinusoidal_positions(length: int, dim: int, offset: int = 0, device=None) -> torch.Tensor:
    """[length, dim] sine/cosine position table (Vaswani et al.), starting at position `offset`."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask on CPU comes from 15-bit random integers instead of `bernoulli_`.

    Each unit is kept with probability 1 - p' and scaled by 1 / (1 - p'), where p' is p rounded to a
    multiple of 1/32768 (p = 0.1 becomes 0.100006): the expectation stays exact. Why: torch's CPU random
    generator is serial, and dropout's draws took 10% of a Transformer-base training step. `bernoulli_`
    draws one 32-bit number per unit and `rand_like` as well; `random_()` on int32 gives 31 random bits
    per draw, two 15-bit numbers, so half the draws: the mask of 2 M units takes 4.6 ms against 7.8 ms
    for `rand_like` + compare. Elsewhere (GPUs) the native fused kernel is used.
    """

    LEVELS = 1 << 15

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int32).random_()  # values in [0, 2^31): 31 random bits
        draws = bits.view(torch.int16)[:n].view(x.shape).bitwise_and_(self.LEVELS - 1)  # 15 bits each
        dropped = min(round(self.p * self.LEVELS), self.LEVELS - 1)
        keep = draws >= dropped
        return x * keep.to(x.dtype).mul_(self.LEVELS / (self.LEVELS - dropped))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__(Linear(dim, hidden_dim), nn.GELU(), Dropout(dropout), Linear(hidden_dim, dim))


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
