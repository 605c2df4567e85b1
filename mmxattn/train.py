"""`train(cfg)`: the whole training run as a plain function; `mmx-train` is a thin Hydra shell around it.

Order: data (generate if synthetic) -> tokenizers -> model -> Lightning fit -> export best weights ->
score the test split with the final decoding settings.

Several processes: with `trainer=ddp` on one machine, Lightning starts ranks 1.. by running the same
command line again. Under Hydra that command line may be a whole sweep (`-m`), so instead rank 0 hands
its resolved config to them in the environment (`MMX_RANK_CONFIG`) and `mmx-train` runs exactly that job
in the same output folder (`rank_config_from_env`). Under SLURM or torchrun every rank is started by the
cluster with the same job config, and nothing is re-launched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .checkpoint import (AtomicCheckpointIO, LastCheckpoint, export_model, load_checkpoint_file, verify_checkpoint_file,
                         without_initial_weights)
from .config_checks import check_config
from .context_cache import prepare_context_caches
from . import quickstart
from .data.multitask import datamodule_from_config, is_multitask, task_specs
from .errors import ConfigError, TrainingInterrupted
from .evaluate import decode_split, score_split
from .generation import GenerationConfig
from .metrics import checkpoint_target
from .model import EncoderDecoder, build_model
from .task import Seq2SeqTask
from .training.attention_images import AttentionImages
from .training.cpu_speedups import apply_cpu_speedups
from .training.loggers import build_loggers
from .training.metadata import CheckpointMetadata
from .training.rng import RngState
from .training.trace import TraceData
from .training.validation import ValidationDecoding, mean_score, score_tasks

log = logging.getLogger(__name__)

RANK_CONFIG_ENV = "MMX_RANK_CONFIG"
# what Lightning's launcher writes into rank 0's environment; left there, the next job of a sweep would
# think its processes were started externally and wait forever for ranks that never come
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", RANK_CONFIG_ENV)


def rank_config_from_env() -> DictConfig | None:
    """The job config rank 0 handed down, when this process is a rank that Lightning launched (LOCAL_RANK ≥ 1)."""
    text = os.environ.get(RANK_CONFIG_ENV)
    if not text or os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    return OmegaConf.create(text)


@contextlib.contextmanager
def _launch_environment(cfg: DictConfig):
    """Hand the resolved job config to launched ranks; restore rank 0's environment afterwards."""
    saved = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    if os.environ.get("LOCAL_RANK", "0") == "0":
        os.environ[RANK_CONFIG_ENV] = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        yield
    finally:
        if saved["LOCAL_RANK"] is None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # this process launched the ranks: the next job of a sweep starts anew
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_strategy(trainer_cfg: dict, multitask: bool = False):
    """`trainer.strategy` is a Lightning name ("ddp") or a `_target_` mapping (an FSDPStrategy with options).

    A multitask batch uses only its task's encoders, so the others get no gradient in that step: plain DDP
    would wait for them forever, and runs with find_unused_parameters instead."""
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, dict) and "_target_" in strategy:
        from hydra.utils import instantiate

        return instantiate(strategy, _convert_="object")
    if multitask and strategy in ("ddp", "ddp_spawn"):
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def build_early_stopping(cfg: DictConfig) -> list:
    """EarlyStopping on the checkpoint monitor when `early_stopping.patience` is set (its count is resumed)."""
    stopping = cfg.get("early_stopping") or {}
    if not stopping.get("patience"):
        return []
    return [EarlyStopping(monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode, patience=int(stopping.patience),
                          min_delta=float(stopping.get("min_delta", 0.0)), check_on_train_epoch_end=False)]


def check_compiler(accelerator: str) -> None:
    """torch.compile on CPU writes C++ and needs a compiler; without one it fails deep inside inductor."""
    if accelerator != "cpu":
        return
    candidates = [os.environ.get("CXX") or "g++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        raise ConfigError(
            f"compile.train=true on CPU needs a C++ compiler, and none of {candidates} is on PATH: install one "
            "(e.g. `apt install g++`), or set compile.train=false"
        )


