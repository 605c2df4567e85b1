"""Training-speed tricks for CPUs, applied from outside the model by `mmx-train` (key `cpu_speedups`).

The model is plain PyTorch (`nn.Dropout` everywhere). On a CPU, torch's random generator is serial, and
dropout's mask draws are a measurable share of a training step: `bernoulli_` and `rand_like` draw one
32-bit number per unit. `FastCpuDropout` draws 31 random bits per int32 and uses them as two
15-bit numbers, half the draws. `apply_cpu_speedups(model)` swaps every `nn.Dropout` of a model for one
(they hold no weights, so checkpoints do not change). benchmarks/README.md has the measured step times
with and without it.
"""

from __future__ import annotations

import torch
from torch import nn


class FastCpuDropout(nn.Dropout):
    """`nn.Dropout` whose mask on CPU comes from 15-bit random integers instead of `bernoulli_`.

    Each unit is kept with probability 1 - p' and scaled by 1 / (1 - p'), where p' is p rounded to a
    multiple of 1/32768 (p = 0.1 becomes 0.100006): the expectation stays exact. Elsewhere (GPUs, eval,
    p = 0) it is `nn.Dropout`.
    """

    LEVELS = 1 << 15

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int32).random_()  # values in [0, 2^31): 31 random bits
        draws = bits.view(torch.int16)[:n].view(x.shape).bitwise_and_(self.LEVELS - 1)  # 15 bits each
        dropped = min(round(self.p * self.LEVELS), self.LEVELS - 1)
        keep = draws >= dropped
        return x * keep.to(x.dtype).mul_(self.LEVELS / (self.LEVELS - dropped))


def apply_cpu_speedups(model: nn.Module) -> int:
    """Swap every nn.Dropout inside `model` for a FastCpuDropout of the same p; returns how many."""
    count = 0
    for name, child in list(model.named_children()):
        if type(child) is nn.Dropout:
            setattr(model, name, FastCpuDropout(child.p, child.inplace))
            count += 1
        else:
            count += apply_cpu_speedups(child)
    return count
