"""Linear layers for inference on CPU: weights stored the way a product with few rows reads them fastest.

Training multiplies thousands of rows at a time with autograd, and `F.linear` is at its best there. A
decode step multiplies 1 to a few hundred rows (the live hypotheses) by every weight matrix, so it is
bound by reading the weights, and how they are stored decides the speed. Measured on the 2-core AMD EPYC
benchmark machine (torch 2.11, MKL and oneDNN):

- 2 rows or more: oneDNN's prepacked weight format (what `torch.compile` uses after freezing) beats
  `F.linear` by 1.2-3× (largest for the vocabulary projection at few rows). oneDNN picks the blocked
  format from a row-count hint; hints of 128 and up gave the fastest format at every row count tried
  (5, 32, 160), so one packed copy serves every batch size. A oneDNN call costs ~10 µs more than
  `F.linear`, so small weights (under 256×256, tiny test models) stay with `F.linear`.
- 1 row (greedy decoding of one source) is a matrix-vector product, bound by reading the weights.
  `F.linear`, `torch.mv` and a oneDNN-packed copy all stream them at 10-20 GB/s, half of what a plain
  `sum` over the same matrices reaches. A batched product over the weight split into blocks of rows,
  `bmm(W.view(k, out/k, in), x)`, reads them at 31-43 GB/s with 2 threads (24 GB/s with 1 thread, against
  13-15 for the best single-thread layout): MKL's batched kernel is a better matrix-vector product than
  the one its plain product falls back to. The split is a view, so it costs no memory; one block per
  thread (at least 2), where the output size allows.

With packed weights an activation can run inside the same oneDNN call (`InferenceLinear.gelu`, the FFN).

The packed copy pays off in any forward pass without autograd: 1.13-1.27× over `F.linear` for the
encoder's 960 rows at batch 32, 1.25-1.94× for its 30 rows at batch 1 (a whole greedy decode 8-10%
faster). So every linear layer of the framework is a `Linear`, which multiplies by a packed copy of its
weight in evaluation (validation, the encoder pass of generation, mmx-eval), and `InferenceLinear`, the
decode step's view of a `Linear`, shares that copy.

Results equal `F.linear` up to float rounding (different summation order), which tests/test_fast_paths.py
checks at the token level.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


_optimizer_steps = 0  # steps taken by any torch optimizer in this process


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# Fused optimizers (AdamW(fused=True), Lightning's default on GPU) update weights in place without
# bumping their version counters, so a key for "these weights are unchanged" counts optimizer steps too.
register_optimizer_step_post_hook(_count_optimizer_step)


def weights_key(params: Iterable[torch.Tensor]) -> tuple:
    """Changes whenever one of these weights may have changed: an optimizer step, an in-place write, `.to()`.

    Writes through `.data` (`param.data.copy_(...)`) bump no version counter and go unseen: after them,
    call `drop_packed_weights`.
    """
    return _optimizer_steps, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)


def _onednn_packing_works() -> bool:
    try:
        w = torch.ones(2, 2)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 2), packed, None, "none", [], "")
        return bool(torch.backends.mkldnn.is_available()) and torch.equal(out, torch.full((2, 2), 2.0))
    except (AttributeError, RuntimeError):
        return False


ONEDNN = _onednn_packing_works()
PACKING_ROWS_HINT = 128
PACKING_MIN_WEIGHTS = 256 * 256


def _packable(weight: torch.Tensor) -> bool:
    return (
        ONEDNN and weight.device.type == "cpu" and weight.dtype == torch.float32
        and weight.numel() >= PACKING_MIN_WEIGHTS
    )


class Linear(nn.Linear):
    """`nn.Linear` that multiplies by a oneDNN-packed copy of its weight when run without autograd on CPU.

    The copy is made on the first such call and kept until the weight may have changed (an optimizer
    step, an in-place write, `.to()`) or the module goes back to training, so training holds no copy.
    Anywhere else (autograd, GPUs, bf16, small weights, torch.compile) it is `nn.Linear`.
    """

    _packed: tuple[tuple, torch.Tensor] | None = None  # (weights key, packed weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., in] -> [..., out]
        packed = None if self.training or torch.is_grad_enabled() or x.numel() == 0 else self.packed_weight()
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def packed_weight(self) -> torch.Tensor | None:
        """The packed copy of the current weight, made if needed; None where packing does not apply."""
        if not _packable(self.weight) or torch.compiler.is_compiling():
            return None  # inductor cannot lower oneDNN's packed weights
        key = weights_key([self.weight])
        if self._packed is None or self._packed[0] != key:
            with torch.no_grad():
                self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACKING_ROWS_HINT))
        return self._packed[1]

    def train(self, mode: bool = True) -> "Linear":
        if mode:
            self._packed = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        # copy.deepcopy and pickling cannot read a packed (opaque) tensor; a copy makes its own when used
        return {k: v for k, v in super().__getstate__().items() if k != "_packed"}


def drop_packed_weights(module: nn.Module) -> None:
    """Forget the packed copy of every `Linear` in `module`; each is remade from the weight on next use.

    Needed only after writing weights through `.data`, which `weights_key` cannot see.
    """
    for m in module.modules():
        if isinstance(m, Linear):
            m._packed = None


def layout_for(rows: int, *, compiled: bool = False) -> str:
    """How to multiply `rows` rows per step fastest here: "packed", "row_blocks" or "plain" (`F.linear`).

    "packed" also takes the row-block path when the live rows drop to one. torch.compile gets "plain":
    inductor cannot lower oneDNN's packed weights, and the row-block views make dynamo recompile.
    """
    if compiled:
        return "plain"
    return "row_blocks" if rows == 1 else "packed"


class InferenceLinear:
    """y = x Wᵀ + b for x [rows, in] in a decode step, with `linear`'s weight used as `layout` says."""

    def __init__(self, linear: Linear, layout: str):
        self.weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.row_blocks = None
        self.packed = linear.packed_weight() if layout == "packed" else None
        out_dim, in_dim = self.weight.shape
        blocks = max(2, torch.get_num_threads())
        on_cpu_fp32 = self.weight.device.type == "cpu" and self.weight.dtype == torch.float32  # else cuBLAS etc.
        if layout != "plain" and on_cpu_fp32 and out_dim % blocks == 0:
            self.row_blocks = self.weight.view(blocks, out_dim // blocks, in_dim)  # a view: no copy
            self.bias_blocks = None if self.bias is None else self.bias.view(blocks, out_dim // blocks, 1)

    def _by_row_blocks(self, x: torch.Tensor) -> bool:
        return self.row_blocks is not None and x.shape[0] == 1

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        """gelu(x Wᵀ + b); with packed weights one oneDNN call, the activation applied as it writes."""
        if self.packed is not None and not self._by_row_blocks(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], approximate)
        return F.gelu(self(x), approximate=approximate)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x [rows, in] -> [rows, out]
        if self._by_row_blocks(x):
            blocks = self.row_blocks.shape[0]
            column = x.t().expand(blocks, -1, -1)  # [k, in, 1], the one row shared by every block
            y = (
                torch.bmm(self.row_blocks, column) if self.bias is None
                else torch.baddbmm(self.bias_blocks, self.row_blocks, column)
            )  # [k, out/k, 1]
            return y.view(1, -1)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
