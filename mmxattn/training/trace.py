"""Tracing training batches back to their samples: the `trace_data` files, and sample names for messages.

`TraceData` (key `trace_data: true`) writes one line per training micro-batch and rank to
`<output_dir>/trace/rank<R>.tsv`:

    step  epoch  batch  summed loss  target tokens  sample indices (comma-separated)

to audit how the data is sharded over ranks and what a resumed run repeats (tests/test_resume.py,
tests/run_helpers.read_trace). The file is appended to, so a resumed run continues it.
`describe_train_samples` names training samples by where they come from, for the non-finite guard's
error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import torch
from lightning.pytorch.callbacks import Callback


def describe_train_samples(trainer, indices: list[int]) -> str:
    """The first 8 samples of `indices` (training split) as "file:line, ...", or the bare indices when the
    trainer is missing or its datamodule cannot say."""
    try:
        samples = trainer.datamodule.splits["train"].samples
    except (AttributeError, KeyError, RuntimeError):
        return f"sample indices {indices[:8]}"
    shown = ", ".join(samples[i].where for i in indices[:8])
    return f"samples {shown}{' ...' if len(indices) > 8 else ''}"


class TraceData(Callback):
    """Writes the trace line of each training micro-batch (syncs the host once per micro-batch).

    The line is written in on_before_backward, right after the training step computed the loss, as the
    task did before this was a callback: a micro-batch whose optimizer step then fails (a non-finite
    guard stop) is still in the trace, and the step number is the one the loss was computed at (it moves
    on at the optimizer step, before on_train_batch_end).
    """

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)  # relative paths resolve when the file is first opened, as before
        self._file: IO[str] | None = None
        self._batch: tuple[int, torch.Tensor] | None = None  # (batch_idx, sample indices [B]) of this micro-batch

    def _open(self, rank: int) -> IO[str]:
        if self._file is None:
            path = self.output_dir / "trace" / f"rank{rank}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", buffering=1, encoding="utf-8")  # line-buffered: a killed run keeps its lines
        return self._file

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # on_before_backward is not given the batch: keep what the line needs from it
        self._batch = (batch_idx, batch.get("index"))

    def on_before_backward(self, trainer, pl_module, loss):
        loss_sum_and_tokens = getattr(pl_module, "last_train_loss", None)  # None: a batch without targets
        if loss_sum_and_tokens is None or self._batch is None:
            return
        (loss_sum, ntokens), (batch_idx, indices) = loss_sum_and_tokens, self._batch
        self._batch = None
        ids = ",".join(str(i) for i in indices.tolist())
        self._open(trainer.global_rank).write(
            f"{trainer.global_step}\t{trainer.current_epoch}\t{batch_idx}\t{loss_sum.item()!r}\t{int(ntokens)}\t{ids}\n"
        )

    def teardown(self, trainer, pl_module, stage):
        if self._file is not None:
            self._file.close()
            self._file = None
