"""The CPU inference backend: weights stored the way products of few rows read them fastest, and a
decode step with few Python calls.

A decode step multiplies 1 to a few hundred rows (the live hypotheses) by every weight matrix, so it is
bound by reading the weights, and how they are stored decides the speed:

- Several rows: oneDNN's prepacked weight format (what torch.compile uses after freezing) beats
  `F.linear`. oneDNN picks the blocked format from a row-count hint; a hint of 128 served every row
  count tried, so one packed copy serves every batch size. A oneDNN call costs more fixed time than
  `F.linear`, so small weights (tiny test models) stay with `F.linear`.
- One row (greedy decoding of one source) is a matrix-vector product, and which kernel streams the
  weights fastest depends on the CPU: on some, a batched product over the weight viewed as blocks of
  rows, `bmm(W.view(k, out/k, in), x)` (MKL's batched kernel; the view costs no memory), beats
  `F.linear`; on others `F.linear` or the packed copy wins. `apply_cpu` times the three on the model's
  largest weight once and uses the fastest for every single-row product (`SINGLE_ROW_KERNELS`).

The packed copies are made once, from a frozen model (`mmxattn.inference.prepare`), and cost one more
copy of every large weight. Measured speeds: benchmarks/README.md. Results equal the plain modules up
to float rounding; tests/inference/ checks that decoding gives the same tokens.

The packing uses oneDNN's private torch ops (`torch.ops.mkldnn`); where they are missing (another CPU
architecture, a torch build without oneDNN) the layers fall back to row blocks and `F.linear`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import MultiHeadAttention
from ..decoder import DecoderState, TransformerDecoder

log = logging.getLogger(__name__)

PACKING_ROWS_HINT = 128
PACKING_MIN_WEIGHTS = 256 * 256
SINGLE_ROW_KERNELS = ("row_blocks", "packed", "linear")


def _onednn_packing_works() -> bool:
    try:
        w = torch.ones(2, 2)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 2), packed, None, "none", [], "")
        return bool(torch.backends.mkldnn.is_available()) and torch.equal(out, torch.full((2, 2), 2.0))
    except (AttributeError, RuntimeError):
        return False


ONEDNN = _onednn_packing_works()


class PackedLinear(nn.Module):
    """A frozen `nn.Linear` for inference on CPU: y = x Wᵀ + b with W stored for the rows at hand."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same parameters (shared with a tied embedding)
        self.single_row = "row_blocks"  # the kernel for one row; apply_cpu times them and picks
        self._make_layouts()

    def _make_layouts(self) -> None:
        weight = self.weight.detach()
        cpu_fp32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.packed = None
        if ONEDNN and cpu_fp32 and weight.numel() >= PACKING_MIN_WEIGHTS:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS_HINT)
        blocks = max(2, torch.get_num_threads())  # one block per thread
        self.row_blocks = self.bias_blocks = None
        if cpu_fp32 and self.out_features % blocks == 0:
            self.row_blocks = weight.view(blocks, self.out_features // blocks, self.in_features)  # a view: no copy
            if self.bias is not None:
                self.bias_blocks = self.bias.detach().view(blocks, self.out_features // blocks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., in] -> [..., out]
        rows = x.reshape(-1, self.in_features)  # [rows, in]
        kernel = self.single_row if rows.shape[0] == 1 else "packed"
        if kernel == "row_blocks" and self.row_blocks is not None:
            column = rows.t().expand(self.row_blocks.shape[0], -1, -1)  # [k, in, 1], shared by every block
            y = (torch.bmm(self.row_blocks, column) if self.bias_blocks is None
                 else torch.baddbmm(self.bias_blocks, self.row_blocks, column))  # [k, out/k, 1]
        elif kernel != "linear" and self.packed is not None and rows.shape[0] > 0:
            y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        else:
            y = F.linear(rows, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        """gelu(x Wᵀ + b) for x [rows, in]; with packed weights one oneDNN call, the activation applied as it writes."""
        if self.packed is not None and x.shape[0] > 1:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], approximate)
        return F.gelu(self(x), approximate=approximate)

    def train(self, mode: bool = True) -> "PackedLinear":
        if mode:
            raise RuntimeError("a model prepared for inference (mmxattn.inference.prepare) is frozen; load it again "
                               "to train it")
        return super().train(False)

    def __getstate__(self) -> dict[str, Any]:
        # packed (opaque) tensors cannot be pickled or deep-copied: a copy makes its own
        return {k: v for k, v in self.__dict__.items() if k not in ("packed", "row_blocks", "bias_blocks")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._make_layouts()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed={self.packed is not None}"


def pack_linears(module: nn.Module) -> int:
    """Replace every nn.Linear inside `module` by a PackedLinear; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, PackedLinear(child))
            count += 1
        else:
            count += pack_linears(child)
    return count


def _norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class FastDecoder(TransformerDecoder):
    """A frozen `TransformerDecoder` whose one-token step is `DecoderLayer.forward` written out flat.

    Made from a decoder by `from_decoder`, it is the same module (the same parameters, buffers and
    state-dict keys) with another `step` for one token per row without attention weights, the step a
    decode spends its time in; its layers' linears are whatever they are (PackedLinear after `apply_cpu`).
    """

    @classmethod
    def from_decoder(cls, decoder: TransformerDecoder, *, compile_step: bool = False) -> "FastDecoder":
        fast = cls.__new__(cls)
        fast.__dict__ = decoder.__dict__  # one module, seen with this class's step
        fast._one_token_step = torch.compile(fast.step_one, dynamic=True) if compile_step else fast.step_one
        return fast

    def step(self, tokens: torch.Tensor, state: DecoderState, *, need_weights: bool = False):
        if tokens.shape[1] != 1 or need_weights or self.training:
            return super().step(tokens, state, need_weights=need_weights)
        return self._one_token_step(tokens, state), []

    def step_one(self, tokens: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """`TransformerDecoder.step` for one token per row in eval mode: tokens [N, 1] -> logits [N, 1, V]."""
        n, d = tokens.shape[0], self.d_model
        x = self.embed_tokens(tokens, state.position).view(n, d)  # [N, D]
        for layer, cache, memory in zip(self.layers, state.caches, state.memories):
            attn = layer.self_attn
            heads, head_dim = attn.num_heads, attn.head_dim
            # causal self-attention over the cache; the one new query may see every cached key
            qkv = attn.qkv_proj(_norm(layer.norm_self, x)).view(n, 3, heads, 1, head_dim)
            k, v = cache.append(qkv[:, 1], qkv[:, 2])  # [N, H, t, Dh]
            x = x + attn.out_proj(F.scaled_dot_product_attention(qkv[:, 0], k, v).view(n, d))
            x = x + self._cross(layer.cross_attn, _norm(layer.norm_cross, x), memory)
            ffn_in, activation, _, ffn_out = layer.ffn
            h = _norm(layer.norm_ffn, x)
            h = ffn_in.gelu(h, activation.approximate) if isinstance(ffn_in, PackedLinear) else activation(ffn_in(h))
            x = x + ffn_out(h)
        state.position += 1
        return self.output(_norm(self.norm, x)).view(n, 1, -1)

    @staticmethod
    def _cross(cross: nn.Module, x: torch.Tensor, memory) -> torch.Tensor:
        """x [N, D] -> [N, D]: the G beams of a source are G queries against its one copy of K/V."""
        n, d = x.shape
        if type(cross) is not MultiHeadAttention:  # another cross-attention module (gated fusion): its own forward
            return cross(x.view(n, 1, d), memory)[0].view(n, d)
        b = memory.keys.shape[0]
        q = cross.q_proj(x).view(b, n // b, cross.num_heads, cross.head_dim).transpose(1, 2)  # [B, H, G, Dh]
        mask = None if memory.mask is None else memory.mask[:, None, None, :]  # [B, 1, 1, S]
        h = F.scaled_dot_product_attention(q, memory.keys, memory.values, attn_mask=mask)
        out = cross.out_proj(h.transpose(1, 2).reshape(n, d))
        if memory.empty is not None:  # sources without any real position read nothing
            out = out * (~memory.empty).repeat_interleave(n // b)[:, None].to(out.dtype)
        return out


def apply_cpu(model: nn.Module) -> None:
    """Pack every linear layer of `model` (encoders included, a plugin's too) and give it a FastDecoder."""
    if not ONEDNN:
        log.info("oneDNN weight packing is not available in this torch build or on this CPU: the cpu backend "
                 "uses row blocks for single rows and F.linear otherwise")
    pack_linears(model)
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    kernel = fastest_single_row_kernel(max(layers, key=lambda m: m.weight.numel())) if layers else "linear"
    for layer in layers:
        layer.single_row = kernel
    model.decoder = FastDecoder.from_decoder(model.decoder)


def fastest_single_row_kernel(layer: PackedLinear, repeats: int = 20) -> str:
    """The kernel that multiplies one row by `layer`'s weight fastest on this machine (best of `repeats`)."""
    x = torch.randn(1, layer.in_features)
    best: dict[str, float] = {}
    with torch.inference_mode():
        for kernel in SINGLE_ROW_KERNELS:
            if (kernel == "row_blocks" and layer.row_blocks is None) or (kernel == "packed" and layer.packed is None):
                continue
            layer.single_row = kernel
            layer(x)  # warm-up: first-call allocations
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - start)
            best[kernel] = min(times)
    choice = min(best, key=best.get)
    log.debug("single-row kernel: %s (%s)", choice, ", ".join(f"{k} {1e6 * v:.0f} us" for k, v in best.items()))
    return choice
