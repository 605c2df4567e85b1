"""Checkpoints: atomic writes, the self-contained inference export, and loading a model for inference.

A Lightning `.ckpt` resumes training; the export (`model.pt`) holds only what inference needs: weights,
tokenizer models and the resolved config as plain containers, so `torch.load(weights_only=True)` works.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from .errors import DataError
from .model import EncoderDecoder, build_model
from .tokenizer import Tokenizers

EXPORT_FORMAT = "mmxattn-export/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A process killed mid-write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def export_model(path: str | Path, model: EncoderDecoder, tokenizers: Tokenizers, cfg: DictConfig | dict) -> None:
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    atomic_torch_save(
        {"format": EXPORT_FORMAT, "config": config, "tokenizers": tokenizers.to_state(),
         "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
        path,
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
