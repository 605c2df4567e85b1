"""Several tasks in one run and one model: each with its own data, encoder(s) and prompt, one shared decoder.

    tasks:
      translate: {data: {format: parallel_text, ...}, sources: {src: text}, prompt: "<translate>", metrics: [bleu]}
      speech:    {data: {format: speech_tsv, ...},    sources: {src: speech}, prompt: "<speech>", metrics: [bleu]}
    encoders: {text: {name: text, ...}, speech: {name: audio, ...}}   # the model's encoders, shared by name
    mix: {schedule: temperature, temperature: 2.0}

A task's samples come from its own `data` section, read by its format's reader exactly as a single-task
run reads them; `sources` renames the reader's source names (`src`) to the model's encoders, so two tasks
that name the same encoder share it. Targets are prefixed with the task's prompt tags (`Collater` puts
them after BOS and leaves them out of the loss), so one model can be asked for any of its tasks.

The flow of one training batch: `TaskMixBatchSampler` picks a task's batch of global indices (the tasks'
datasets concatenated) -> `MultiTaskDataset` loads its samples from that task's `Seq2SeqDataset` ->
`MultiTaskCollater` collates them with that task's processors and prompt and names the task. Every batch
comes from one task, so an encoder that task does not use gets no gradient in that step (DDP runs with
`find_unused_parameters`, set by train.py).

Each task batches with its own budget (its data section's max_tokens, max_sentences, min_batches_per_epoch:
a text token and a 10 ms audio frame are different units) and reads with its own settings (root, splits,
max_len, skip_invalid, the format's keys). `data.num_workers` of the top-level `data` section is the one
loader's; `tasks.<name>.train_fraction` trains on a seeded random share of a task's training split (for
low-resource experiments).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
from torch.utils.data import Dataset

from .. import registry
from ..ctc import settings as ctc_settings
from ..errors import ConfigError, PluginError
from ..metrics import check_metric_names
from ..sources import encoder_configs
from ..tokenizer import Tokenizers
from .batching import ERROR, ResumableDataLoader, TokenBudgetBatchSampler, epoch_budget, world_and_rank
from .datamodule import Collater, Seq2SeqDataModule, Seq2SeqDataset
from .samples import Sample, SkipReport

log = logging.getLogger(__name__)

SCHEDULES = ("batches", "proportional", "temperature", "weights")
TAG = re.compile(r"^\S+$")


@dataclass
class TaskSpec:
    """One task of a multitask run, from `tasks.<name>`."""

    name: str
    data: Any  # its `data` section (format, root, splits, batch budget, ...)
    sources: dict[str, str]  # the reader's source name -> the model's encoder (a key of `encoders`)
    prompt: list[str]  # tags the decoder reads before the target
    metrics: list[str]
    weight: float | None
    train_fraction: float = 1.0
    ctc: bool = False  # its batches add loss.ctc_weight x CTC (speech tasks; a text or image context is too short)


def is_multitask(cfg) -> bool:
    return bool(cfg.get("tasks"))


def task_specs(cfg) -> dict[str, TaskSpec]:
    """The run's tasks, checked: every problem names its key under `tasks`."""
    tasks = cfg.get("tasks")
    if not tasks:
        raise ConfigError("`tasks` is empty: a multitask run needs at least one task (tasks.<name>: {data: ...})")
    encoders = encoder_configs(cfg)
    specs: dict[str, TaskSpec] = {}
    tags_seen: dict[tuple[str, ...], str] = {}
    for name, task in tasks.items():
        key = f"tasks.{name}"
        if task is None or not hasattr(task, "get") or not task.get("data"):
            raise ConfigError(f"{key} is empty: a task needs at least `data` (its data section: format, root, "
                              "splits) and usually `sources`, `prompt` and `metrics`")
        data = task["data"]
        try:
            registry.get_data_format(data.get("format"))
        except PluginError as e:
            raise ConfigError(f"{key}.data.format={data.get('format')}: {e}") from e
        sources = dict(task.get("sources") or {"src": next(iter(encoders))})
        for local, encoder in sources.items():
            if encoder not in encoders:
                raise ConfigError(f"{key}.sources.{local}={encoder}: the model has no encoder '{encoder}' (its "
                                  f"encoders: {', '.join(encoders)}); name one of them, or add encoders.{encoder}")
        prompt = task.get("prompt") or []
        prompt = prompt.split() if isinstance(prompt, str) else [str(t) for t in prompt]
        if any(not TAG.match(t) for t in prompt):
            raise ConfigError(f"{key}.prompt={prompt}: each tag must be one word without spaces, e.g. <translate>")
        if tuple(prompt) in tags_seen and len(tasks) > 1:
            raise ConfigError(f"{key}.prompt={prompt or '(none)'} is also the prompt of tasks.{tags_seen[tuple(prompt)]}; "
                              "each task needs a prompt of its own, or the model cannot tell which one is asked")
        tags_seen[tuple(prompt)] = name
        metrics = list(task.get("metrics") or cfg.eval.metrics)
        try:
            check_metric_names(metrics)
        except ConfigError as e:
            raise ConfigError(f"{key}.metrics: {e}") from e
        weight = task.get("weight")
        if weight is not None and not (isinstance(weight, (int, float)) and weight > 0):
            raise ConfigError(f"{key}.weight={weight!r} must be a positive number (mix.schedule=weights uses it)")
        fraction = task.get("train_fraction", 1.0)
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ConfigError(f"{key}.train_fraction={fraction!r} must be in (0, 1] (1 = the whole training split)")
        specs[name] = TaskSpec(name, data, sources, prompt, metrics, None if weight is None else float(weight),
                               float(fraction), bool(task.get("ctc", False)))
    if ctc_settings(cfg)[0] and not any(spec.ctc for spec in specs.values()):
        raise ConfigError(f"loss.ctc_weight={ctc_settings(cfg)[0]} but no task has `ctc: true`; in a multitask run CTC "
                          "applies to the tasks that set it (tasks.<name>.ctc=true), or set loss.ctc_weight=0")
    return specs


