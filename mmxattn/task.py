"""The LightningModule: teacher-forced training with label smoothing, validation loss and sacreBLEU."""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from .data.datamodule import IGNORE
from .errors import ConfigError
from .generation import GenerationConfig, generate
from .metrics import score_all
from .model import EncoderDecoder
from .tokenizer import Tokenizers

log = logging.getLogger(__name__)


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    """Linear warmup, then cosine / linear decay to min_ratio, or inverse square root."""
    if schedule not in ("cosine", "linear", "inverse_sqrt"):
        raise ConfigError(f"optim.schedule={schedule!r}; expected cosine, linear or inverse_sqrt")
    if warmup < 1:
        raise ConfigError(f"optim.warmup_steps={warmup} must be ≥ 1")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "inverse_sqrt":
            return math.sqrt(warmup / (step + 1))
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return factor


class Seq2SeqTask(L.LightningModule):
    def __init__(self, model: EncoderDecoder, tokenizers: Tokenizers, cfg: DictConfig):
        super().__init__()
        self.model, self.tokenizers, self.cfg = model, tokenizers, cfg
        self.val_generation = GenerationConfig(**cfg.eval.generation)
        self.skipped_samples = 0
        self._val_outputs: list[tuple[int, str]] = []

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch["inputs"], batch["target_in"])  # [B, T, V]
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), batch["target_out"].flatten(), ignore_index=IGNORE,
            label_smoothing=self.cfg.loss.label_smoothing,
        )
        return loss, (batch["target_out"] != IGNORE).sum()

    def training_step(self, batch, batch_idx):
        self.skipped_samples += batch["skipped"]
        if "target_in" not in batch:  # every sample of this batch was skipped as invalid
            return None
        loss, ntokens = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch["target_in"].shape[0]))
        self.log("train/tokens", ntokens.float(), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        if "target_in" not in batch:
            return
        loss, _ = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=int(batch["target_in"].shape[0]))
        if self.cfg.eval.metrics:
            # cap decoding near the references' length: an untrained model would otherwise babble to max_len
            cap = 2 * batch["target_in"].shape[1] + 10
            gen = GenerationConfig(**{**self.val_generation.__dict__, "max_len": min(self.val_generation.max_len, cap)})
            hyps = generate(self.model.decoder, self.model.encode(batch["inputs"]), gen)
            for index, hyp in zip(batch["index"].tolist(), hyps):
                self._val_outputs.append((index, self.tokenizers.target.decode(hyp[0].tokens)))

    def on_validation_epoch_end(self):
        if not self.cfg.eval.metrics:
            return
        outputs, self._val_outputs = self._val_outputs, []
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        if not outputs:
            return
        outputs.sort()
        samples = self.trainer.datamodule.splits["valid"].samples
        scores = score_all(self.cfg.eval.metrics, [hyp for _, hyp in outputs], [samples[i].references for i, _ in outputs])
        for name, score in scores.items():
            # every rank holds the gathered outputs, so every rank logs the same value
            self.log(f"val/{name}", score.value, prog_bar=True)
        self.last_scores = scores
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            shown = "".join(
                f"\n  src: {samples[i].sources.get('src', samples[i].where)}\n  ref: {samples[i].target}\n  hyp: {hyp}"
                for i, hyp in outputs[: self.cfg.eval.show_examples]
            )
            summary = "; ".join(str(s) for s in scores.values())
            log.info("epoch %d step %d: validation %s%s", self.current_epoch, self.global_step, summary, shown)

    def on_train_epoch_end(self):
        if self.skipped_samples:
            log.warning("skipped %d invalid training samples so far (data.skip_invalid=true)", self.skipped_samples)

    def configure_optimizers(self):
        opt = self.cfg.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
        )
        total = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(opt.warmup_steps, int(total), opt.schedule, opt.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # Plain containers only, so that the checkpoint loads with torch.load(weights_only=True).
        checkpoint["mmx_tokenizers"] = self.tokenizers.to_state()
        checkpoint["mmx_config"] = OmegaConf.to_container(self.cfg, resolve=True)