def build_task(cfg: DictConfig, model: EncoderDecoder) -> Seq2SeqTask:
    """The task (loss and optimisation) from its config sections; with `compile.train` the model is first
    compiled in place (its state dict, and so the checkpoints, keep their keys)."""
    if (cfg.get("compile") or {}).get("train"):
        check_compiler(cfg.trainer.get("accelerator", "cpu"))
        model.compile()
    return Seq2SeqTask(model, loss=cfg.loss, optim=cfg.optim, loss_unit=float(cfg.data.max_tokens),
                       guard=cfg.get("guard"))


def build_callbacks(cfg: DictConfig) -> list:
    """Extra Lightning callbacks from `callbacks: {name: {_target_: ..., arg: value}}` (e.g. EarlyStopping)."""
    specs = cfg.get("callbacks") or {}
    if not specs:
        return []
    from hydra.utils import instantiate

    return [instantiate(spec) for spec in specs.values() if spec]


def _recipe_in_use() -> str:
    """The recipe Hydra composed this run from ("translation/quickstart"), for messages."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get("recipe"))
    except (ImportError, ValueError):  # not run through Hydra (a test, a notebook)
        return "none"


def _resolve_checkpoint_target(cfg: DictConfig) -> None:
    """Fill checkpoint.monitor/mode left null, before the config is saved with checkpoints (mmx-average reads them)."""
    ckpt = cfg.checkpoint
    if is_multitask(cfg) and not ckpt.monitor:  # the mean of every task's first metric (training/validation.py)
        ckpt.monitor, ckpt.mode = "val/score", ckpt.mode or "max"
    ckpt.monitor, ckpt.mode = checkpoint_target(cfg.eval.metrics, ckpt.monitor, ckpt.mode)


def _keep_metrics_history(output_dir: Path) -> None:
    """Lightning's CSVLogger deletes an existing metrics.csv; a resumed run keeps it as metrics.part<N>.csv."""
    metrics = output_dir / "metrics.csv"
    if metrics.is_file() and rank_zero_only.rank == 0:
        part = 1
        while (output_dir / f"metrics.part{part}.csv").exists():
            part += 1
        metrics.rename(output_dir / f"metrics.part{part}.csv")
        log.info("resuming: the metrics so far are in %s", output_dir / f"metrics.part{part}.csv")