def mix_probabilities(sizes: Mapping[str, int], mix, weights: Mapping[str, float | None],
                      batches: Mapping[str, int] | None = None) -> dict[str, float]:
    """Each task's share of an epoch's batches: its own number of batches (`batches`: an epoch is one pass
    over every task, as if each trained alone), proportional to its samples (n), to n^(1/T) with temperature
    sampling (T = 1 is proportional, larger T flattens towards uniform), or fixed weights."""
    schedule = (mix or {}).get("schedule", "batches")
    if schedule == "batches":
        raw = {t: float((batches or sizes)[t]) for t in sizes}
    elif schedule == "proportional":
        raw = {t: float(n) for t, n in sizes.items()}
    elif schedule == "temperature":
        temperature = float((mix or {}).get("temperature", 1.0))
        if temperature <= 0:
            raise ConfigError(f"mix.temperature={temperature} must be positive (1 = proportional, 5 = flatter)")
        raw = {t: float(n) ** (1.0 / temperature) for t, n in sizes.items()}
    elif schedule == "weights":
        missing = [t for t, w in weights.items() if w is None]
        if missing:
            raise ConfigError(f"mix.schedule=weights needs tasks.<name>.weight for every task; missing for "
                              f"{', '.join(missing)}")
        raw = {t: float(weights[t]) for t in sizes}
    else:
        raise ConfigError(f"mix.schedule={schedule!r}; expected one of {', '.join(SCHEDULES)}")
    total = sum(raw.values())
    return {t: r / total for t, r in raw.items()}


