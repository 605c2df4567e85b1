"""What the model reads, epoch by epoch: cross-attention pictures of a few fixed validation samples.

After each validation, rank 0 decodes the first `samples` validation samples (of each task, in a multitask
run) greedily and draws each one's cross-attention as `mmx-attend` does (`mmxattn.viz`: the image with the
weights over it, the spectrogram under them, the source tokens across). The pictures go to the run's
experiment logger: TensorBoard images, W&B images, MLflow artifacts; with the csv logger they are written as
PNGs under <run>/attention/epoch<N>/. The same samples every epoch, so the pictures show learning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from ..generation import GenerationConfig
from ..viz.attention_maps import AttentionMapper
from ..viz.attention_plots import plot_source, render_source

log = logging.getLogger(__name__)


class AttentionImages(Callback):
    def __init__(self, samples: int, tokenizers, cfg, output_dir: Path, max_len: int = 64):
        self.samples, self.tokenizers, self.cfg = int(samples), tokenizers, cfg
        self.output_dir, self.max_len = Path(output_dir), max_len

    def _chosen(self, dataset) -> dict[str | None, list[int]]:
        """{task (None for a single-task run): the indices of its first `samples` validation samples}."""
        if hasattr(dataset, "offsets"):  # a multitask split: the tasks' datasets one after another
            return {name: list(range(start, min(start + self.samples, end)))
                    for name, start, end in zip(dataset.names, dataset.offsets, dataset.offsets[1:])}
        return {None: list(range(min(self.samples, len(dataset))))}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not self.samples or trainer.sanity_checking or not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.splits["valid"]
        gen = GenerationConfig(strategy="greedy", max_len=self.max_len)
        for task, indices in self._chosen(dataset).items():
            mapper = AttentionMapper(pl_module.model, self.tokenizers, self.cfg, pl_module.device, task=task)
            maps = mapper([dataset.samples[i].sources for i in indices], gen)
            for i, amap in zip(indices, maps):
                for span in amap.sources:
                    tag = f"attention/{task + '/' if task else ''}{i}" + (f".{span.name}" if len(amap.sources) > 1 else "")
                    self._log(trainer, tag, amap, span.name)

    def _log(self, trainer, tag: str, amap, source: str) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        trackers = [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]
        if not trackers:
            plot_source(amap, source, self.output_dir / "attention" / f"epoch{epoch:03d}" / f"{tag.split('/', 1)[1]}.png")
            return
        image = render_source(amap, source)  # [H, W, 3] uint8
        for tracker in trackers:
            kind = type(tracker).__name__
            if kind == "TensorBoardLogger":
                tracker.experiment.add_image(tag, image, step, dataformats="HWC")
            elif kind == "WandbLogger":
                tracker.log_image(key=tag, images=[image], caption=[amap.text], step=step)
            elif kind == "MLFlowLogger":
                tracker.experiment.log_image(tracker.run_id, image, f"{tag}/epoch{epoch:03d}.png")
