"""Decode a data split with a trained model and score it; shared by training's final test and `mmx-eval`."""

from __future__ import annotations

import logging
import time

import torch

from .data.datamodule import Seq2SeqDataModule
from .generation import GenerationConfig
from .metrics import Score, score_all
from .model import EncoderDecoder

log = logging.getLogger(__name__)


@torch.inference_mode()
def decode_split(model: EncoderDecoder, datamodule: Seq2SeqDataModule, split: str, gen: GenerationConfig,
                 device: str | torch.device = "cpu") -> list[str]:
    """Hypotheses for every sample of `split`, in file order."""
    model.eval()
    dataset = datamodule.splits[split]
    outputs: list[str | None] = [None] * len(dataset)
    started = last_report = time.monotonic()
    done = 0
    for batch in datamodule.loader(split, shuffle=False):
        if time.monotonic() - last_report > 30:  # a long decode says how far it is (every 30 s)
            last_report = time.monotonic()
            log.info("decoding %s: %d / %d samples (%.0f s)", split, done, len(dataset), last_report - started)
        if "inputs" not in batch:
            continue
        done += len(batch["index"])
        inputs = {name: {k: v.to(device) for k, v in feats.items()} for name, feats in batch["inputs"].items()}
        hyps = model.generate(inputs, gen, prompt=batch.get("prompt", ()))
        for index, hyp in zip(batch["index"].tolist(), hyps):
            outputs[index] = datamodule.tokenizers.target.decode(hyp[0].tokens) if hyp else ""  # none: NaN scores
    return [o if o is not None else "" for o in outputs]


def score_split(model, datamodule, split, gen, metrics, device="cpu") -> tuple[dict[str, Score], list[str]]:
    """Decode `split` and score it with each metric in `metrics` (names from mmxattn.metrics.METRICS)."""
    hyps = decode_split(model, datamodule, split, gen, device)
    refs = [s.references for s in datamodule.splits[split].samples]
    return score_all(metrics, hyps, refs), hyps
