"""Checkpoints: atomic writes, the last/step checkpoints of a run, the self-contained inference export,
and loading a model for inference.

A Lightning `.ckpt` resumes training (weights, optimizer, scheduler, loop and data-loader position); the
export (`model.pt`) holds only what inference needs: weights, tokenizer models and the resolved config as
plain containers. Both load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .errors import DataError
from .model import EncoderDecoder, build_model
from .tokenizer import Tokenizers

log = logging.getLogger(__name__)

EXPORT_FORMAT = "mmxattn-export/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A process killed mid-write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while it wrote
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer that never leaves a half-written `.ckpt` behind."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)


class LastCheckpoint(Checkpoint):
    """Keeps `last.ckpt` current so that `ckpt_path=last` loses little: written every `every_n_steps`
    optimizer steps, after each validation, when the process gets SIGTERM (Lightning stops after the
    current batch; a cluster's preemption or time limit sends it), and when training ends.

    With `keep_last` > 0 the step checkpoints also stay as `step0001234.ckpt` (the newest `keep_last`),
    for `mmx-average --last N`. It is a `Checkpoint` so Lightning runs it after the best-checkpoint
    callback, whose up-to-date state is then part of last.ckpt.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, keep_last: int = 0):
        self.dirpath, self.every_n_steps, self.keep_last = Path(dirpath), int(every_n_steps or 0), int(keep_last or 0)
        self._saved_step = -1
        self._step_before = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer) -> None:
        if trainer.global_step == self._saved_step or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.last_path)
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, stepped = trainer.global_step, trainer.global_step != self._step_before
        self._step_before = step
        if stepped and self.every_n_steps and step % self.every_n_steps == 0:
            self.save(trainer)
            if self.keep_last and trainer.is_global_zero:
                self._keep_step_copy(step)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.save(trainer)
            log.warning("SIGTERM: stopped at step %d and saved %s; resume with ckpt_path=last", trainer.global_step,
                        self.last_path)

    def _keep_step_copy(self, step: int) -> None:
        copy = self.dirpath / f"step{step:07d}.ckpt"
        copy.unlink(missing_ok=True)
        try:
            os.link(self.last_path, copy)  # last.ckpt is replaced by rename later, so the link keeps this one
        except OSError:
            shutil.copy2(self.last_path, copy)
        for old in sorted(self.dirpath.glob("step*.ckpt"))[: -self.keep_last]:
            old.unlink(missing_ok=True)


def export_model(path: str | Path, model: EncoderDecoder, tokenizers: Tokenizers, cfg: DictConfig | dict) -> None:
    export_state(path, {k: v.detach().cpu() for k, v in model.state_dict().items()}, tokenizers.to_state(), cfg)


def export_state(path: str | Path, state_dict: dict[str, torch.Tensor], tokenizer_state: dict, cfg: DictConfig | dict) -> None:
    """Write the inference export: weights, tokenizer models (bytes) and the config, all plain containers."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    atomic_torch_save(
        {"format": EXPORT_FORMAT, "config": config, "tokenizers": tokenizer_state, "state_dict": state_dict}, path
    )


def _resolve(path: Path) -> Path:
    if path.is_dir():  # a run directory: prefer the export, then the last checkpoint
        for candidate in (path / "model.pt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise DataError(f"{path}: no model.pt or checkpoints/last.ckpt inside; pass a checkpoint file or a run folder")
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found. Pass model.pt, a .ckpt, or the run folder that holds them.")
    return path


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[EncoderDecoder, Tokenizers, DictConfig]:
    """Model (eval mode), tokenizers and config from an export, a Lightning checkpoint, or a run folder."""
    path = _resolve(Path(path))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: not a readable mmxattn checkpoint ({type(e).__name__}: {e})") from e
    if blob.get("format") == EXPORT_FORMAT:
        config, tok_state, state_dict = blob["config"], blob["tokenizers"], blob["state_dict"]
    elif "mmx_tokenizers" in blob:  # Lightning checkpoint written by Seq2SeqTask
        config, tok_state = blob["mmx_config"], blob["mmx_tokenizers"]
        state_dict = {k.removeprefix("model."): v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    else:
        raise DataError(f"{path}: not an mmxattn checkpoint (no tokenizer or config inside)")
    cfg = OmegaConf.create(config)
    tokenizers = Tokenizers.from_state(tok_state)
    model = build_model(cfg, tokenizers)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), tokenizers, cfg
