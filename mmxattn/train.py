"""`train(cfg)`: the whole training run as a plain function; `mmx-train` is a thin Hydra shell around it.

Order: data (generate if synthetic) -> tokenizers -> model -> Lightning fit -> export best weights ->
score the test split with the final decoding settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from .checkpoint import AtomicCheckpointIO, export_model
from .data.datamodule import SYNTHETIC, Seq2SeqDataModule
from .errors import ConfigError
from .evaluate import score_split
from .generation import GenerationConfig
from .model import build_model
from .task import Seq2SeqTask

log = logging.getLogger(__name__)


def resolve_resume(cfg: DictConfig, output_dir: Path) -> str | None:
    """`ckpt_path=last` resumes this run folder's last.ckpt, else the newest run of the same recipe name.

    Unlike Lightning's own "last", it never starts fresh silently when there is nothing to resume.
    """
    if cfg.ckpt_path in (None, ""):
        return None
    if cfg.ckpt_path != "last":
        if not Path(cfg.ckpt_path).is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: file not found; give an existing .ckpt or `last`")
        return str(cfg.ckpt_path)
    own = output_dir / "checkpoints" / "last.ckpt"
    candidates = [own] if own.is_file() else sorted(
        output_dir.parent.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
    )
    if not candidates:
        raise ConfigError(
            f"ckpt_path=last: no checkpoints/last.ckpt in {output_dir} or its sibling runs; start without "
            "ckpt_path, or pass the checkpoint file explicitly"
        )
    log.info("resuming from %s", candidates[-1])
    return str(candidates[-1])


def train(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.data.get("synthetic"):
        if cfg.data.synthetic not in SYNTHETIC:
            raise ConfigError(f"data.synthetic={cfg.data.synthetic!r}; expected one of {', '.join(SYNTHETIC)}")
        SYNTHETIC[cfg.data.synthetic](cfg.data.root, seed=cfg.seed)

    datamodule = Seq2SeqDataModule(cfg)
    datamodule.prepare(("train", "valid"))
    model = build_model(cfg, datamodule.tokenizers)
    task = Seq2SeqTask(model, datamodule.tokenizers, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters; data: %d train / %d valid samples; vocab %d",
             n_params / 1e6, len(datamodule.splits["train"]), len(datamodule.splits["valid"]), len(datamodule.tokenizers.target))

    checkpointing = ModelCheckpoint(
        dirpath=output_dir / "checkpoints", filename="best", monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode, save_top_k=1, save_last=True,
    )
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        default_root_dir=output_dir,
        callbacks=[checkpointing, TQDMProgressBar(refresh_rate=cfg.progress_refresh)],
        logger=CSVLogger(output_dir, name="", version=""),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the token-budget sampler shards by rank itself
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=resolve_resume(cfg, output_dir))

    results: dict = {"output_dir": str(output_dir)}
    if not trainer.is_global_zero:
        return results
    if checkpointing.best_model_path:
        best = torch.load(checkpointing.best_model_path, map_location="cpu", weights_only=True)
        task.load_state_dict(best["state_dict"])
    export_model(output_dir / "model.pt", model, datamodule.tokenizers, cfg)
    datamodule.tokenizers.target.save(output_dir / "tokenizer.model")
    for name, score in getattr(task, "last_scores", {}).items():
        results[f"val_{name}"] = score.value

    if cfg.data.get("test"):
        datamodule.prepare(("test",))
        scores, hyps = score_split(model, datamodule, "test", GenerationConfig(**cfg.generation), cfg.eval.metrics)
        (output_dir / "test.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        for name, score in scores.items():
            log.info("test (%s, %s): %s", cfg.data.test, cfg.generation.strategy, score)
            results[f"test_{name}"] = score.value
    log.info("exported %s; results %s", output_dir / "model.pt", results)
    return results
