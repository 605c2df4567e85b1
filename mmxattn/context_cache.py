"""Frozen encoders compute once: their contexts cached on disk, read instead of running the encoder.

    encoder.cache=DIR   (encoders.<source>.cache for a model of several sources)

An encoder whose every weight is frozen (image_timm with freeze=all, ssl_speech with train_layers=0) gives
each sample the same context in every epoch and every run that shares its weights and settings. Before
training, `prepare_context_caches` encodes every sample of the prepared splits that is not in the cache yet
(in batches, with progress in the log) and writes its context [S, D] to DIR/<encoder key>/<sample key>.pt;
the source's processor is then replaced by a `CachedContextProcessor`, which loads those files in the
DataLoader workers, and the model skips the encoder for batches that carry a `CONTEXT` (model.py).

Never silently stale: the encoder key hashes the encoder's weights (every tensor's bytes) and its whole
config (model, preprocessing, sizes), so other weights or settings use another folder; the sample key hashes
the raw input and, for a file, its size and modification time, so an edited file is encoded again. The
exported model keeps the encoder itself: inference on new inputs runs it as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from omegaconf import OmegaConf

from . import registry
from .errors import ConfigError
from .data.guess import file_of
from .sources import CONTEXT, encoder_configs

log = logging.getLogger(__name__)


def encoder_key(encoder: torch.nn.Module, enc_cfg: Mapping[str, Any]) -> str:
    """A hash of everything that changes the encoder's output: its weights and its config (minus `cache`)."""
    digest = hashlib.sha256()
    config = OmegaConf.to_container(enc_cfg, resolve=True) if OmegaConf.is_config(enc_cfg) else dict(enc_cfg)
    config.pop("cache", None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d too
    return digest.hexdigest()[:20]


def sample_key(raw: Any) -> str:
    """A hash of a raw input; for a file also its size and modification time (an edited file is new)."""
    text = str(raw)
    try:
        stat = Path(file_of(text)).stat()
        text += f"|{stat.st_size}|{stat.st_mtime_ns}"
    except (OSError, ValueError):
        pass  # not a file (a text source): the text alone
    return hashlib.sha1(text.encode()).hexdigest()


class CachedContextProcessor(registry.Processor):
    """raw -> the cached context [S, D] of a frozen encoder; collate pads them into {CONTEXT, mask}."""

    def __init__(self, folder: Path, inner: registry.Processor):
        self.folder, self.inner = folder, inner
        self.length_unit = getattr(inner, "length_unit", "positions")
        self.unit_seconds = getattr(inner, "unit_seconds", None)

    def path(self, raw: Any) -> Path:
        return self.folder / f"{sample_key(raw)}.pt"

    def __call__(self, raw: Any) -> torch.Tensor:
        return torch.load(self.path(raw), weights_only=True)  # [S, D]

    def length(self, raw: Any) -> int:
        return self.inner.length(raw)  # batching is unchanged by the cache

    def describe_context(self, raw: Any, n_positions: int):
        return self.inner.describe_context(raw, n_positions)

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([item.shape[0] for item in items])
        states = items[0].new_zeros(len(items), int(lengths.max()), items[0].shape[1])  # [B, S, D]
        for row, item in enumerate(items):
            states[row, : item.shape[0]] = item
        return {CONTEXT: states, "mask": torch.arange(states.shape[1])[None] < lengths[:, None]}


def _frozen(encoder: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in encoder.parameters())


@torch.no_grad()
def _fill(folder: Path, encoder: torch.nn.Module, processor: registry.Processor, raws: list, name: str,
          batch_size: int = 32, device: torch.device | str = "cpu") -> int:
    """Encode and write every raw input of `raws` not in `folder` yet; the number written."""
    keys = {raw: sample_key(raw) for raw in raws}  # one stat per file
    missing = [raw for raw, key in keys.items() if not (folder / f"{key}.pt").is_file()]
    if not missing:
        return 0
    started, last_report = time.monotonic(), time.monotonic()
    was_training = encoder.training
    encoder.eval()
    try:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = {k: v.to(device) for k, v in processor.collate([processor(r) for r in chunk]).items()}
            context = encoder(batch)
            for row, raw in enumerate(chunk):
                states = context.states[row, context.mask[row]].float().cpu().clone()  # [S, D] real positions
                tmp = folder / f".{keys[raw]}.{os.getpid()}.tmp"
                torch.save(states, tmp)
                os.replace(tmp, folder / f"{keys[raw]}.pt")  # atomic: a killed run leaves no half file
            if time.monotonic() - last_report > 10 or start + batch_size >= len(missing):
                last_report = time.monotonic()
                done = min(start + batch_size, len(missing))
                log.info("context cache of source '%s': %d / %d samples encoded (%.0f s)", name, done, len(missing),
                         time.monotonic() - started)
    finally:
        encoder.train(was_training)
    return len(missing)


def prepare_context_caches(model, datamodule, cfg, device: torch.device | str = "cpu") -> dict[str, int]:
    """Fill the caches of the sources whose encoder config sets `cache`, and read them from now on:
    {source: samples encoded now}. Splits prepared later (the test split) call it again."""
    written: dict[str, int] = {}
    for source, enc_cfg in encoder_configs(cfg).items():
        if not enc_cfg.get("cache"):
            continue
        key = "encoder.cache" if source == "src" and cfg.get("encoder") else f"encoders.{source}.cache"
        encoder = model.encoders[source]
        if not _frozen(encoder):
            raise ConfigError(f"{key}={enc_cfg.cache}: the {enc_cfg.name} encoder of source '{source}' trains (some "
                              "weights are not frozen), so its contexts change every step and cannot be cached; "
                              "freeze it (image_timm: encoder.freeze=all and positions/norm false; ssl_speech: "
                              f"train_layers=0) or set {key}=null")
        if enc_cfg.get("augment"):
            raise ConfigError(f"{key}={enc_cfg.cache} with encoder augmentation on: a cached context is the same every "
                              "epoch, so augmentation would be silently lost; turn it off or the cache")
        folder = Path(str(enc_cfg.cache)).expanduser() / encoder_key(encoder, enc_cfg)
        folder.mkdir(parents=True, exist_ok=True)
        eval_processor = registry.build_processor(enc_cfg["name"], enc_cfg, tokenizer=datamodule.tokenizers, train=False)
        written[source] = 0
        for dataset in _datasets(datamodule):
            if source not in dataset.processors or isinstance(dataset.processors[source], CachedContextProcessor):
                continue
            raws = [s.sources[source] for s in dataset.samples if s.sources.get(source) is not None]
            home = next(encoder.parameters()).device  # where the rest of the model is
            written[source] += _fill(folder, encoder.to(device), eval_processor, raws, source, device=device)
            encoder.to(home)
            # training reads the same contexts: a cached source has no training-time augmentation
            dataset.processors[source] = CachedContextProcessor(folder, dataset.processors[source])
        log.info("context cache of source '%s' in %s: %d samples encoded now, the rest read from disk", source,
                 folder, written[source])
    return written


def _datasets(datamodule):
    """Every prepared dataset of the data module (a multitask split holds one per task)."""
    for split in datamodule.splits.values():
        yield from (split.datasets.values() if hasattr(split, "datasets") else [split])
