"""Reading several sources at once: source-tagged concatenation, or per-source gated cross-attention.

`fusion.mode` chooses how one decoder reads several named contexts (model.py builds both):
- `concat` (default): each source's context is bridged to the decoder width, tagged with a learned
  source embedding and concatenated along S with its mask; every decoder layer's single cross-attention
  reads the whole concatenation (one softmax over all sources' positions).
- `gated`: every decoder layer's cross-attention is a `GatedCrossAttention`: one attention per source (own
  query/key/value projections), each one's output scaled by its own learned gate tanh(g) -- the gated
  cross-attention of Flamingo (Alayrac et al. 2022), per source. Gates start at `fusion.gate_init`; 0
  (Flamingo's choice) makes the fresh model a plain language model that opens each source as training
  finds it useful. It is passed to the one `DecoderLayer` as its cross-attention module.

A sample may lack a source. A softmax over nothing is NaN, so an attention's rows without any real
position read nothing (their output is zero; see `mmxattn.attention.Memory`): in `concat` that is a
sample lacking every source, in `gated` a sample lacking that one source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Memory, MultiHeadAttention
from .context import Context
from .errors import ConfigError

FUSION_MODES = ("concat", "gated")


@dataclass
class SourcesContext(Context):
    """A concatenation of several sources' contexts; `spans` says which positions are whose.

    spans: ((source name, start, end), ...) in order along S, end exclusive.
    """

    spans: tuple[tuple[str, int, int], ...] = ()

    def index_select(self, index: torch.Tensor) -> "SourcesContext":
        return SourcesContext(self.states.index_select(0, index), self.mask.index_select(0, index), self.spans)


@dataclass
class SourcesMemory:
    """Per source, its own attention's Memory over its own positions (in span order)."""

    sources: tuple[tuple[str, Memory], ...]

    def index_select(self, index: torch.Tensor) -> "SourcesMemory":
        return SourcesMemory(tuple((name, memory.index_select(index)) for name, memory in self.sources))


class GatedCrossAttention(nn.Module):
    """Σ_source tanh(gate_source) · CrossAttention_source(x, that source's positions)."""

    def __init__(self, dim: int, num_heads: int, sources: list[str], *, dropout: float = 0.0, gate_init: float = 0.0):
        super().__init__()
        self.attn = nn.ModuleDict({s: MultiHeadAttention(dim, num_heads, dim_context=dim, dropout=dropout) for s in sources})
        self.gates = nn.Parameter(torch.full((len(sources),), float(gate_init)))
        self.index = {s: i for i, s in enumerate(sources)}

    def _spans(self, context: Context) -> tuple[tuple[str, int, int], ...]:
        spans = getattr(context, "spans", ())
        if spans:
            unknown = {name for name, _, _ in spans} - set(self.index)
            if unknown:
                raise ConfigError(f"the context has sources {sorted(unknown)} that this decoder has no cross-attention for")
            return tuple(spans)
        if len(self.index) != 1:
            raise ConfigError(f"this gated decoder reads sources {list(self.index)}; give it a SourcesContext with spans")
        return ((next(iter(self.index)), 0, context.states.shape[1]),)

    def project(self, context: Context) -> SourcesMemory:
        """Each source's keys/values by its own projection; a source with no positions in this batch is left out."""
        return SourcesMemory(tuple(
            (name, self.attn[name].project(Context(context.states[:, start:end], context.mask[:, start:end])))
            for name, start, end in self._spans(context) if end > start
        ))

    def forward(self, x: torch.Tensor, memory: SourcesMemory, *, need_weights: bool = False):
        """x [N, T, D]; N = B × beams. Returns (out [N, T, D], weights [N, H, T, S] or None)."""
        out, weights = torch.zeros_like(x), []
        for name, source_memory in memory.sources:
            h, w = self.attn[name](x, source_memory, need_weights=need_weights)
            out = out + torch.tanh(self.gates[self.index[name]]) * h
            weights.append(w)
        return out, (torch.cat(weights, -1) if need_weights and weights else None)