def exact_counts(probabilities: Mapping[str, float], total: int) -> dict[str, int]:
    """`total` batches shared out by `probabilities` exactly (largest remainder; ties in task order)."""
    ideal = {t: p * total for t, p in probabilities.items()}
    counts = {t: math.floor(x) for t, x in ideal.items()}
    order = sorted(ideal, key=lambda t: -(ideal[t] - counts[t]))
    for t in order[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


class TaskMixBatchSampler(TokenBudgetBatchSampler):
    """Token-budget batches of several tasks, each batch from one task, over their concatenated indices.

    Each epoch holds as many batches as the tasks have together, shared out by `probabilities` exactly
    (`exact_counts`): a task with more than its own batches repeats its data (a new shuffle per pass), one
    with fewer takes a different part of it each epoch. The mix is seeded by (seed, epoch), the same on every
    rank; ranks then take every `num_replicas`-th batch and resume mid-epoch as the single-task sampler
    does (this class only replaces how an epoch's batches are made). probabilities=None (evaluation): every
    batch of every task once, in task order.
    """

    def __init__(self, task_sizes: Sequence[Sequence[int]], *, budgets: Sequence[tuple[int, int | None]],
                 probabilities: Sequence[float] | None = None, **kwargs):
        """budgets: each task's (max_tokens, max_sentences)."""
        super().__init__([s for sizes in task_sizes for s in sizes], max_tokens=max(b[0] for b in budgets), **kwargs)
        self.task_sizes = [np.asarray(sizes, dtype=np.int64) for sizes in task_sizes]
        self.budgets = list(budgets)
        self.offsets = np.cumsum([0] + [len(s) for s in self.task_sizes])[:-1].tolist()
        self.probabilities = None if probabilities is None else list(probabilities)

    def _task_batches(self, task: int, epoch: int) -> list[list[int]]:
        max_tokens, max_sentences = self.budgets[task]
        sampler = TokenBudgetBatchSampler(self.task_sizes[task], max_tokens=max_tokens, max_sentences=max_sentences,
                                          shuffle=self.shuffle, seed=self.seed * 1_000_003 + task)
        sampler.set_epoch(epoch)
        return [[i + self.offsets[task] for i in batch] for batch in sampler.batches()]

    def _all_batches(self) -> list[list[int]]:
        natural = [self._task_batches(t, self.epoch) for t in range(len(self.task_sizes))]
        if self.probabilities is None:
            batches = [b for task in natural for b in task]
        else:
            total = sum(len(n) for n in natural)
            counts = exact_counts(dict(enumerate(self.probabilities)), total)
            batches = []
            for task, count in counts.items():
                # take each pass's batches in turn; pass j of epoch e is a shuffle of its own (seeded e, j)
                rounds = -(-count // len(natural[task])) if natural[task] else 0
                drawn = [b for j in range(rounds)
                         for b in (natural[task] if j == 0 else self._task_batches(task, self.epoch * 1009 + j))]
                # fewer than its batches: a different slice each epoch, so the whole task is seen over epochs
                start = (self.epoch * count) % len(natural[task]) if count < len(natural[task]) else 0
                batches += (drawn[start:] + drawn[:start])[:count]
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(len(batches))
                batches = [batches[i] for i in order]
        return self._even_out(batches)


class MultiTaskDataset(Dataset):
    """The tasks' datasets of one split, concatenated: index i is sample i - offset of task task_of(i)."""

    def __init__(self, datasets: Mapping[str, Seq2SeqDataset]):
        self.datasets = dict(datasets)
        self.names = list(self.datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets.values()]).tolist()
        self.samples: list[Sample] = [s for d in self.datasets.values() for s in d.samples]
        self.sizes: list[int] = [s for d in self.datasets.values() for s in d.sizes]

    def __len__(self) -> int:
        return self.offsets[-1]

    def task_of(self, index: int) -> str:
        return self.names[int(np.searchsorted(self.offsets, index, side="right")) - 1]

    def __getitems__(self, indices: Sequence[int]) -> list[dict | None]:
        task = self.task_of(indices[0])
        start = self.offsets[self.names.index(task)]
        items = self.datasets[task].__getitems__([i - start for i in indices])
        for item in items:
            if item is not None and ERROR not in item:
                item["index"], item["task"] = item["index"] + start, task
        return items

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]


class MultiTaskCollater:
    """Collates one task's items with that task's processors and prompt; the batch names its task."""

    def __init__(self, collaters: Mapping[str, Collater], ctc: Mapping[str, bool]):
        self.collaters, self.ctc = dict(collaters), dict(ctc)

    def __call__(self, items: Sequence[dict | None]) -> dict[str, Any]:
        first = next((item for item in items if item is not None), None)
        if first is None or ERROR in first:
            return {"skipped": len(items)} if first is None else {ERROR: first[ERROR]}
        batch = self.collaters[first["task"]](items)
        batch["task"], batch["ctc"] = first["task"], self.ctc[first["task"]]
        return batch


