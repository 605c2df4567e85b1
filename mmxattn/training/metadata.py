"""What every training checkpoint carries besides the weights: the tokenizers and the run config.

With them a `.ckpt` stands on its own: `load_for_inference` rebuilds the model from it
(mmxattn/checkpoint.py), and `mmx-average` checks that the checkpoints it averages come from the same
architecture and vocabulary (mmxattn/cli/average.py). The keys are those Seq2SeqTask wrote before this
was a callback, so checkpoints of either version read the same.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ..tokenizer import Tokenizers

TOKENIZERS_KEY = "mmx_tokenizers"
CONFIG_KEY = "mmx_config"


class CheckpointMetadata(Callback):
    """Writes `mmx_tokenizers` (Tokenizers.to_state()) and `mmx_config` (the resolved run config) into
    each checkpoint, as plain containers so that it loads with torch.load(weights_only=True)."""

    def __init__(self, tokenizers: Tokenizers, run_config: DictConfig):
        # the whole run config, stored and never read here: it is what rebuilds the model later
        self.tokenizers, self.run_config = tokenizers, run_config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[TOKENIZERS_KEY] = self.tokenizers.to_state()
        # resolved at each save, as before: the config as it is then (train.py fills checkpoint.monitor first)
        checkpoint[CONFIG_KEY] = OmegaConf.to_container(self.run_config, resolve=True)
