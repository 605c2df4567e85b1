"""Lightning callbacks that break a run on purpose, selected from the command line in tests:

    mmx-train +callbacks.stop._target_=tests.fault_injection.SignalAtStep +callbacks.stop.step=7 \
              +callbacks.stop.signal=KILL

(`callbacks:` in the train config instantiates each `_target_`; the repository root must be importable.)
"""

from __future__ import annotations

import os
import signal as signals
from datetime import timedelta

import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.trainer.states import RunningStage


class SignalAtStep(Callback):
    """Send `signal` (TERM, KILL, ...) to this process when optimizer step `step` is about to run.

    Only in a run that starts before that step: a resumed run that is already past it is left alone.
    """

    def __init__(self, step: int, signal: str = "TERM"):
        self.step, self.signal = step, getattr(signals, f"SIG{signal}")
        self._armed = False

    def on_train_start(self, trainer, pl_module):
        self._armed = trainer.global_step < self.step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._armed and trainer.global_step == self.step:
            self._armed = False
            os.kill(os.getpid(), self.signal)


class NanGradientAtSteps(Callback):
    """Make one gradient NaN at the given optimizer steps, and record whether each step changed the weights.

    `observed` (class level, so a test can read it after `train(cfg)` built the instance from the config)
    gets (step, gradient was poisoned, parameters changed) for each optimizer step.
    """

    observed: list[tuple[int, bool, bool]] = []

    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self._before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        changed = any(not torch.equal(a, b.detach()) for a, b in zip(self._before, pl_module.parameters()))
        NanGradientAtSteps.observed.append((self._step, self._step in self.steps, changed))


class StepClockTimer(Timer):
    """Lightning's `Timer` (what `trainer.max_time` installs) on a clock that advances one second per
    training batch instead of with wall time: `duration: N` stops training after N batches in all, counted
    across resumes through the Timer's own checkpoint state, exactly the way a real time limit stops it
    (the Timer sets `trainer.should_stop` in `on_train_batch_end`). With a Timer in the callbacks Lightning
    ignores `trainer.max_time`.

        mmx-train +callbacks.stop._target_=tests.fault_injection.StepClockTimer +callbacks.stop.duration=6
    """

    def __init__(self, duration: float, **kwargs):
        super().__init__(duration=timedelta(seconds=duration), interval="step", **kwargs)
        self._batches = 0

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        return float(self._batches + self._offset) if RunningStage(stage) == RunningStage.TRAINING else 0.0

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        self._batches += 1  # this batch's "second" has passed when the Timer looks at the clock
        super().on_train_batch_end(trainer, *args, **kwargs)
