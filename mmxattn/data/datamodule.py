"""From files on disk to padded batches: read samples, build tokenizers, bucket, batch, collate.

The flow of one batch: a reader (by `data.format`) gives `Sample`s -> `Seq2SeqDataset.__getitem__` runs
each source's plugin processor (in a DataLoader worker) and looks up the tokenized target ->
`TokenBudgetBatchSampler` groups similar lengths -> `Collater` pads targets and calls each processor's
collate.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .. import registry
from ..ctc import settings as ctc_settings
from ..errors import ConfigError, DataError
from ..sources import PRESENT, encoder_configs
from ..tokenizer import BOS, EOS, PAD, Tokenizers
from .batching import ERROR, ResumableDataLoader, TokenBudgetBatchSampler, epoch_budget, world_and_rank
from .samples import Sample, SkipReport

log = logging.getLogger(__name__)

IGNORE = -100  # label id that the loss ignores (padding)


class Seq2SeqDataset(Dataset):
    """samples with their tokenized targets and sizes (max of source/target length, for batching), and the
    tokenized source transcripts when an auxiliary CTC loss reads them (loss.ctc_target=source)."""

    def __init__(self, samples: list[Sample], targets: list[list[int]], sizes: list[int],
                 processors: dict[str, registry.Processor], skip_invalid: bool = False,
                 ctc_targets: list[list[int]] | None = None):
        self.samples, self.targets, self.sizes, self.processors = samples, targets, sizes, processors
        self.skip_invalid, self.ctc_targets = skip_invalid, ctc_targets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any] | None]:
        """The items of one batch; what a DataLoader calls (in its worker, when num_workers > 0).

        A sample's DataError comes back as an item {ERROR: message} instead of an exception, so that the
        loader raises it in the main process as the one line the user would get without workers (see
        batching.ERROR). The rest of the batch is not loaded: training stops at that sample anyway.
        `dataset[index]` itself still raises.
        """
        items = []
        for index in indices:
            try:
                items.append(self[index])
            except DataError as e:
                return [{ERROR: str(e)}]
        return items

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:  # a source the sample lacks (absent or None) is left out; the Collater marks it
            sources = {name: proc(sample.sources[name]) for name, proc in self.processors.items()
                       if sample.sources.get(name) is not None}
        except DataError as e:
            if self.skip_invalid:  # counted by the collater, reported by the training task
                log.warning("skipping %s: %s", sample.where, e)
                return None
            raise DataError(f"{sample.where}: {e}") from e
        item = {"sources": sources, "target": self.targets[index], "index": index}
        if self.ctc_targets is not None:
            item["ctc_target"] = self.ctc_targets[index]
        return item


class Collater:
    """A list of dataset items -> {"inputs": {source: batch}, "target_in", "target_out", "index", "skipped"}.

    prompt: token ids the decoder reads after BOS and before the target (a multitask model's task tags); they
    are inputs, not predictions: target_out ignores their positions, and the batch carries them as "prompt"
    for decoding.
    """

    def __init__(self, processors: dict[str, registry.Processor], prompt: Sequence[int] = ()):
        self.processors, self.prompt = processors, tuple(prompt)

    def __call__(self, items: Sequence[dict | None]) -> dict[str, Any]:
        failed = next((item for item in items if item is not None and ERROR in item), None)
        if failed is not None:  # a sample's DataError, for the loader to raise in the main process
            return {ERROR: failed[ERROR]}
        good = [item for item in items if item is not None]
        batch: dict[str, Any] = {"skipped": len(items) - len(good)}
        if not good:  # every sample was bad: an empty batch the task skips, not a crash
            return batch
        k = len(self.prompt)
        width = max(len(item["target"]) for item in good) + 1 + k
        target_in = torch.full((len(good), width), PAD, dtype=torch.long)
        target_out = torch.full((len(good), width), IGNORE, dtype=torch.long)
        target_in[:, 0] = BOS
        if k:
            target_in[:, 1 : k + 1] = torch.tensor(self.prompt, dtype=torch.long)
        for row, item in enumerate(good):
            ids = torch.tensor(item["target"], dtype=torch.long)
            target_in[row, k + 1 : k + 1 + len(ids)] = ids
            target_out[row, k : k + len(ids)], target_out[row, k + len(ids)] = ids, EOS
        batch.update(
            inputs={name: self._collate_source(name, proc, good) for name, proc in self.processors.items()},
            target_in=target_in,  # [B, T] BOS p1 .. pk y1 .. yn PAD..   (k = 0 without a prompt)
            target_out=target_out,  # [B, T] IGNORE.. (k) y1 .. yn EOS IGNORE..
            index=torch.tensor([item["index"] for item in good]),
        )
        if k:
            batch["prompt"] = self.prompt
        if "ctc_target" in good[0]:  # source transcripts for CTC: [B, L] padded with PAD (the CTC blank)
            ctc = torch.full((len(good), max(len(item["ctc_target"]) for item in good)), PAD, dtype=torch.long)
            for row, item in enumerate(good):
                ctc[row, : len(item["ctc_target"])] = torch.tensor(item["ctc_target"], dtype=torch.long)
            batch["ctc_target"] = ctc
        return batch

    @staticmethod
    def _collate_source(name: str, proc: registry.Processor, items: list[dict]) -> dict[str, torch.Tensor]:
        """The processor's batch of the samples that have this source, plus `present` [B] if some lack it."""
        present = [name in item["sources"] for item in items]
        if all(present):
            return proc.collate([item["sources"][name] for item in items])
        batch = proc.collate([item["sources"][name] for item in items if name in item["sources"]]) if any(present) else {}
        batch[PRESENT] = torch.tensor(present, dtype=torch.bool)  # model.encode puts the rows back in place
        return batch


class Seq2SeqDataModule(L.LightningDataModule):
    """`prepare()` runs in every process before the model is built (the model needs the vocabulary).

    Built from its own config sections: `data`, the encoder config of each source (their processors),
    `tokenizer` (trained on the training split unless `tokenizers` are given), the shuffling seed, and
    whether an auxiliary CTC loss reads the samples' source transcripts. `from_config` picks them from a
    run's config.
    """

    def __init__(self, data, encoders: dict, tokenizer, *, seed: int = 0, ctc_on_transcripts: bool = False,
                 tokenizers: Tokenizers | None = None):
        super().__init__()
        self.data_cfg, self.encoders, self.tokenizer_cfg = data, encoders, tokenizer
        self.seed, self.ctc_on_transcripts = seed, ctc_on_transcripts
        self.tokenizers = tokenizers
        self.skipped = SkipReport()
        self.splits: dict[str, Seq2SeqDataset] = {}
        self.format = registry.get_data_format(self.data_cfg.format)  # built-in or a plugin's (entry points)

    @classmethod
    def from_config(cls, cfg, tokenizers: Tokenizers | None = None) -> "Seq2SeqDataModule":
        weight, target = ctc_settings(cfg)
        return cls(cfg.data, encoder_configs(cfg), cfg.tokenizer, seed=cfg.seed,
                   ctc_on_transcripts=bool(weight) and target == "source", tokenizers=tokenizers)

    def read(self, split: str) -> list[Sample]:
        return self.format.read(self.data_cfg, split, self.skipped)

    def prepare(self, splits: Sequence[str] = ("train", "valid")) -> None:
        samples = {split: self.read(split) for split in splits}
        if self.tokenizers is None:
            if "train" not in samples:
                raise ConfigError("tokenizers are built from the training split: prepare it first")
            train = samples["train"]
            text_sources = [s for s, c in self.encoders.items() if registry.get_plugin(c["name"]).input_kind == "text"]
            source_texts = [smp.sources[s] for smp in train for s in text_sources
                            if smp.sources.get(s) is not None] if text_sources else None
            if source_texts is None and self.ctc_on_transcripts:  # the source tokenizer is the transcripts'
                source_texts = [smp.transcript for smp in train if smp.transcript]
            self.tokenizers = Tokenizers.build(self.tokenizer_cfg, source_texts, [smp.target for smp in train],
                                               where=self._describe("train", train))
        for split, split_samples in samples.items():
            self.splits[split] = self.dataset(split, split_samples)
        if self.skipped.total:
            log.warning("data: %s", self.skipped.summary("samples"))

    def processors(self, train: bool) -> dict[str, registry.Processor]:
        return {
            source: registry.build_processor(c["name"], c, tokenizer=self.tokenizers, train=train)
            for source, c in self.encoders.items()
        }

    def _describe(self, split: str, samples: list[Sample]) -> str:
        """data.<split> and where its samples come from (the first one's file and line), for messages."""
        return f"data.{split}={self.data_cfg.get(split)}" + (f" ({len(samples)} samples from {samples[0].where}, ...)"
                                                             if samples else f" under data.root={self.data_cfg.root}")

    def _too_long(self, sample: Sample, lengths: dict[str, int], target: int, processors) -> str:
        """The overlong message: every source's length in its own unit (tokens, 10 ms frames, image positions)
        and the target's, since a speech sample's 3000 is frames, not tokens, and the fix depends on the side."""
        sides = [f"source '{name}' {n} {getattr(processors[name], 'length_unit', 'positions')}"
                 for name, n in lengths.items()] + [f"target {target} tokens"]
        return f"{sample.where}: longer than data.max_len={self.data_cfg.max_len}: {', '.join(sides)}"

    def dataset(self, split: str, samples: list[Sample]) -> Seq2SeqDataset:
        """The samples of one split that pass training's checks (a present source, a target within
        data.max_len), with their tokenized targets; `prepare` builds every split with it, mmx-data too."""
        processors = self.processors(train=(split == "train"))
        max_len = self.data_cfg.max_len
        kept, targets, sizes, ctc_targets = [], [], [], []
        with_transcripts = self.ctc_on_transcripts and split != "test"  # the loss needs them; decoding does not
        for sample in samples:
            present = [n for n in processors if sample.sources.get(n) is not None]
            if not present:
                if not self.data_cfg.skip_invalid:
                    raise DataError(
                        f"{sample.where}: has none of the sources this model reads ({', '.join(processors)}); it has "
                        f"{', '.join(sorted(sample.sources)) or 'none'}. Check the source names under `encoders`, or "
                        "set data.skip_invalid=true to drop such samples (the number is reported)."
                    )
                self.skipped.add("no source", sample.where)
                continue
            target = self.tokenizers.target.encode(sample.target)
            lengths = {n: processors[n].length(sample.sources[n]) for n in present}
            size = max(len(target) + 1, *lengths.values())  # +1: the EOS the decoder predicts last
            if size > max_len:
                if not self.data_cfg.skip_invalid:
                    raise DataError(
                        f"{self._too_long(sample, lengths, len(target) + 1, processors)}. Raise data.max_len (it "
                        "bounds every source and the target), or set data.skip_invalid=true to drop overlong "
                        "samples (the number is reported)."
                    )
                self.skipped.add(f"longer than data.max_len={max_len}", sample.where)
                continue
            if with_transcripts:
                if not sample.transcript:
                    if not self.data_cfg.skip_invalid:
                        raise DataError(f"{sample.where}: no source transcript (src_text), which loss.ctc_target=source "
                                        "needs; add it, use loss.ctc_target=target, or set data.skip_invalid=true")
                    self.skipped.add("no transcript for CTC", sample.where)
                    continue
                ctc_targets.append(self.tokenizers.source.encode(sample.transcript))
            kept.append(sample)
            targets.append(target)
            sizes.append(size)
        if not kept:  # the readers reject an empty split themselves; this is every sample dropped above
            why = self.skipped.summary("samples so far") if self.skipped.total else "the split is empty"
            raise DataError(f"{self._describe(split, samples)}: no usable samples left after the checks ({why})")
        return Seq2SeqDataset(kept, targets, sizes, processors, skip_invalid=self.data_cfg.skip_invalid,
                              ctc_targets=ctc_targets if with_transcripts else None)

    def loader(self, split: str, *, shuffle: bool, max_tokens: int | None = None) -> DataLoader:
        dataset = self.splits[split]
        world, rank = world_and_rank(self.trainer)
        if max_tokens is None and split == "train":
            max_tokens = epoch_budget(dataset.sizes, self.data_cfg.max_tokens, self.data_cfg.get("min_batches_per_epoch"))
            if max_tokens != self.data_cfg.max_tokens and not getattr(self, "_budget_logged", False):
                self._budget_logged = True
                log.info("batch budget %d (data.max_tokens=%d lowered so that an epoch of %d samples has at least "
                         "data.min_batches_per_epoch=%d batches)", max_tokens, self.data_cfg.max_tokens,
                         len(dataset), self.data_cfg.min_batches_per_epoch)
        sampler = TokenBudgetBatchSampler(
            dataset.sizes, max_tokens=max_tokens or self.data_cfg.max_tokens,
            max_sentences=self.data_cfg.max_sentences, shuffle=shuffle, seed=self.seed,
            num_replicas=world, rank=rank,
        )
        workers = self.data_cfg.num_workers
        return ResumableDataLoader(  # its position in the epoch is saved in checkpoints
            dataset, batch_sampler=sampler, collate_fn=Collater(dataset.processors),
            num_workers=workers, persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)
