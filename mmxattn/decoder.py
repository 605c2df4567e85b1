"""The shared text decoder: it reads one context sequence through cross-attention and writes tokens.

Two ways in: `forward` for teacher-forced training on whole sequences, and `start` + `step` for
incremental decoding, where the self-attention keys/values are cached per step and the cross-attention
keys/values are projected once per source and shared by every beam of that source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .attention import KVCache
from .context import Context
from .layers import DecoderLayer, sinusoidal_positions


@dataclass
class DecoderState:
    """Everything incremental decoding carries from one step to the next.

    Rows (N) are hypotheses; sources (B) are contexts. N = B × beams.
    """

    caches: list[KVCache]  # per layer, self-attention K/V of rows [N, H, t, Dh]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, context K/V [B, H, S, Dh]
    context_mask: torch.Tensor | None  # [B, S] or None when nothing is padded
    position: int = 0

    def select_rows(self, index: torch.Tensor) -> None:
        """Reorder/keep hypothesis rows (beam parents, finished rows dropped)."""
        for cache in self.caches:
            cache.index_select(index)

    def select_sources(self, index: torch.Tensor) -> None:
        """Keep only these sources' context K/V (a source whose hypotheses are all finished is dropped)."""
        self.cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_kv]
        if self.context_mask is not None:
            self.context_mask = self.context_mask.index_select(0, index)


class TransformerDecoder(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int = 512,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        tie_embeddings: bool = True,
        pad_id: int = 0,
    ):
        super().__init__()
        self.d_model, self.vocab_size = d_model, vocab_size
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.embed_scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, ffn_dim, dropout, attn_dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        if tie_embeddings:
            self.output.weight = self.embed.weight
        else:
            nn.init.normal_(self.output.weight, std=d_model**-0.5)
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)

    def _embed(self, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        # tokens [N, T] -> [N, T, D]
        end = offset + tokens.shape[1]
        if end > self.positions.shape[0]:  # grow the table on demand rather than capping the length
            self.positions = sinusoidal_positions(2 * end, self.d_model, device=tokens.device)
        return self.drop(self.embed(tokens) * self.embed_scale + self.positions[offset:end])

    @staticmethod
    def _mask(mask: torch.Tensor) -> torch.Tensor | None:
        # No mask at all when nothing is padded: SDPA can then use its fastest kernel.
        return None if bool(mask.all()) else mask

    def forward(
        self, tokens: torch.Tensor, context: Context, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens [N, T] (BOS-prefixed), context [B, S, D] with N = B × G.

        Returns (logits [N, T, V], per-layer cross-attention weights [N, H, T, S] if need_weights).
        """
        x, mask = self._embed(tokens, 0), self._mask(context.mask)
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, context.states, mask, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.output(self.norm(x)), all_weights

    def start(self, context: Context, capacity: int = 64) -> DecoderState:
        """Project the context into each layer's cross-attention K/V, once for the whole decode."""
        cross_kv = [layer.cross_attn.project_context(context.states) for layer in self.layers]
        return DecoderState([KVCache(capacity) for _ in self.layers], cross_kv, self._mask(context.mask))

    def step(
        self, tokens: torch.Tensor, state: DecoderState, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the next tokens [N, T] (usually T = 1) given the state; returns logits [N, T, V]."""
        x = self._embed(tokens, state.position)
        all_weights = []
        for layer, cache, kv in zip(self.layers, state.caches, state.cross_kv):
            x, weights = layer(x, kv, state.context_mask, cache=cache, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        state.position += tokens.shape[1]
        return self.output(self.norm(x)), all_weights
