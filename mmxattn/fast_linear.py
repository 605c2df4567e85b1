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
- 1 row (greedy decoding of one source) is a matrix-vector product, bound by reading the weights. With
  2 threads the packed copy streams them fastest too: the whole Transformer-base step at 15 GB/s
  against 12 GB/s for MKL on the best plain layout, greedy decoding 96-103 tokens/s against 78-86.
  With 1 thread MKL's matrix-vector product is the faster one (80 against 67 tokens/s), and it reads a
  [in, out] (transposed) copy about twice as fast as the [out, in] parameter when out ≥ in (512→1536,
  512→2048, 512→8000: 1.7-2.0×; for 2048→512 the parameter's own layout is faster, so it is kept).

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
    """The weight copy that multiplies `rows` rows per step fastest here: "packed", "transposed" or "plain".

    torch.compile gets "plain": inductor cannot lower oneDNN's packed weights.
    """
    if compiled:
        return "plain"
    return "transposed" if rows == 1 and torch.get_num_threads() == 1 else "packed"


class InferenceLinear:
    """y = x Wᵀ + b for x [rows, in], with W stored in `layout` (see `layout_for`) where it applies."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str):
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self.transposed = self.packed = None
        if layout == "plain" or weight.device.type != "cpu" or weight.dtype != torch.float32:
            return  # GPUs (cuBLAS) and bf16 are served well by F.linear
        out_dim, in_dim = weight.shape
        if layout == "transposed":
            if out_dim >= in_dim:
                self.transposed = self.weight.t().contiguous()  # [in, out]
        elif ONEDNN and weight.numel() >= PACKING_MIN_WEIGHTS:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACKING_ROWS_HINT)

    @classmethod
    def of(cls, linear: torch.nn.Linear, layout: str) -> "InferenceLinear":
        return cls(linear.weight, linear.bias, layout)

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        """gelu(x Wᵀ + b); with packed weights one oneDNN call, the activation applied as it writes."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], approximate)
        return F.gelu(self(x), approximate=approximate)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x [rows, in] -> [rows, out]
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.transposed is not None and x.shape[0] == 1:
            return x @ self.transposed if self.bias is None else torch.addmm(self.bias, x, self.transposed)
        return F.linear(x, self.weight, self.bias)
