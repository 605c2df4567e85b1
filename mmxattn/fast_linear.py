"""Linear layers laid out for incremental decoding, where a matmul has only a few rows (the live hypotheses).

Training multiplies thousands of rows at a time and `F.linear` is at its best there. A decode step
multiplies 1 to a few hundred rows by every weight matrix, so it is bound by reading the weights, and how
they are stored decides the speed. Measured on the 2-core AMD EPYC benchmark machine (torch 2.11, MKL and
oneDNN):

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

`InferenceLinear` holds whichever copy applies, made once per decode and reused for every step (the
decoder caches them until a weight changes). It is used only without autograd; results equal `F.linear`
up to float rounding (different summation order), which tests/test_fast_paths.py checks at the token level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def layout_for(rows: int, *, compiled: bool = False) -> str:
    """How to multiply `rows` rows per step fastest here: "packed", "row_blocks" or "plain" (`F.linear`).

    "packed" also takes the row-block path when the live rows drop to one. torch.compile gets "plain":
    inductor cannot lower oneDNN's packed weights, and the row-block views make dynamo recompile.
    """
    if compiled:
        return "plain"
    return "row_blocks" if rows == 1 else "packed"


class InferenceLinear:
    """y = x Wᵀ + b for x [rows, in], with W stored in `layout` (see `layout_for`) where it applies."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str):
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self.row_blocks = self.packed = None
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            return  # GPUs (cuBLAS) and bf16 are served well by F.linear
        out_dim, in_dim = weight.shape
        blocks = max(2, torch.get_num_threads())
        if layout != "plain" and out_dim % blocks == 0:
            self.row_blocks = self.weight.view(blocks, out_dim // blocks, in_dim)  # a view: no copy
            self.bias_blocks = None if bias is None else self.bias.view(blocks, out_dim // blocks, 1)
        if layout == "packed" and ONEDNN and weight.numel() >= PACKING_MIN_WEIGHTS:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACKING_ROWS_HINT)

    @classmethod
    def of(cls, linear: torch.nn.Linear, layout: str) -> "InferenceLinear":
        return cls(linear.weight, linear.bias, layout)

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
