"""The LightningModule: teacher-forced training with label smoothing, the validation loss, and the optimizer.

It holds the loss and the optimisation only. What a run does around them are callbacks that `train.py`
builds from their own config sections (mmxattn/training/): decoding and scoring the validation split
(validation.py), the per-micro-batch trace files (trace.py), the RNG state in checkpoints (rng.py), and
the tokenizers and run config that every checkpoint carries (metadata.py).

The gradient of one optimizer step is the mean over every target token of the global batch (all ranks,
all accumulated micro-batches), as in fairseq: each micro-batch returns its summed loss and the gradient
is divided by the global token count just before the optimizer step. So DDP over N ranks, gradient
accumulation over N micro-batches and one batch N times larger give the same update, whatever the
number of tokens in each part. Non-finite steps are skipped on the device (see guards.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig

from . import ctc
from .data.datamodule import IGNORE
from .errors import ConfigError
from .guards import NonFiniteGuard
from .schedule import WarmupSchedule
from .model import EncoderDecoder
from .training.trace import describe_train_samples

log = logging.getLogger(__name__)


class Seq2SeqTask(L.LightningModule):
    """Loss and optimisation of an EncoderDecoder, from the config sections they read.

    loss: the `loss` section (label_smoothing, ctc_weight, ctc_target). optim: the `optim` section (AdamW
    and its schedule). loss_unit: `data.max_tokens`, the size the summed loss is divided by before it is
    returned, to keep it near the size of a mean (on_before_optimizer_step undoes it). guard: the `guard`
    section (non-finite steps), None for its defaults. `mmxattn.train.build_task(cfg, model)` builds one
    from a whole run config.
    """

    def __init__(self, model: EncoderDecoder, loss: Mapping, optim: DictConfig, loss_unit: float,
                 guard: Mapping | None = None):
        super().__init__()
        self.model, self.optim_cfg = model, optim
        self.label_smoothing = float(loss["label_smoothing"])
        self.ctc_weight, self.ctc_target = ctc.settings({"loss": loss})  # it reads (and checks) loss.* of a run config
        self.skipped_samples = 0
        # no weight decay for biases, norms and embeddings; decided here, before DDP/FSDP wrap or flatten them
        self._no_decay = {name for name, p in model.named_parameters() if p.ndim < 2 or "embed" in name}
        guard = guard or {}
        self.guard = NonFiniteGuard(
            max_in_row=int(guard.get("max_nonfinite_in_row", 10)), check_every=int(guard.get("check_every_n_steps", 20)),
            describe=self._describe_train_samples,  # a bound method, not a lambda: the task stays picklable
        )
        self._loss_unit = float(loss_unit)
        self._ctc_too_short = torch.zeros((), dtype=torch.long)  # rows whose context cannot hold their CTC targets
        # (summed loss [], target tokens []) of the current training micro-batch, None when it had no targets:
        # what TraceData writes (read before backward, so a step that then fails is in the trace too)
        self.last_train_loss: tuple[torch.Tensor, torch.Tensor] | None = None
        self._reset_window()

    def _reset_window(self) -> None:
        """Sums over the micro-batches of the current optimizer step (on the device, no host sync)."""
        self._window_tokens: torch.Tensor | None = None
        self._window_bad_loss: torch.Tensor | None = None
        self._window_indices: list[torch.Tensor] = []

    def _loss(self, batch, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, target tokens): the decoder's label-smoothed cross-entropy plus `loss.ctc_weight` x the CTC
        loss of the context, summed over the batch (reduction="sum") or divided by its target tokens ("mean").

        CTC is a sum of sequence negative log-likelihoods, each itself a sum over that sequence's tokens, so it
        joins the summed cross-entropy as it is and shares its normalisation by the global token count.
        The CTC part alone is kept in `self.last_ctc` (a sum, detached) for logging.
        """
        target_out = batch["target_out"]  # [B, T]
        ntokens = (target_out != IGNORE).sum()
        with_ctc = bool(self.ctc_weight) and batch.get("ctc", True)  # a multitask batch says if its task has CTC
        if with_ctc:
            logits, ctc_logits, ctc_mask = self.model(batch["inputs"], batch["target_in"], with_ctc=True)
        else:
            logits = self.model(batch["inputs"], batch["target_in"])  # [B, T, V]
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), target_out.flatten(), ignore_index=IGNORE,
            label_smoothing=self.label_smoothing, reduction="sum",
        )
        self.last_ctc = None
        if with_ctc:
            targets, lengths = self._ctc_targets(batch)  # [B, L], [B]
            ctc_sum, too_short = ctc.ctc_loss(ctc_logits, ctc_mask, targets, lengths)
            if self.training:
                self._ctc_too_short = self._ctc_too_short.to(too_short.device) + too_short.sum()
            self.last_ctc = ctc_sum.detach()
            loss = loss + self.ctc_weight * ctc_sum
        return (loss if reduction == "sum" else loss / ntokens.clamp(min=1)), ntokens

    def _ctc_targets(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC targets [B, L] and lengths [B]: the decoder's targets without EOS, or the source transcripts
        that the Collater put in `ctc_target` (loss.ctc_target=source), padded with PAD."""
        if self.ctc_target == "target":
            return ctc.decoder_targets(batch["target_out"], IGNORE)
        if "ctc_target" not in batch:
            raise ConfigError("loss.ctc_target=source needs source transcripts in the data (a speech manifest's "
                              "src_text column); use loss.ctc_target=target, or loss.ctc_weight=0")
        return ctc.strip_targets(batch["ctc_target"], ctc.BLANK)

    def training_step(self, batch, batch_idx):
        self.skipped_samples += batch["skipped"]
        self.last_train_loss = None
        if "target_in" not in batch:  # every sample of this batch was skipped as invalid
            # Every DDP rank must run a backward pass each step: a zero loss that reaches every weight.
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            self._accumulate(zero.new_zeros((), dtype=torch.long), torch.ones((), dtype=torch.bool, device=zero.device))
            return zero
        loss_sum, ntokens = self._loss(batch, reduction="sum")
        self._accumulate(ntokens, torch.isfinite(loss_sum.detach()), batch["index"])
        mean = loss_sum.detach() / ntokens.clamp(min=1)
        self.log("train/loss", mean, prog_bar=True, batch_size=int(batch["target_in"].shape[0]))
        self.log("train/tokens", ntokens.float(), reduce_fx="sum", batch_size=1)
        if self.last_ctc is not None:
            self.log("train/ctc", self.last_ctc / ntokens.clamp(min=1), batch_size=int(batch["target_in"].shape[0]))
        self.last_train_loss = (loss_sum.detach(), ntokens)
        return loss_sum / self._loss_unit

    def _accumulate(self, ntokens: torch.Tensor, finite: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        self._window_tokens = ntokens if self._window_tokens is None else self._window_tokens + ntokens
        bad = ~finite
        self._window_bad_loss = bad if self._window_bad_loss is None else self._window_bad_loss | bad
        if indices is not None:
            self._window_indices.append(indices)

    def on_before_optimizer_step(self, optimizer):
        """Normalize the gradient by the global token count; flag (and skip) a non-finite step; no host sync."""
        if self._window_tokens is None:  # nothing was accumulated (cannot happen in automatic optimization)
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads)) if grads else self._window_bad_loss
        stats = torch.stack([self._window_tokens.float(), self._window_bad_loss.float(), grad_bad.float()])
        world = self.trainer.world_size
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # global token count; a step is bad everywhere if it is bad anywhere
        tokens, bad = stats[0], stats[1:].sum() > 0
        # The returned losses were sums / loss_unit; Lightning divided them by accumulate_grad_batches and
        # DDP/FSDP averaged over ranks: undo both and divide by the global number of target tokens.
        scale = world * self.trainer.accumulate_grad_batches * self._loss_unit / tokens.clamp(min=1)
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            # fused AdamW skips the whole update on the device when found_inf is 1 (what a GradScaler uses);
            # with fp16 the GradScaler sets found_inf itself (a non-finite loss gives non-finite gradients)
            optimizer.found_inf = (bad | (tokens == 0)).float()
        self.guard.record(self.global_step, self.current_epoch, self.trainer.fit_loop.epoch_loop.batch_idx, bad,
                          self._window_indices)
        self._reset_window()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip here rather than through Lightning's precision plugin, which refuses fused optimizers under
        mixed precision (they could unscale inside step(); Lightning has unscaled the gradients already)."""
        from lightning.pytorch.strategies import FSDPStrategy

        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        elif isinstance(self.trainer.strategy, FSDPStrategy):
            # gradients are sharded: only the root FSDP module can compute the global norm
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def _describe_train_samples(self, indices: list[int]) -> str:
        # the trainer is attached after __init__; without it (or a datamodule) the bare indices are named
        return describe_train_samples(self._trainer, indices)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.guard.total:
            self.log("train/skipped_steps", float(self.guard.total), batch_size=1)

    def on_train_end(self):
        self.guard.check()
        if self.guard.total:
            log.warning("%d optimizer steps were skipped for a non-finite loss or gradient", self.guard.total)

    def validation_step(self, batch, batch_idx):
        """The validation loss; decoding and metrics are the ValidationDecoding callback's."""
        if "target_in" not in batch:
            return
        loss, ntokens = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=int(batch["target_in"].shape[0]))
        # synchronised across ranks, so every rank must log it from every batch: in a multitask run only some
        # batches have CTC (batch["ctc"]), and val/ctc is left out there (train/ctc, per step, still shows it)
        if self.last_ctc is not None and "ctc" not in batch:
            self.log("val/ctc", self.last_ctc / ntokens.clamp(min=1), sync_dist=True,
                     batch_size=int(batch["target_in"].shape[0]))

    def on_train_epoch_end(self):
        if self.skipped_samples:
            log.warning("skipped %d invalid training samples so far (data.skip_invalid=true)", self.skipped_samples)
        too_short = int(self._ctc_too_short)  # one host sync per epoch
        if too_short:
            log.warning("CTC: %d training samples this epoch had fewer context positions than their CTC targets need "
                        "(one per token, plus a blank between repeats) and added no CTC loss; use shorter units "
                        "(a smaller tokenizer.vocab_size) or less subsampling", too_short)
            self._ctc_too_short.zero_()

    def configure_optimizers(self):
        opt = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
                    name = name.replace(wrapper, "")
                (no_decay if name in self._no_decay else decay).append(p)
        # fused: one kernel for all parameters, and it can skip a non-finite step on the device (found_inf)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, fused=True,
        )
        self.schedule = WarmupSchedule(schedule=opt.schedule, min_ratio=opt.min_lr_ratio,
                                       warmup_steps=opt.warmup_steps, warmup_fraction=opt.get("warmup_fraction"))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)  # bound in on_train_start
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _bind_schedule(self) -> None:
        """Give the schedule the run's length and set the learning rate of the coming step.

        Here rather than in configure_optimizers: asking for the length there would make Lightning build
        the training loader before it restores a checkpoint, and the loader would then start the epoch from
        its first batch instead of resuming. The length is not saved in checkpoints (LambdaLR keeps its
        step, not the function): a resumed run asks its own trainer. Resumed with the same limits
        (preemption, SIGTERM, max_time) that is the same length. Continued with another max_steps /
        max_epochs, the decay follows the new plan from the resume on, on purpose: "train to M steps" then
        means what a run started with M means from that step, rather than staying at the old plan's final
        LR for all the added steps. For cosine / linear the LR then jumps at the resume step, so such a
        continuation equals no single uninterrupted run; inverse_sqrt does not depend on the length.
        """
        self.schedule.bind(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler  # the LambdaLR of configure_optimizers, at its current step
            for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base_lr * self.schedule(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_save_checkpoint(self, checkpoint):
        # plain ints, so that the checkpoint loads with torch.load(weights_only=True)
        checkpoint["mmx_guard"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if "mmx_guard" in checkpoint:
            self.guard.load_state_dict(checkpoint["mmx_guard"])

    def on_train_start(self):
        self._bind_schedule()
