"""The shared text decoder: it reads a context sequence through cross-attention and writes tokens.

Two ways in: `forward` for teacher-forced training on whole sequences, and `start` + `step` for
incremental decoding, where the self-attention keys/values are cached per step and the cross-attention
keys/values are projected once per source (`start`) and shared by every beam of that source.

Plain PyTorch throughout. Faster decoding on CPU (weights stored for few-row products, a flattened
step) is an inference backend applied to a frozen model: `mmxattn.inference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

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
    memories: list[Any]  # per layer, what its cross-attention's `project` made of the context (B sources)
    position: int = 0

    def select_rows(self, index: torch.Tensor) -> None:
        """Reorder/keep hypothesis rows (beam parents, finished rows dropped)."""
        for cache in self.caches:
            cache.index_select(index)

    def select_sources(self, index: torch.Tensor) -> None:
        """Keep only these sources' context (a source whose hypotheses are all finished is dropped)."""
        self.memories = [memory.index_select(index) for memory in self.memories]


class TransformerDecoder(nn.Module):
    """Token embedding + sinusoidal positions → DecoderLayer × L → LayerNorm → output projection.

    cross_attention: builds each layer's cross-attention module (called once per layer); None = one
    `MultiHeadAttention` over the whole context.
    """

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
        cross_attention: Callable[[], nn.Module] | None = None,
    ):
        super().__init__()
        self.d_model, self.vocab_size = d_model, vocab_size
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.embed_scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, ffn_dim, dropout=dropout, attn_dropout=attn_dropout,
                         cross_attention=cross_attention() if cross_attention else None)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        if tie_embeddings:
            self.output.weight = self.embed.weight
        else:
            nn.init.normal_(self.output.weight, std=d_model**-0.5)
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)

    def embed_tokens(self, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        """tokens [N, T] at positions offset.. -> [N, T, D] (scaled embeddings + positions, dropout)."""
        end = offset + tokens.shape[1]
        if end > self.positions.shape[0]:  # grow the table on demand rather than capping the length
            self.positions = sinusoidal_positions(2 * end, self.d_model, device=tokens.device)
        return self.drop(self.embed(tokens) * self.embed_scale + self.positions[offset:end])

    def forward(
        self, tokens: torch.Tensor, context: Context, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens [N, T] (BOS-prefixed), context [B, S, D] with N = B × G.

        Returns (logits [N, T, V], per-layer cross-attention weights [N, H, T, S] if need_weights).
        """
        x = self.embed_tokens(tokens, 0)
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, layer.cross_attn.project(context), need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.output(self.norm(x)), all_weights

    def start(self, context: Context, capacity: int = 64, **_: Any) -> DecoderState:
        """Project the context into each layer's cross-attention memory, once for the whole decode.

        capacity: decode steps the self-attention caches hold before they grow. Other keywords (hints an
        inference backend may use, such as `rows`) are accepted and ignored.
        """
        memories = [layer.cross_attn.project(context) for layer in self.layers]
        return DecoderState([KVCache(capacity) for _ in self.layers], memories)

    def step(
        self, tokens: torch.Tensor, state: DecoderState, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the next tokens [N, T] (usually T = 1) given the state; returns logits [N, T, V]."""
        x = self.embed_tokens(tokens, state.position)
        all_weights = []
        for layer, cache, memory in zip(self.layers, state.caches, state.memories):
            x, weights = layer(x, memory, cache=cache, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        state.position += tokens.shape[1]
        return self.output(self.norm(x)), all_weights
