"""Reading several sources at once: source-tagged concatenation, or per-source gated cross-attention.

`fusion.mode` chooses how one decoder reads several named contexts (model.py builds both):
- `concat` (default): each source's context is bridged to the decoder width, tagged with a learned
  source embedding and concatenated along S with its mask; every decoder layer's single cross-attention
  reads the whole concatenation (one softmax over all sources' positions).
- `gated`: every decoder layer has one cross-attention per source (own query/key/value projections), and
  adds each one's output scaled by its own learned gate tanh(g) -- the gated cross-attention of Flamingo
  (Alayrac et al. 2022), per source. Gates start at `fusion.gate_init`; 0 (Flamingo's choice) makes the
  fresh model a plain language model that opens each source as training finds it useful.

A sample may lack a source. The mask makes that safe, except where a sample's mask has no real position
at all: a softmax over nothing is NaN (in the explicit softmax that attention maps use, and in SDPA on
some versions and devices; others return zeros). So in `concat`, a sample lacking every source reads one
zero "null" position; in `gated`, a source's cross-attention for a sample lacking that source runs on
placeholder positions and its output is zeroed, so that sample is exactly as if the source did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import KVCache, MultiHeadAttention, padding_mask_or_none
from .context import Context
from .decoder import DecoderState, TransformerDecoder
from .errors import ConfigError
from .layers import Dropout, FeedForward

FUSION_MODES = ("concat", "gated")


@dataclass
class SourcesContext(Context):
    """A concatenation of several sources' contexts; `spans` says which positions are whose.

    spans: ((source name, start, end), ...) in order along S, end exclusive.
    """

    spans: tuple[tuple[str, int, int], ...] = ()

    def index_select(self, index: torch.Tensor) -> "SourcesContext":
        return SourcesContext(self.states.index_select(0, index), self.mask.index_select(0, index), self.spans)


def null_context_for_empty_rows(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give a row with no real position one zero-vector position to attend to (instead of NaN).

    states [B, S, D], mask [B, S] -> the same shapes (S becomes 1 if it was 0). Rows with a real
    position are unchanged; an empty row's position 0 becomes a real position holding zeros, so its
    cross-attention reads only the projections' biases: a fixed, learnable "no input" signal.
    """
    if states.shape[1] == 0:
        states, mask = states.new_zeros(states.shape[0], 1, states.shape[2]), mask.new_zeros(mask.shape[0], 1)
    empty = ~mask.any(1)  # [B]
    if not bool(empty.any()):
        return states, mask
    first = torch.zeros_like(mask)
    first[:, 0] = True
    null = empty[:, None] & first  # [B, S]
    return states.masked_fill(null[..., None], 0.0), mask | null


