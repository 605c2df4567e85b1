"""The shared text decoder: it reads one context sequence through cross-attention and writes tokens.

Two ways in: `forward` for teacher-forced training on whole sequences, and `start` + `step` for
incremental decoding, where the self-attention keys/values are cached per step and the cross-attention
keys/values are projected once per source and shared by every beam of that source.

A one-token step without autograd (what `generate` runs) takes a fast path, `_fast_step`: the same
computation as the layers' forward, written out flat so that a step costs few Python calls, with the
weights in the layout `fast_linear.InferenceLinear` found fastest for a few rows. tests/test_fast_paths.py
checks that it decodes exactly the tokens of a full forward pass per step. `compile_step` (config
`compile.decode`) runs it under torch.compile instead; on CPU that is slower, so it is off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, padding_mask_or_none
from .context import Context
from .fast_linear import InferenceLinear, Linear, drop_packed_weights, layout_for, weights_key
from .layers import DecoderLayer, Dropout, sinusoidal_positions


class DecodePlan:
    """The decoder's weights as the fast step uses them: each layer's linears as `InferenceLinear`s.

    Built by `TransformerDecoder.start` and kept on the decoder until a weight may have changed (any
    optimizer step, an in-place write such as `load_state_dict`, `.to()`) or a decode needs another layout,
    so repeated decodes pay for it once.
    """

    def __init__(self, decoder: "TransformerDecoder", layout: str):
        self.layout = layout

        def copy(linear: Linear) -> InferenceLinear:
            return InferenceLinear(linear, layout)

        self.layers = [
            (
                copy(layer.self_attn.qkv_proj), copy(layer.self_attn.out_proj),
                copy(layer.cross_attn.q_proj), copy(layer.cross_attn.out_proj),
                copy(layer.ffn[0]), copy(layer.ffn[3]),
            )
            for layer in decoder.layers
        ]
        self.output = copy(decoder.output)
        self.key = weights_key(decoder.parameters())


@dataclass
class DecoderState:
    """Everything incremental decoding carries from one step to the next.

    Rows (N) are hypotheses; sources (B) are contexts. N = B × beams.
    """

    caches: list[KVCache]  # per layer, self-attention K/V of rows [N, H, t, Dh]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, context K/V [B, H, S, Dh]
    context_mask: torch.Tensor | None  # [B, S] or None when nothing is padded
    position: int = 0
    plan: DecodePlan | None = None  # weights for the fast step; None = always the modules' own forward

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
        self.drop = Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, ffn_dim, dropout, attn_dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.output = Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        if tie_embeddings:
            self.output.weight = self.embed.weight
        else:
            nn.init.normal_(self.output.weight, std=d_model**-0.5)
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)
        self._compiled_step = None  # see compile_step

    def _embed(self, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        # tokens [N, T] -> [N, T, D]
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
        x, mask = self._embed(tokens, 0), padding_mask_or_none(context.mask)
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, context.states, mask, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.output(self.norm(x)), all_weights

    def start(self, context: Context, capacity: int = 64, *, rows: int | None = None, fast: bool = True) -> DecoderState:
        """Project the context into each layer's cross-attention K/V, once for the whole decode.

        rows: hypotheses decoded per step (sources × beams; default: one per source); picks the weight
        layout of the fast step. fast=False keeps every step on the modules' own forward.
        """
        # contiguous K/V: SDPA reads them once per step per layer, ~1.6× faster than the strided views
        cross_kv = [
            tuple(t.contiguous() for t in layer.cross_attn.project_context(context.states)) for layer in self.layers
        ]
        layout = layout_for(rows or context.states.shape[0], compiled=self._compiled_step is not None)
        plan = self._plan(layout) if fast else None
        mask = padding_mask_or_none(context.mask)
        return DecoderState([KVCache(capacity) for _ in self.layers], cross_kv, mask, plan=plan)

    def compile_step(self, **options) -> None:
        """Run the fast decode step under `torch.compile` (options go to it); it must not change any token.

        Shapes are dynamic (the live rows and the cache length change from step to step), so it compiles
        once, on the first decode. The weights stay plain there (inductor cannot lower oneDNN's packed
        ones), which on CPU costs more than compiling wins: benchmarks/compile_speed.py measures both.
        """
        self._compiled_step = torch.compile(self._fast_step, dynamic=True, **options)

    def drop_decode_plan(self) -> None:
        """Forget the decode-time weight copies; the next `start` rebuilds them from the current weights.

        Needed only after writing weights behind autograd's back (`param.data.copy_(...)`): optimizer
        steps and in-place writes to the parameters themselves are noticed without it. For a whole
        model (the encoders' layers pack their weights in evaluation too) use
        `mmxattn.fast_linear.drop_packed_weights(model)`.
        """
        self._cached_plan = None
        drop_packed_weights(self)  # the plan's packed weights are its Linears' own copies

    def train(self, mode: bool = True) -> "TransformerDecoder":
        if mode:  # back to training: the weights will change, and the plan's copies would only hold memory
            self.drop_decode_plan()
        return super().train(mode)

    def __getstate__(self) -> dict:
        # copy.deepcopy and pickling cannot read packed (opaque) weights; a copy makes its own plan
        return {k: v for k, v in super().__getstate__().items() if k != "_cached_plan"}

    def _plan(self, layout: str) -> DecodePlan:
        plan = getattr(self, "_cached_plan", None)
        if plan is None or plan.layout != layout or plan.key != weights_key(self.parameters()):
            with torch.no_grad():
                plan = DecodePlan(self, layout)
            self._cached_plan = plan
        return plan

    def step(
        self, tokens: torch.Tensor, state: DecoderState, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the next tokens [N, T] (usually T = 1) given the state; returns logits [N, T, V]."""
        if (
            state.plan is not None and tokens.shape[1] == 1 and not need_weights
            and not self.training and not torch.is_grad_enabled()
        ):
            return (self._compiled_step or self._fast_step)(tokens, state), []
        x = self._embed(tokens, state.position)
        all_weights = []
        for layer, cache, kv in zip(self.layers, state.caches, state.cross_kv):
            x, weights = layer(x, kv, state.context_mask, cache=cache, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        state.position += tokens.shape[1]
        return self.output(self.norm(x)), all_weights

    def _fast_step(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """`step` for one token per row in eval mode: DecoderLayer.forward written out (pre-norm, no dropout)."""
        n, d = tokens.shape[0], self.d_model
        x = self._embed(tokens, state.position).view(n, d)  # [N, D]
        b = state.cross_kv[0][0].shape[0]
        groups = n // b  # beams per source; they share the source's K/V
        mask = None if state.context_mask is None else state.context_mask[:, None, None, :]  # [B,1,1,S]
        for layer, linears, cache, (k_ctx, v_ctx) in zip(self.layers, state.plan.layers, state.caches, state.cross_kv):
            qkv_proj, self_out, q_proj, cross_out, ffn_in, ffn_out = linears
            heads, head_dim = layer.self_attn.num_heads, layer.self_attn.head_dim
            # causal self-attention over the cache; the one new query may see every cached key
            qkv = qkv_proj(_norm(layer.norm_self, x)).view(n, 3, heads, 1, head_dim)
            k, v = cache.append(qkv[:, 1], qkv[:, 2])  # [N, H, t, Dh]
            h = F.scaled_dot_product_attention(qkv[:, 0], k, v)  # [N, H, 1, Dh]
            x = x + self_out(h.view(n, d))
            # cross-attention: the G beams of a source are G queries against its one copy of K/V
            q = q_proj(_norm(layer.norm_cross, x)).view(b, groups, heads, head_dim).transpose(1, 2)  # [B,H,G,Dh]
            h = F.scaled_dot_product_attention(q, k_ctx, v_ctx, attn_mask=mask)
            x = x + cross_out(h.transpose(1, 2).reshape(n, d))
            x = x + ffn_out(ffn_in.gelu(_norm(layer.norm_ffn, x), layer.ffn[1].approximate))
        state.position += 1
        return state.plan.output(_norm(self.norm, x)).view(n, 1, -1)


def _norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
