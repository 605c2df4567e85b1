import math

import pytest
import torch

from mmxattn.attention import KVCache, MultiHeadAttention


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
    out, _ = attn(x, ctx, mask=mask)
    out_w, weights = attn(x, ctx, mask=mask, need_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_w, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, expected_w, atol=1e-6, rtol=1e-5)


def test_padded_context_positions_get_exactly_zero_weight(seeded):
    attn = MultiHeadAttention(16, 2, dim_context=16).eval()
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    _, weights = attn(torch.randn(2, 3, 16), torch.randn(2, 7, 16), mask=mask, need_weights=True)
    assert torch.all(weights[0, :, :, 4:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 3))
    # and the padded values cannot leak into the output
    ctx = torch.randn(2, 7, 16)
    changed = ctx.clone()
    changed[0, 4:] = 1e3
    torch.testing.assert_close(attn(torch.ones(2, 3, 16), ctx, mask=mask)[0][0], attn(torch.ones(2, 3, 16), changed, mask=mask)[0][0])


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
    shared, w_shared = attn(x, attn.project_context(ctx), mask=mask, need_weights=True)
    copied, w_copied = attn(x, ctx.repeat_interleave(3, 0), mask=mask.repeat_interleave(3, 0), need_weights=True)
    torch.testing.assert_close(shared, copied, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_shared, w_copied, atol=1e-6, rtol=1e-5)


def test_dropout_keeps_one_minus_p_of_units_scaled_and_is_identity_in_eval():
    from mmxattn.layers import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005  # 200,000 draws: ±0.005 is > 5 standard deviations
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # the gradient passes exactly through the kept units
    assert torch.equal(drop.eval()(x), x)


def test_dropout_keeps_the_expectation_where_p_is_not_a_multiple_of_its_resolution():
    from mmxattn.layers import Dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = Dropout(0.1)(x)  # p is rounded to 3277 / 32768; the scale follows the rounded p
    assert abs(y.mean().item() - 1.0) < 0.002  # 10^6 draws: the standard deviation of the mean is 0.0003
    assert abs((y == 0).float().mean().item() - 0.1) < 0.0015
    assert Dropout(0.1)(x.to(torch.bfloat16)).dtype == torch.bfloat16
