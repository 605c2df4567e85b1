"""Validation metrics: decode each validation batch, score the split with `eval.metrics`, log `val/<metric>`.

The task logs the validation loss (val/loss); this callback adds the metrics of decoded outputs (BLEU,
CIDEr, WER, ...), which choose the best checkpoint (`checkpoint.monitor`, default val/<first metric>) and
drive early stopping. It logs through `pl_module.log`, so the values reach `trainer.callback_metrics`
like the task's own.

When they are read (Lightning 2.6, evaluation loop): every callback's `on_validation_epoch_end`, then the
module's, then the logger connector collects what they logged into `callback_metrics`; only after that
does `on_validation_end` run, where ModelCheckpoint and EarlyStopping read the monitor. So the metrics
logged here are seen by them whatever the order of the callbacks list (Lightning also moves checkpoint
callbacks to its end); train.py still lists this callback before them, in the order they depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from ..generation import GenerationConfig
from ..metrics import LOWER_IS_BETTER, Score, check_metric_names, score_all
from ..tokenizer import Tokenizer

log = logging.getLogger(__name__)


class ValidationDecoding(Callback):
    """Decodes the validation split with `generation` and scores it with `metrics` after each validation.

    metrics: names in mmxattn.metrics.METRICS (`eval.metrics`); empty = no decoding at all.
    generation: the decoding settings (`eval.generation`: fast, greedy by default).
    tokenizer: the target tokenizer, to turn hypotheses into text.
    show_examples: how many (source, reference, hypothesis) triples rank 0 logs after each validation.

    tasks: for a multitask run, {task: its metrics}: each task's samples are scored with its own metrics and
        logged as val/<task>/<metric>, with their mean as val/score (error rates as 100 - rate), which the
        checkpoint monitor of a multitask run reads.

    `last_scores` holds the scores of the latest validation ({} before the first, or without metrics).
    """

    def __init__(self, metrics: Sequence[str], generation: GenerationConfig, tokenizer: Tokenizer,
                 show_examples: int = 0, tasks: Mapping[str, Sequence[str]] | None = None):
        check_metric_names(metrics)  # at construction: a typo stops the run before training, not after an epoch
        self.metrics, self.generation, self.tokenizer = list(metrics), generation, tokenizer
        self.tasks = {t: list(m) for t, m in tasks.items()} if tasks else None
        if self.tasks:
            self.metrics = list(dict.fromkeys(m for ms in self.tasks.values() for m in ms))
        self.show_examples = int(show_examples)
        self.last_scores: dict[str, Score] = {}
        self._outputs: list[tuple[int, str]] = []  # (validation sample index, hypothesis text) of this rank

    @classmethod
    def from_config(cls, eval_cfg: Mapping, tokenizer: Tokenizer,
                    tasks: Mapping[str, Sequence[str]] | None = None) -> ValidationDecoding:
        """From the `eval` section of a run config (metrics, generation, show_examples)."""
        return cls(eval_cfg["metrics"], GenerationConfig(**eval_cfg["generation"]), tokenizer,
                   eval_cfg.get("show_examples", 0), tasks)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._outputs = []  # nothing left over from a validation that an exception cut short

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.metrics or "target_in" not in batch:  # no metrics, or every sample was skipped as invalid
            return
        # Cap decoding near the references' length: an untrained model would otherwise babble to max_len.
        # target_in is [B, T] (BOS + the longest reference in the batch, padded).
        cap = 2 * batch["target_in"].shape[1] + 10
        gen = GenerationConfig(**{**self.generation.__dict__, "max_len": min(self.generation.max_len, cap)})
        # per sample, its n-best list; the best first
        hyps = pl_module.model.generate(batch["inputs"], gen, prompt=batch.get("prompt", ()))
        for index, hyp in zip(batch["index"].tolist(), hyps):
            self._outputs.append((index, self.tokenizer.decode(hyp[0].tokens)))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not self.metrics:
            return
        outputs, self._outputs = self._outputs, []
        if dist.is_available() and dist.is_initialized():
            # each rank decoded its shard; every rank scores the whole split (corpus metrics do not average)
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        if not outputs:
            return
        outputs.sort()  # by sample index: the same order on every rank and whatever the sharding
        dataset = trainer.datamodule.splits["valid"]
        samples = dataset.samples
        if self.tasks:
            scores = score_tasks(self.tasks, outputs, samples, dataset.task_of)
            pl_module.log("val/score", mean_score(self.tasks, scores), prog_bar=True)
        else:
            scores = score_all(self.metrics, [hyp for _, hyp in outputs], [samples[i].references for i, _ in outputs])
        for name, score in scores.items():
            # every rank holds the gathered outputs, so every rank logs the same value
            pl_module.log(f"val/{name}", score.value, prog_bar=not self.tasks)
        self.last_scores = scores
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._show(trainer, samples, outputs, scores)

    def _show(self, trainer, samples, outputs: list[tuple[int, str]], scores: dict[str, Score]) -> None:
        shown = "".join(
            f"\n  src: {samples[i].sources.get('src', samples[i].where)}\n  ref: {samples[i].target}\n  hyp: {hyp}"
            for i, hyp in outputs[: self.show_examples]
        )
        summary = "; ".join(str(s) for s in scores.values())
        log.info("epoch %d step %d: validation %s%s", trainer.current_epoch, trainer.global_step, summary, shown)


def score_tasks(tasks: Mapping[str, Sequence[str]], outputs: Sequence[tuple[int, str]], samples,
                task_of) -> dict[str, Score]:
    """{"<task>/<metric>": score} of (sample index, hypothesis) pairs, each task scored on its own samples."""
    scores: dict[str, Score] = {}
    for task, metrics in tasks.items():
        mine = [(i, hyp) for i, hyp in outputs if task_of(i) == task]
        if mine:
            for name, score in score_all(metrics, [h for _, h in mine], [samples[i].references for i, _ in mine]).items():
                scores[f"{task}/{name}"] = score
    return scores


def mean_score(tasks: Mapping[str, Sequence[str]], scores: Mapping[str, Score]) -> float:
    """The mean over tasks of each task's first metric, higher = better (an error rate counts as 100 - rate)."""
    values = []
    for task, metrics in tasks.items():
        score = scores.get(f"{task}/{metrics[0]}")
        if score is not None:
            values.append(100.0 - score.value if metrics[0] in LOWER_IS_BETTER else score.value)
    return sum(values) / len(values) if values else 0.0