def resolve_resume(cfg: DictConfig, output_dir: Path) -> str | None:
    """`ckpt_path=last` resumes this run folder's last.ckpt, else the newest run of the same recipe name.

    Unlike Lightning's own "last", it never starts fresh silently when there is nothing to resume.
    `ckpt_path=auto` resumes this run folder's last.ckpt when there is one and starts fresh otherwise: for
    jobs that a cluster requeues into the same folder after preemption or a time limit.

    The chosen file is read and its checksum checked here, before anything in the run folder changes (the
    caller then moves metrics.csv aside): a truncated or damaged checkpoint stops the run with a DataError
    naming it. Lightning's own load of the same unchanged file then skips the hashing.
    """
    if cfg.ckpt_path in (None, ""):
        return None
    own = output_dir / "checkpoints" / "last.ckpt"
    if cfg.ckpt_path == "auto":
        log.info("ckpt_path=auto: %s", f"resuming from {own}" if own.is_file() else "no last.ckpt yet, starting fresh")
        if not own.is_file():
            return None
        path = own
    elif cfg.ckpt_path != "last":
        if not Path(cfg.ckpt_path).is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: file not found; give an existing .ckpt or `last`")
        path = Path(cfg.ckpt_path)
    else:
        candidates = [own] if own.is_file() else sorted(
            output_dir.parent.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise ConfigError(
                f"ckpt_path=last: no checkpoints/last.ckpt in {output_dir} or its sibling runs; start without "
                "ckpt_path, or pass the checkpoint file explicitly"
            )
        path = candidates[-1]
        log.info("resuming from %s", path)
    verify_checkpoint_file(path, what="checkpoint to resume from")
    return str(path)


def _refuse_a_used_run_folder(output_dir: Path) -> None:
    """A fresh run never writes into a folder that holds another run's model or checkpoints."""
    if any(os.environ.get(var, "0") != "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        return  # ranks > 0 share rank 0's folder
    used = [name for name in ("model.pt", "checkpoints", "metrics.csv") if (output_dir / name).exists()]
    if used:
        raise ConfigError(
            f"{output_dir} already holds a run ({', '.join(used)}); a new run would overwrite it. Continue that "
            "run with ckpt_path=last, or leave hydra.run.dir unset (each run then gets a folder of its own)"
        )


def _cache_device(cfg: DictConfig) -> str:
    """Where frozen encoders fill their context caches: the GPU when training has one (a ViT-L over COCO on a
    CPU would take hours), else the CPU."""
    import torch

    return "cuda" if cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def train(cfg: DictConfig) -> dict:
    started = time.monotonic()
    check_config(cfg)  # before anything is read, generated or written
    output_dir = Path(cfg.output_dir)
    ckpt_path = resolve_resume(cfg, output_dir)
    if not ckpt_path and cfg.ckpt_path != "auto":
        _refuse_a_used_run_folder(output_dir)
    L.seed_everything(cfg.seed, workers=True)
    for data in [cfg.data] + [t.data for t in (task_specs(cfg).values() if is_multitask(cfg) else [])]:
        if data.get("synthetic"):
            quickstart.write(data.synthetic, data.root, seed=cfg.seed, asked_by=f"recipe={_recipe_in_use()}")
    _resolve_checkpoint_target(cfg)
    if ckpt_path:
        _keep_metrics_history(output_dir)

    datamodule = datamodule_from_config(cfg)
    datamodule.prepare(("train", "valid"))
    model = build_model(cfg, datamodule.tokenizers)
    prepare_context_caches(model, datamodule, cfg, _cache_device(cfg))  # frozen encoders with `cache`: run once
    if cfg.get("cpu_speedups") and cfg.trainer.get("accelerator") == "cpu":
        apply_cpu_speedups(model)  # plain nn.Dropout in the model; a cheaper mask drawn on CPUs
    task = build_task(cfg, model)
    tasks = {name: spec.metrics for name, spec in task_specs(cfg).items()} if is_multitask(cfg) else None
    validation = ValidationDecoding.from_config(cfg.eval, datamodule.tokenizers.target, tasks)  # checks the metrics
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters; data: %d train / %d valid samples; vocab %d",
             n_params / 1e6, len(datamodule.splits["train"]), len(datamodule.splits["valid"]), len(datamodule.tokenizers.target))

    loggers = build_loggers(cfg.get("logger"), output_dir, cfg, cfg.name)  # before training: a missing extra stops here
    attention_samples = int((cfg.get("logger") or {}).get("attention_samples", 0))
    ckpt = cfg.checkpoint
    keep_best = int(ckpt.get("keep_best", 1))
    checkpointing = ModelCheckpoint(  # best.ckpt (or the best keep_best as best-step*.ckpt) by the monitor
        dirpath=output_dir / "checkpoints", filename="best" if keep_best == 1 else "best-step{step:07d}",
        monitor=ckpt.monitor, mode=ckpt.mode, save_top_k=keep_best, save_last=False,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    last = LastCheckpoint(output_dir / "checkpoints", ckpt.get("every_n_steps", 0), ckpt.get("keep_last", 0))
    # In the order Lightning calls them (it moves checkpoint callbacks to the end, wherever they are listed).
    # The user's first, then ours, whose hooks ran in the task after every callback's before they were split
    # out of it. `validation` logs val/<metric>, which EarlyStopping and the checkpoint callbacks monitor:
    # they read it in on_validation_end, after every on_validation_epoch_end (training/validation.py), and
    # come after it here too. RngState restores the RNG in on_train_start after every other callback's.
    callbacks = [
        *build_callbacks(cfg),
        validation,
        *([AttentionImages(attention_samples, datamodule.tokenizers, cfg, output_dir)] if attention_samples else []),
        *build_early_stopping(cfg),
        *([TraceData(cfg.output_dir)] if cfg.get("trace_data") else []),
        CheckpointMetadata(datamodule.tokenizers, cfg),  # the tokenizers and the whole config, in every .ckpt
        TQDMProgressBar(refresh_rate=cfg.progress_refresh),
        RngState(),
        checkpointing,
        last,
    ]
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["strategy"] = build_strategy(trainer_args, multitask=is_multitask(cfg))
    trainer = L.Trainer(
        **trainer_args,
        default_root_dir=output_dir,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the token-budget sampler shards by rank itself
        enable_model_summary=False,
    )
    shared = OmegaConf.merge(cfg, {"ckpt_path": ckpt_path, "output_dir": str(output_dir.absolute())})
    with _launch_environment(shared):
        try:
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException as e:
            raise TrainingInterrupted(
                f"stopped by SIGTERM at step {trainer.global_step}, before the run finished (no model.pt yet); "
                f"{last.last_path} holds it. Continue with the same command plus ckpt_path=last "
                f"hydra.run.dir={output_dir}"
            ) from e

    results: dict = {"output_dir": str(output_dir)}
    if not trainer.is_global_zero:
        return results
    val_scores, best = validation.last_scores, checkpointing.best_model_path
    if isinstance(trainer.strategy, FSDPStrategy):  # the trained modules are sharded: rebuild from the full .ckpt
        model = build_model(without_initial_weights(cfg), datamodule.tokenizers).to(trainer.strategy.root_device)
        task = build_task(cfg, model)
        best = best or str(last.last_path)
    if best:
        task.load_state_dict(load_checkpoint_file(best, what="best checkpoint")["state_dict"])
    export_model(output_dir / "model.pt", model, datamodule.tokenizers, cfg)
    datamodule.tokenizers.target.save(output_dir / "tokenizer.model")
    for name, score in val_scores.items():
        results[f"val_{name.replace('/', '_')}"] = score.value

    if tasks and all(spec.data.get("test") for spec in task_specs(cfg).values()):
        datamodule.prepare(("test",))
        prepare_context_caches(model, datamodule, cfg, _cache_device(cfg))
        hyps = decode_split(model, datamodule, "test", GenerationConfig(**cfg.generation))
        dataset = datamodule.splits["test"]
        scores = score_tasks(tasks, list(enumerate(hyps)), dataset.samples, dataset.task_of)
        for task in tasks:
            mine = [h for i, h in enumerate(hyps) if dataset.task_of(i) == task]
            (output_dir / f"test.{task}.hyp").write_text("".join(h + "\n" for h in mine), encoding="utf-8")
        for name, score in scores.items():
            log.info("test %s (%s): %s", name.split("/")[0], cfg.generation.strategy, score)
            results[f"test_{name.replace('/', '_')}"] = score.value
        results["test_score"] = mean_score(tasks, scores)
    elif not tasks and cfg.data.get("test"):
        datamodule.prepare(("test",))
        prepare_context_caches(model, datamodule, cfg, _cache_device(cfg))
        scores, hyps = score_split(model, datamodule, "test", GenerationConfig(**cfg.generation), cfg.eval.metrics)
        (output_dir / "test.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        for name, score in scores.items():
            log.info("test (%s, %s): %s", cfg.data.test, cfg.generation.strategy, score)
            results[f"test_{name}"] = score.value
    results.update(recipe=_recipe_in_use(), global_step=trainer.global_step,
                   wall_seconds=round(time.monotonic() - started, 1), finished=time.time())
    (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    log.info("exported %s; results %s", output_dir / "model.pt", results)
    return results
