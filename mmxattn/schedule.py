"""The learning-rate factor per optimizer step: linear warmup, then a decay.

schedule:
- cosine / linear: decay to `min_ratio` at the last step of the run (trainer.max_steps, or max_epochs ×
  batches per epoch);
- inverse_sqrt: factor sqrt(warmup / step) after warmup (fairseq), which needs no total: the schedule for
  runs whose length is decided by early stopping or a time budget.

Warmup is `warmup_steps`, or `warmup_fraction` of the run's steps, which scales with the data: the same
recipe warms up over a similar share of training on 2,000 sentences and on 200,000.

The run's length is known only once Lightning has built (and, on resume, restored) the training loader,
after the optimizer exists: `bind(total_steps)` is called then (Task.on_train_start). Before that the
factor is 0, so nothing can train on an unbound schedule by mistake.
"""

from __future__ import annotations

import math

from .errors import ConfigError

SCHEDULES = ("cosine", "linear", "inverse_sqrt")


class WarmupSchedule:
    def __init__(self, *, schedule: str, min_ratio: float = 0.0, warmup_steps: int = 1,
                 warmup_fraction: float | None = None):
        if schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule={schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if warmup_fraction is None and warmup_steps < 1:
            raise ConfigError(f"optim.warmup_steps={warmup_steps} must be ≥ 1")
        if warmup_fraction is not None and not 0 < warmup_fraction < 1:
            raise ConfigError(f"optim.warmup_fraction={warmup_fraction} must be in (0, 1), e.g. 0.05")
        self.schedule, self.min_ratio = schedule, min_ratio
        self.warmup_steps, self.warmup_fraction = warmup_steps, warmup_fraction
        self.total: int | None = None
        self.warmup: int | None = None

    def bind(self, total_steps: int) -> None:
        """Fix the run's length in optimizer steps (and with it a fractional warmup)."""
        self.total = max(1, int(total_steps))
        fraction = self.warmup_fraction
        self.warmup = self.warmup_steps if fraction is None else max(1, round(fraction * self.total))

    def __call__(self, step: int) -> float:
        if self.warmup is None:
            return 0.0
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "inverse_sqrt":
            return math.sqrt(self.warmup / (step + 1))
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.min_ratio + (1 - self.min_ratio) * decay
