"""The global torch RNG state in checkpoints, so that a resumed run draws what the uninterrupted one drew.

Dropout draws its masks from the global torch RNG (the CUDA one on a GPU). Saved with every checkpoint and
restored when training starts, it makes a resumed run repeat the same masks (tests/test_resume.py). The
data loaders have generators of their own (mmxattn/data/batching.py), so nothing else needs restoring.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

# Top-level checkpoint key, the one Seq2SeqTask wrote before this was a callback: kept, so that checkpoints
# of either version resume the other way round too. Under it: {"torch": ByteTensor, "cuda": ByteTensor
# (on a GPU)}, plain tensors so that the checkpoint loads with torch.load(weights_only=True).
CHECKPOINT_KEY = "mmx_rng"


class RngState(Callback):
    """Saves the torch (and CUDA) RNG state in each checkpoint; restores a loaded one at on_train_start."""

    def __init__(self):
        self._to_restore: dict[str, torch.Tensor] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        state = {"torch": torch.get_rng_state()}
        if pl_module.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        checkpoint[CHECKPOINT_KEY] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Not restored yet: Lightning goes on to set up the optimizers, loops and loaders after the load.
        self._to_restore = checkpoint.get(CHECKPOINT_KEY)

    def on_train_start(self, trainer, pl_module):
        # Here rather than at load time: nothing draws from the RNG between now and the first step. Before
        # this was a callback it ran in the task's on_train_start, after binding the LR schedule, which
        # draws nothing either; Lightning calls the callbacks' hook first.
        rng, self._to_restore = self._to_restore, None
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and pl_module.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], pl_module.device)
