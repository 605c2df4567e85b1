"""Multi-head attention for both self-attention and cross-attention.

Cross-attention is ordinary attention whose keys/values come from another sequence (the context), of
another length and possibly another width. Its keys/values are projected once per source (`project`,
giving a `Memory`) and reused at every decode step. Everything runs on `scaled_dot_product_attention`
unless the caller asks for the attention weights, which SDPA cannot return.

Shapes: N = rows of queries (batch × beams), B = context rows (sources), H = heads, T = query length,
S = key length, Dh = head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context
from .errors import ConfigError


class KVCache:
    """Self-attention keys/values of the positions decoded so far, in preallocated buffers.

    Layout [N, capacity, H, Dh]: one row's keys for all heads are contiguous, so appending a step and
    reordering rows (beam search) move large contiguous blocks; `keys()` hands attention the
    [N, H, t, Dh] view it needs without a copy. Reordering writes into a second buffer kept for the
    purpose (double buffering) instead of allocating a fresh one per step: on CPU a fresh multi-megabyte
    buffer costs page faults that took longer than the copy itself. Only the filled part is copied.
    """

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self.length = 0
        self.rows = 0
        self._k: torch.Tensor | None = None  # [rows_allocated, capacity, H, Dh]
        self._v: torch.Tensor | None = None
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None  # the reorder target, same shape

    @property
    def k(self) -> torch.Tensor | None:
        """Keys so far, [N, H, length, Dh] (a view)."""
        return None if self._k is None else self._k[: self.rows, : self.length].transpose(1, 2)

    @property
    def v(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[: self.rows, : self.length].transpose(1, 2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add keys/values k, v [N, H, t, Dh] (any strides); returns all of them so far, [N, H, length, Dh]."""
        n, h, t, dh = k.shape
        end = self.length + t
        if self._k is None or end > self._k.shape[1] or n != self.rows:
            self._grow(n, h, dh, end, k)
        self._k[:n, self.length : end] = k.transpose(1, 2)
        self._v[:n, self.length : end] = v.transpose(1, 2)
        self.length = end
        return self.k, self.v

    def _grow(self, n: int, h: int, dh: int, end: int, like: torch.Tensor) -> None:
        if self._k is not None and self.length and n != self.rows:
            raise ValueError(f"KVCache holds {self.rows} rows but was given {n}; reorder rows with index_select")
        old = self._k.shape[1] if self._k is not None else 0
        capacity = max(self.capacity, end, 2 * old)
        new_k, new_v = like.new_empty(n, capacity, h, dh), like.new_empty(n, capacity, h, dh)
        if self.length:
            new_k[:, : self.length] = self._k[:n, : self.length]
            new_v[:, : self.length] = self._v[:n, : self.length]
        self._k, self._v, self._spare, self.rows = new_k, new_v, None, n

    def index_select(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam reordering, or dropping finished rows); len(index) ≤ current rows."""
        if self._k is None:
            return
        n = index.shape[0]
        if self._spare is None:
            self._spare = (torch.empty_like(self._k), torch.empty_like(self._v))
        spare_k, spare_v = self._spare
        torch.index_select(self._k[: self.rows, : self.length], 0, index, out=spare_k[:n, : self.length])
        torch.index_select(self._v[: self.rows, : self.length], 0, index, out=spare_v[:n, : self.length])
        self._spare = (self._k, self._v)
        self._k, self._v, self.rows = spare_k, spare_v, n


def padding_mask_or_none(mask: torch.Tensor) -> torch.Tensor | None:
    """The key-padding mask [B, S] (True = real), or None when nothing is padded.

    Without a mask SDPA can use its fastest kernel. Under torch.compile the mask is always kept: looking
    at its values would split the graph, and the compiled kernel gains nothing from leaving it out.
    """
    if torch.compiler.is_compiling():
        return mask
    return None if bool(mask.all()) else mask


@dataclass
class Memory:
    """A context as one cross-attention reads it: keys/values projected once per source, and its mask.

    keys, values: [B, H, S, Dh]; mask: [B, S] True = real (None: nothing padded); empty: [B] rows with no
    real position at all (None: there are none). A softmax over no position is NaN, so such a row (a
    sample lacking every source it could read) attends to its placeholder positions and its output is
    zeroed: it is exactly the sample without cross-attention.
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None
    empty: torch.Tensor | None = None

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> "Memory":
        if keys.shape[2] == 0:  # no position at all in this batch: one placeholder, read by nobody
            keys, values = keys.new_zeros(*keys.shape[:2], 1, keys.shape[3]), values.new_zeros(*values.shape[:2], 1, values.shape[3])
            mask = mask.new_zeros(mask.shape[0], 1)
        # contiguous: SDPA reads them once per decode step per layer, faster than through strided views
        keys, values, mask = keys.contiguous(), values.contiguous(), padding_mask_or_none(mask)
        empty = None if mask is None else ~mask.any(1)
        if empty is not None and bool(empty.any()):
            mask = mask | empty[:, None]
        else:
            empty = None
        return cls(keys, values, mask, empty)

    def index_select(self, index: torch.Tensor) -> "Memory":
        """Keep sources `index` (a source whose hypotheses all finished is dropped from a decode)."""
        pick = (lambda t: None if t is None else t.index_select(0, index))
        return Memory(pick(self.keys), pick(self.values), pick(self.mask), pick(self.empty))


