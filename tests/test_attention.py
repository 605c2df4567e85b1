import math

import pytest
import torch

from mmxattn.attention import KVCache, MultiHeadAttention
from mmxattn.context import Context


def cross(attn, x, ctx, mask=None, **kwargs):
    """Cross-attention of queries x over a context the way a decoder layer runs it: project, then attend."""
    mask = torch.ones(ctx.shape[:2], dtype=torch.bool) if mask is None else mask
    return attn(x, attn.project(Context(ctx, mask)), **kwargs)


def reference_attention(attn: MultiHeadAttention, x, context=None, mask=None, causal=False):
    """Straightforward multi-head attention written out with explicit loops over heads."""
    h, dh = attn.num_heads, attn.head_dim
    if attn.is_cross:
        q = x @ attn.q_proj.weight.T + attn.q_proj.bias
        kv = context @ attn.kv_proj.weight.T + attn.kv_proj.bias
        k, v = kv[..., : attn.dim], kv[..., attn.dim :]
    else:
        qkv = x @ attn.qkv_proj.weight.T + attn.qkv_proj.bias
        q, k, v = qkv[..., : attn.dim], qkv[..., attn.dim : 2 * attn.dim], qkv[..., 2 * attn.dim :]
    outs, weights = [], []
    for head in range(h):
        sl = slice(head * dh, (head + 1) * dh)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dh)  # [B, T, S]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        if causal:
            t = scores.shape[-1]
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        w = scores.softmax(-1)
        weights.append(w)
        outs.append(w @ v[..., sl])
    out = torch.cat(outs, -1) @ attn.out_proj.weight.T + attn.out_proj.bias
    return out, torch.stack(weights, 1)


@pytest.fixture
def seeded():
    torch.manual_seed(0)


def test_cross_attention_matches_reference_with_other_length_and_width(seeded):
    attn = MultiHeadAttention(16, 4, dim_context=24).eval()
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 9, 24)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3, [True] * 2 + [False] * 7])
    expected, expected_w = reference_attention(attn, x, ctx, mask)
    out, _ = cross(attn, x, ctx, mask)
    out_w, weights = cross(attn, x, ctx, mask, need_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_w, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, expected_w, atol=1e-6, rtol=1e-5)


def test_padded_context_positions_get_exactly_zero_weight(seeded):
    attn = MultiHeadAttention(16, 2, dim_context=16).eval()
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    _, weights = cross(attn, torch.randn(2, 3, 16), torch.randn(2, 7, 16), mask, need_weights=True)
    assert torch.all(weights[0, :, :, 4:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 3))
    # and the padded values cannot leak into the output
    ctx = torch.randn(2, 7, 16)
    changed = ctx.clone()
    changed[0, 4:] = 1e3
    torch.testing.assert_close(cross(attn, torch.ones(2, 3, 16), ctx, mask)[0][0], cross(attn, torch.ones(2, 3, 16), changed, mask)[0][0])


def test_causal_self_attention_matches_reference(seeded):
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    expected, _ = reference_attention(attn, x, causal=True)
    torch.testing.assert_close(attn(x, causal=True)[0], expected, atol=1e-5, rtol=1e-5)


def test_cached_steps_equal_full_causal_pass(seeded):
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    full, _ = attn(x, causal=True)
    cache = KVCache(capacity=2)  # forces the buffer to grow twice
    steps = [attn(x[:, t : t + 1], causal=True, cache=cache)[0] for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_beams_share_context_kv_without_copies(seeded):
    """Queries of G beams per source against one copy of K/V equal the copied-per-beam computation."""
    attn = MultiHeadAttention(16, 4, dim_context=8).eval()
    ctx, mask = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    x = torch.randn(2 * 3, 1, 16)  # 3 beams per source
    shared, w_shared = cross(attn, x, ctx, mask, need_weights=True)
    copied, w_copied = cross(attn, x, ctx.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), need_weights=True)
    torch.testing.assert_close(shared, copied, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_shared, w_copied, atol=1e-6, rtol=1e-5)


def test_a_row_without_any_real_position_reads_nothing(seeded):
    """A sample lacking every source: zero output (not NaN), and zero weights in the explicit softmax."""
    attn = MultiHeadAttention(16, 2, dim_context=16).eval()
    mask = torch.tensor([[True] * 3 + [False] * 2, [False] * 5])
    for need_weights in (False, True):
        out, weights = cross(attn, torch.randn(2, 3, 16), torch.randn(2, 5, 16), mask, need_weights=need_weights)
        assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros(3, 16))
        assert weights is None or torch.equal(weights[1], torch.zeros(2, 3, 5))
    out, _ = cross(attn, torch.randn(2, 3, 16), torch.randn(2, 0, 16), torch.zeros(2, 0, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 3, 16))  # no position at all in the batch


def test_kv_cache_reorder_and_drop_rows_keep_the_right_history():
    """Beam reordering and dropping rows go through the spare buffer; growth keeps what was written."""
    cache = KVCache(capacity=2)
    history = torch.randn(5, 3, 7, 4)  # [N, H, t, Dh]
    rows = torch.arange(5)
    for t in range(7):
        index = torch.randperm(len(rows))[: len(rows) - (t == 3)]  # a permutation; one row dropped at t=3
        cache.index_select(index)
        rows = rows[index]
        k, v = cache.append(history[rows, :, t : t + 1], -history[rows, :, t : t + 1])
        torch.testing.assert_close(k, history[rows, :, : t + 1], rtol=0, atol=0)
        torch.testing.assert_close(v, -history[rows, :, : t + 1], rtol=0, atol=0)