class MultiTaskDataModule(L.LightningDataModule):
    """The data of every task, one tokenizer over all of them, and batches mixed by `mix` (see the module
    docstring). The same interface as `Seq2SeqDataModule`: prepare(splits), splits, tokenizers, loader."""

    def __init__(self, tasks: Mapping[str, TaskSpec], encoders: Mapping[str, Any], tokenizer, *, mix=None,
                 num_workers: int = 0, seed: int = 0, ctc_on_transcripts: bool = False,
                 tokenizers: Tokenizers | None = None):
        super().__init__()
        self.tasks, self.encoders, self.tokenizer_cfg = dict(tasks), dict(encoders), tokenizer
        self.mix, self.num_workers, self.seed = mix, int(num_workers), seed
        self.tokenizers = tokenizers
        self.skipped = SkipReport()
        self.splits: dict[str, MultiTaskDataset] = {}
        self.modules = {
            name: Seq2SeqDataModule(task.data, {g: self.encoders[g] for g in dict.fromkeys(task.sources.values())},
                                    tokenizer, seed=seed, ctc_on_transcripts=ctc_on_transcripts, tokenizers=tokenizers)
            for name, task in self.tasks.items()
        }
        for module in self.modules.values():
            module.skipped = self.skipped  # one count for the run, as a single-task run reports it
        self.prompts: dict[str, list[int]] = {}

    @classmethod
    def from_config(cls, cfg, tokenizers: Tokenizers | None = None,
                    tasks: Sequence[str] | None = None) -> "MultiTaskDataModule":
        """`tasks`: only these (evaluating some tasks of a model); None = every task of the config."""
        weight, target = ctc_settings(cfg)
        specs = task_specs(cfg)
        if tasks is not None:
            specs = {name: specs[name] for name in tasks}
        return cls(specs, encoder_configs(cfg), cfg.tokenizer, mix=cfg.get("mix"),
                   num_workers=cfg.data.get("num_workers", 0), seed=cfg.seed,
                   ctc_on_transcripts=bool(weight) and target == "source", tokenizers=tokenizers)

    def read(self, task: str, split: str) -> list[Sample]:
        """A task's samples, their sources renamed to the model's encoders (`tasks.<task>.sources`)."""
        spec = self.tasks[task]
        if not spec.data.get(split):
            raise ConfigError(f"tasks.{task}.data.{split} is not set: every task needs a {split} split")
        samples = self.modules[task].read(split)
        if split == "train" and spec.train_fraction < 1:
            keep = max(1, round(spec.train_fraction * len(samples)))
            chosen = np.random.default_rng([self.seed, 31]).choice(len(samples), keep, replace=False)
            samples = [samples[i] for i in sorted(chosen.tolist())]
        return [replace(s, sources={spec.sources[k]: v for k, v in s.sources.items() if k in spec.sources})
                for s in samples]

    def prepare(self, splits: Sequence[str] = ("train", "valid")) -> None:
        samples = {(task, split): self.read(task, split) for split in splits for task in self.tasks}
        if self.tokenizers is None:
            if "train" not in splits:
                raise ConfigError("tokenizers are built from the training split: prepare it first")
            self.tokenizers = self._build_tokenizers({t: samples[t, "train"] for t in self.tasks})
        self._check_prompts({t: samples[t, "train"] for t in self.tasks} if "train" in splits else {})
        for name, module in self.modules.items():
            module.tokenizers = self.tokenizers
        for split in splits:
            datasets = {}
            for name, module in self.modules.items():
                dataset = module.dataset(split, samples[name, split])
                k = len(self.prompts[name])  # the prompt lengthens every target by k tokens
                dataset.sizes = [max(size, len(t) + 1 + k) for size, t in zip(dataset.sizes, dataset.targets)]
                datasets[name] = dataset
            self.splits[split] = MultiTaskDataset(datasets)
        if self.skipped.total:
            log.warning("data: %s", self.skipped.summary("samples"))

    def _build_tokenizers(self, train: Mapping[str, list[Sample]]) -> Tokenizers:
        """One SentencePiece model over every task's targets (and text sources), the prompt tags as symbols."""
        text_encoders = {g for g, c in self.encoders.items() if registry.get_plugin(c["name"]).input_kind == "text"}
        sources = [v for samples in train.values() for s in samples for g, v in s.sources.items()
                   if g in text_encoders and v is not None]
        targets = [s.target for samples in train.values() for s in samples]
        tags = list(dict.fromkeys(t for task in self.tasks.values() for t in task.prompt))
        where = "the training splits of tasks " + ", ".join(self.tasks)
        return Tokenizers.build(self.tokenizer_cfg, sources if text_encoders else None, targets, where=where,
                                symbols=tags)

    def _check_prompts(self, train: Mapping[str, list[Sample]]) -> None:
        """Prompt tags are pieces of their own that no training text contains (else the model could not
        tell an asked task from text that happens to look like its tag)."""
        for name, task in self.tasks.items():
            ids = []
            for tag in task.prompt:
                for other, samples in train.items():
                    found = next((s for s in samples if tag in s.target.split()), None)
                    if found is not None:
                        raise ConfigError(f"tasks.{name}.prompt: the tag {tag} occurs in the training text of task "
                                          f"{other} ({found.where}); choose a tag that no text contains, e.g. "
                                          f"<{name}>")
                token = self.tokenizers.target.symbol_id(tag)
                if token is None:
                    raise ConfigError(f"tasks.{name}.prompt: the tag {tag} is not a piece of the target tokenizer "
                                      "(tokenizer.model was given and lacks it); train the tokenizer with the tags as "
                                      "user-defined symbols, or set tokenizer.model=null to train one here")
                ids.append(token)
            self.prompts[name] = ids

    def loader(self, split: str, *, shuffle: bool, max_tokens: int | None = None) -> ResumableDataLoader:
        """max_tokens: one budget for every task (evaluation may raise it); None = each task's own."""
        dataset = self.splits[split]
        world, rank = world_and_rank(self.trainer)
        budgets = []
        for name, data in ((t, self.tasks[t].data) for t in dataset.names):
            own = epoch_budget(dataset.datasets[name].sizes, data.max_tokens, data.get("min_batches_per_epoch")) \
                if split == "train" else data.max_tokens
            budgets.append((max_tokens or own, data.get("max_sentences")))
        probabilities = None
        if split == "train":
            natural = {t: len(TokenBudgetBatchSampler(d.sizes, max_tokens=b[0], max_sentences=b[1], shuffle=False))
                       for (t, d), b in zip(dataset.datasets.items(), budgets)}
            shares = mix_probabilities({t: len(d) for t, d in dataset.datasets.items()}, self.mix,
                                       {t: spec.weight for t, spec in self.tasks.items()}, natural)
            probabilities = [shares[t] for t in dataset.names]
        sampler = TaskMixBatchSampler([d.sizes for d in dataset.datasets.values()], budgets=budgets,
                                      probabilities=probabilities, shuffle=shuffle, seed=self.seed,
                                      num_replicas=world, rank=rank)
        collater = MultiTaskCollater({t: Collater(d.processors, self.prompts[t]) for t, d in dataset.datasets.items()},
                                     {t: self.tasks[t].ctc for t in dataset.names})
        return ResumableDataLoader(dataset, batch_sampler=sampler, collate_fn=collater, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("valid", shuffle=False)

    def test_dataloader(self):
        return self.loader("test", shuffle=False)


def datamodule_from_config(cfg, tokenizers: Tokenizers | None = None):
    """The data module of a run: one task's (`data`), or several tasks' (`tasks`)."""
    if is_multitask(cfg):
        return MultiTaskDataModule.from_config(cfg, tokenizers)
    return Seq2SeqDataModule.from_config(cfg, tokenizers)


@dataclass
class TaskView:
    """What inference needs to ask a trained model for one of its tasks (`task_view`).

    data: the task's data section (its format reads the task's manifests); sources: {the data's source name:
    the model's encoder} (the batch key); prompt: the tag ids to pass to `EncoderDecoder.generate(...,
    prompt=)`. A single-task model has one view: its `data`, its sources under their own names, no prompt.
    """

    name: str | None
    data: Any
    sources: dict[str, str]
    prompt: list[int]


def task_view(cfg, tokenizers: Tokenizers, task: str | None = None) -> TaskView:
    """The view of `task` for a multitask model (required there), or of the one task of a single-task model."""
    if not is_multitask(cfg):
        if task is not None:
            raise ConfigError(f"--task {task}: this model was trained for one task (its config has no `tasks`); "
                              "leave --task out")
        return TaskView(None, cfg.get("data"), {s: s for s in encoder_configs(cfg)}, [])
    specs = task_specs(cfg)
    if task is None or task not in specs:
        given = "" if task is None else f"--task {task}: no such task. "
        raise ConfigError(f"{given}This model was trained for several tasks: choose one with --task NAME "
                          f"(its tasks: {', '.join(specs)})")
    spec = specs[task]
    prompt = []
    for tag in spec.prompt:
        token = tokenizers.target.symbol_id(tag)
        if token is None:
            raise ConfigError(f"tasks.{task}.prompt: the tag {tag} is not in this model's vocabulary")
        prompt.append(token)
    return TaskView(task, spec.data, dict(spec.sources), prompt)