def attention_weights(q, k, v, attn_mask=None, causal=False):
    """Reference attention that also returns the weights: softmax(q kᵀ/√d + mask) v.

    q [N,H,T,Dh], k/v [N,H,S,Dh], attn_mask bool broadcastable to [N,H,T,S] (True = attend).
    Returns (out [N,H,T,Dh], weights [N,H,T,S]).
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [N,H,T,S]
    if causal:
        t, s = scores.shape[-2:]
        # Queries are the last t of s positions (s > t while decoding with a cache).
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(s - t + 1)
        scores = scores.masked_fill(future, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention; `dim_context` given ⇒ cross-attention over a context of that width.

    As a decoder layer's cross-attention it reads a `Memory` (`project(context)`, once per source); any
    module with the same `project` / `forward(x, memory, need_weights=...)` can take its place (e.g.
    `mmxattn.fusion.GatedCrossAttention`).
    """

    def __init__(self, dim: int, num_heads: int, *, dim_context: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"d_model={dim} must be divisible by the number of heads ({num_heads}).")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.is_cross = dim_context is not None
        self.dropout = dropout
        if self.is_cross:
            self.q_proj = nn.Linear(dim, dim)
            self.kv_proj = nn.Linear(dim_context, 2 * dim)
        else:
            self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        # [N, T, parts*D] -> parts × [N, H, T, Dh]
        n, t, _ = x.shape
        x = x.view(n, t, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return x.unbind(0)

    def project(self, context: Context) -> Memory:
        """The context's keys/values [B, S, Dc] -> Memory([B,H,S,Dh] ×2, mask); once per source and decode."""
        assert self.is_cross, "project is only defined for cross-attention"
        keys, values = self._heads(self.kv_proj(context.states), 2)
        return Memory.of(keys, values, context.mask)

    def forward(
        self,
        x: torch.Tensor,
        memory: Memory | None = None,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        x:      [N, T, D] queries (and, for self-attention, keys/values)
        memory: cross-attention only: the context from `project`. N may be a multiple G·B (G beams per
                source): the beams then share one copy of the source's keys/values.
        mask:   self-attention only: [N, T] bool, True = a real key (padding of an encoder's input)
        causal: self-attention only: position t sees positions ≤ t
        cache:  self-attention only: append this step's keys/values and attend over all of them
        Returns (out [N, T, D], weights [N, H, T, S] if need_weights else None).
        """
        assert (memory is not None) == self.is_cross, "memory must be given exactly for cross-attention"
        n, t, _ = x.shape
        if self.is_cross:
            (q,) = self._heads(self.q_proj(x), 1)
            k, v, mask = memory.keys, memory.values, memory.mask
        else:
            q, k, v = self._heads(self.qkv_proj(x), 3)
            if cache is not None:
                k, v = cache.append(k, v)

        # Beams of one source share its K/V: fold the G beams into the query axis, [B, H, G*T, Dh].
        # Exact, because cross-attention queries never see each other.
        groups = n // k.shape[0]
        if groups > 1:
            q = q.reshape(k.shape[0], groups, self.num_heads, t, self.head_dim)
            q = q.transpose(1, 2).reshape(k.shape[0], self.num_heads, groups * t, self.head_dim)

        attn_mask = None if mask is None else mask[:, None, None, :]  # [B,1,1,S]
        # With a cache, a single new query may see every key: no causal mask needed at all.
        causal = causal and q.shape[2] > 1
        weights = None
        if need_weights:
            out, weights = attention_weights(q, k, v, attn_mask, causal)
        elif causal and q.shape[2] != k.shape[2]:
            out, _ = attention_weights(q, k, v, attn_mask, causal)  # multi-token step after a prefix
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
            )

        if groups > 1:
            out = out.reshape(k.shape[0], self.num_heads, groups, t, self.head_dim).transpose(1, 2)
            if weights is not None:
                weights = weights.reshape(k.shape[0], self.num_heads, groups, t, -1).transpose(1, 2)
                weights = weights.reshape(n, self.num_heads, t, -1)
        out = self.out_proj(out.reshape(n, self.num_heads, t, self.head_dim).transpose(1, 2).reshape(n, t, self.dim))
        if self.is_cross and memory.empty is not None:  # rows without any real position read nothing
            keep = (~memory.empty).repeat_interleave(groups)[:, None, None]  # [N, 1, 1]
            out = out * keep.to(out.dtype)
            weights = None if weights is None else weights * keep[..., None].to(weights.dtype)
        return out, weights