class GatedCrossAttention(nn.Module):
    """Σ_source tanh(gate_source) · CrossAttention_source(x, that source's positions)."""

    def __init__(self, dim: int, num_heads: int, sources: list[str], *, dropout: float = 0.0, gate_init: float = 0.0):
        super().__init__()
        self.attn = nn.ModuleDict({s: MultiHeadAttention(dim, num_heads, dim_context=dim, dropout=dropout) for s in sources})
        self.gates = nn.Parameter(torch.full((len(sources),), float(gate_init)))
        self.index = {s: i for i, s in enumerate(sources)}

    def project_context(self, states: torch.Tensor, spans) -> tuple[torch.Tensor, torch.Tensor]:
        """Each source's keys/values by its own projection, concatenated along S: ([B,H,S,Dh], [B,H,S,Dh])."""
        keys, values = [], []
        for name, start, end in spans:
            k, v = self.attn[name].project_context(states[:, start:end])
            keys.append(k)
            values.append(v)
        return torch.cat(keys, 2), torch.cat(values, 2)

    def forward(self, x, kv, mask, spans, *, need_weights: bool = False):
        """x [N, T, D]; kv from project_context; mask [B, S] or None; N = B × beams.

        Returns (out [N, T, D], weights [N, H, T, S] or None).
        """
        k, v = kv
        out, weights = torch.zeros_like(x), []
        for name, start, end in spans:
            if end == start:
                continue
            source_mask, present = None, None
            if mask is not None:
                source_mask = mask[:, start:end]  # [B, S_source]
                present = source_mask.any(1)  # [B]
                # A sample lacking this source would attend over nothing (NaN): let it attend to the
                # placeholder positions and zero the result below.
                source_mask = source_mask | ~present[:, None]
            h, w = self.attn[name](x, (k[:, :, start:end], v[:, :, start:end]), mask=source_mask, need_weights=need_weights)
            if present is not None:
                keep = present.repeat_interleave(x.shape[0] // present.shape[0])[:, None, None].to(h.dtype)  # [N, 1, 1]
                h = h * keep
                w = None if w is None else w * keep[..., None]
            out = out + torch.tanh(self.gates[self.index[name]]) * h
            weights.append(w)
        return out, (torch.cat(weights, -1) if need_weights and weights else None)


class GatedDecoderLayer(nn.Module):
    """Causal self-attention → gated per-source cross-attention → feed-forward (pre-norm)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, sources: list[str], dropout: float = 0.1,
                 attn_dropout: float = 0.0, gate_init: float = 0.0):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout)
        self.cross_attn = GatedCrossAttention(dim, num_heads, sources, dropout=attn_dropout, gate_init=gate_init)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x, context, context_mask, spans, cache: KVCache | None = None, need_weights: bool = False):
        # x [N, T, D]; context: states [B, S, D] or their projected (K, V); context_mask [B, S] or None
        x = x + self.drop(self.self_attn(self.norm_self(x), causal=True, cache=cache)[0])
        kv = self.cross_attn.project_context(context, spans) if torch.is_tensor(context) else context
        h, weights = self.cross_attn(self.norm_cross(x), kv, context_mask, spans, need_weights=need_weights)
        x = x + self.drop(h)
        return x + self.drop(self.ffn(self.norm_ffn(x))), weights


@dataclass
class GatedDecoderState(DecoderState):
    spans: tuple[tuple[str, int, int], ...] = ()


class GatedFusionDecoder(TransformerDecoder):
    """The shared decoder with per-source gated cross-attention; same interface as TransformerDecoder."""

    def __init__(self, *, sources: list[str], gate_init: float = 0.0, num_layers: int = 6, num_heads: int = 8,
                 ffn_dim: int = 2048, dropout: float = 0.1, attn_dropout: float = 0.0, **kwargs):
        super().__init__(num_layers=0, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout,
                         attn_dropout=attn_dropout, **kwargs)
        self.sources = list(sources)
        self.layers = nn.ModuleList(
            GatedDecoderLayer(self.d_model, num_heads, ffn_dim, self.sources, dropout, attn_dropout, gate_init)
            for _ in range(num_layers)
        )

    def _spans(self, context: Context) -> tuple[tuple[str, int, int], ...]:
        spans = getattr(context, "spans", ())
        if spans:
            unknown = {name for name, _, _ in spans} - set(self.sources)
            if unknown:
                raise ConfigError(f"the context has sources {sorted(unknown)} that this decoder has no cross-attention for")
            return tuple(spans)
        if len(self.sources) != 1:
            raise ConfigError(f"this gated decoder reads sources {self.sources}; give it a SourcesContext with spans")
        return ((self.sources[0], 0, context.states.shape[1]),)

    def forward(self, tokens: torch.Tensor, context: Context, *, need_weights: bool = False):
        """tokens [N, T] (BOS-prefixed), context [B, S, D] -> (logits [N, T, V], per-layer weights)."""
        spans = self._spans(context)
        x, mask = self._embed(tokens, 0), padding_mask_or_none(context.mask)
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, context.states, mask, spans, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.output(self.norm(x)), all_weights

    def start(self, context: Context, capacity: int = 64, *, rows: int | None = None, fast: bool = True) -> GatedDecoderState:
        """Project every source's K/V once per decode. `rows`/`fast` select TransformerDecoder's fast
        one-token step, which has no gated variant: every step here runs the layers' own forward."""
        spans = self._spans(context)
        cross_kv = [layer.cross_attn.project_context(context.states, spans) for layer in self.layers]
        mask = padding_mask_or_none(context.mask)
        return GatedDecoderState([KVCache(capacity) for _ in self.layers], cross_kv, mask, spans=spans)

    def compile_step(self, **options) -> None:
        raise ConfigError(
            "compile.decode=true compiles the one-token fast step, which gated fusion has no variant of; "
            "set compile.decode=false (compile.train still applies)"
        )

    def step(self, tokens: torch.Tensor, state: GatedDecoderState, *, need_weights: bool = False):
        x = self._embed(tokens, state.position)
        all_weights = []
        for layer, cache, kv in zip(self.layers, state.caches, state.cross_kv):
            x, weights = layer(x, kv, state.context_mask, state.spans, cache=cache, need_weights=need_weights)
            if weights is not None:
                all_weights.append(weights)
        state.position += tokens.shape[1]
        return self.output(self.norm(x)), all_weights
