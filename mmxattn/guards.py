"""Non-finite loss / gradient guard: skip the bad step on the device, count it, stop after too many in a row.

Why lazy: asking the host "is this step's loss finite?" every step (`.item()`) makes the CPU wait for the
GPU each step and drains the queue of kernels it had launched ahead. Instead the training step keeps a
0/1 flag on the device, the optimizer skips the update on the device (fused AdamW's `found_inf`, the
same mechanism a GradScaler uses), and the flags are copied to the host only every
`guard.check_every_n_steps` optimizer steps. The price: a run that must stop (`max_nonfinite_in_row`
bad steps in a row) stops up to `check_every_n_steps - 1` steps late; those extra steps were skipped
too if they were bad, so no bad update is ever applied. `check_every_n_steps: 1` checks every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import MmxError


class NonFiniteLossError(MmxError, RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


@dataclass
class _Step:
    step: int  # optimizer step (trainer.global_step before the update)
    epoch: int
    batch_idx: int  # the last micro-batch of the step, counted from the start of the epoch
    bad: torch.Tensor  # [] bool on the device: loss or gradient not finite (on any rank)
    indices: list[torch.Tensor]  # this rank's sample indices of each micro-batch


@dataclass
class NonFiniteGuard:
    max_in_row: int = 10  # 0 = never stop (bad steps are still skipped and counted)
    check_every: int = 20
    describe: Callable[[list[int]], str] = lambda indices: f"sample indices {indices}"
    total: int = 0  # bad steps since the start of training (restored on resume)
    in_row: int = 0
    pending: list[_Step] = field(default_factory=list)

    def record(self, step: int, epoch: int, batch_idx: int, bad: torch.Tensor, indices: list[torch.Tensor]) -> None:
        self.pending.append(_Step(step, epoch, batch_idx, bad.detach(), list(indices)))
        if len(self.pending) >= self.check_every:
            self.check()

    def check(self) -> None:
        """Copy the pending flags to the host (one sync), update the counts, raise if the limit was hit."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        flags = torch.stack([p.bad for p in pending]).cpu().tolist()
        for entry, bad in zip(pending, flags):
            self.in_row = self.in_row + 1 if bad else 0
            self.total += int(bad)
            if self.max_in_row and self.in_row >= self.max_in_row:
                indices = [i for t in entry.indices for i in t.tolist()]
                raise NonFiniteLossError(
                    f"stopping: {self.in_row} optimizer steps in a row had a non-finite loss or gradient "
                    f"(guard.max_nonfinite_in_row={self.max_in_row}); the last was step {entry.step} (epoch "
                    f"{entry.epoch}, batch {entry.batch_idx}: {self.describe(indices)}). {self.total} steps were "
                    "skipped in all. Lower optim.lr, raise optim.warmup_steps, set trainer.precision=32-true, or "
                    "check those samples."
                )

    def state_dict(self) -> dict[str, int]:
        self.check()
        return {"total": self.total, "in_row": self.in_row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total, self.in_row, self.pending = int(state["total"]), int(state["in_row"]), []
