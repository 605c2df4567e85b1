"""Checkpoints: atomic writes, the last/step checkpoints of a run, the self-contained inference export,
and loading a model for inference.

A Lightning `.ckpt` resumes training (weights, optimizer, scheduler, loop and data-loader position); the
export (`model.pt`) holds only what inference needs: weights, tokenizer models and the resolved config as
plain containers. Both load with `torch.load(weights_only=True)`.

Integrity: every file written here carries `mmx_checksum`, a digest of all its tensors (key path, dtype,
shape, raw bytes). torch's zip reader does not check CRCs, so a flipped bit in tensor data would otherwise
load silently and train or decode garbage. Every read of a checkpoint goes through `load_checkpoint_file`,
which loads with an explicit `weights_only=True` (an explicit True wins over TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD,
so no pickle in a checkpoint ever runs code) and verifies the digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .errors import DataError
from .inference import prepare
from .model import EncoderDecoder, build_model
from .tokenizer import Tokenizers

log = logging.getLogger(__name__)

EXPORT_FORMAT = "mmxattn-export/1"
CHECKSUM_KEY = "mmx_checksum"  # {"algorithm": "sha256", "digest": hex}: top level of a .ckpt or an export
CHECKSUM_ALGORITHM = "sha256"  # in every hashlib build; with SHA-NI as fast as blake2b


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


# --- integrity: one checksum, one writer, one loader -------------------------------------------------------


def tensor_checksum(obj: Any, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """Hex digest over every tensor in a checkpoint: its key path, dtype, shape and raw bytes.

    The key path and shape go in so that a tensor moved, renamed or reshaped also changes the digest; the
    top-level `mmx_checksum` entry is left out so that the digest can be stored in the object it covers.
    """
    digest = hashlib.new(algorithm)
    for key_path, tensor in _tensors(obj):
        digest.update(f"{key_path}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def _tensors(obj: Any, key_path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(key path, tensor) for each tensor in nested dicts, lists and tuples.

    Dict keys are walked sorted by repr (str keys of a state dict, int keys of an optimizer state), so
    the order depends on the contents only, not on how the dict was built.
    """
    if isinstance(obj, torch.Tensor):
        yield key_path, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            if key_path or key != CHECKSUM_KEY:
                yield from _tensors(obj[key], f"{key_path}/{key!r}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _tensors(item, f"{key_path}[{i}]")


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's elements as bytes, without a copy when it is already a contiguous CPU tensor.

    Viewed as uint8 rather than through `.numpy()` of the tensor itself, which has no bfloat16.
    """
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # [numel]; 0-dim tensors become [1]
    return memoryview(flat.view(torch.uint8).numpy())  # [numel * element_size] bytes


def save_checkpoint_file(obj: dict, path: str | Path) -> None:
    """Write a checkpoint atomically, with the checksum of its tensors under `mmx_checksum`."""
    checksum = {"algorithm": CHECKSUM_ALGORITHM, "digest": tensor_checksum(obj)}
    atomic_torch_save({**obj, CHECKSUM_KEY: checksum}, path)


# Files `verify_checkpoint_file` just checked, by identity: the load that follows at once (Lightning's, when
# a run resumes) reads the file again but does not hash it again. Identities rather than contents, so that
# nothing large stays in memory when a strategy (FSDP) reads the file by itself and never asks.
_VERIFIED: set[tuple] = set()


def verify_checkpoint_file(path: str | Path, *, what: str = "checkpoint") -> None:
    """Refuse an unreadable, unsafe or damaged checkpoint now, before a run changes anything (DataError).

    Memory-mapped, so that nothing is held once it is checked; the next load of the same unchanged file
    skips the hashing.
    """
    path = Path(path)
    identity = _file_identity(path)
    load_checkpoint_file(path, what=what, mmap=True)
    if _file_identity(path) == identity:
        _VERIFIED.add(identity)


def load_checkpoint_file(path: str | Path, *, what: str = "checkpoint", mmap: bool = False) -> dict:
    """Every read of an mmxattn checkpoint (.ckpt or export): tensors on the CPU, no pickled code, checksum checked.

    `weights_only=True` is passed explicitly because torch honours an explicit True even when the
    environment sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1. `mmap=True` maps the tensor data instead of reading it
    (several checkpoints averaged at once). Checkpoints of older mmxattn versions have no checksum: they load
    with a warning. Raises DataError naming the file for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    identity = _file_identity(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: refused to load this {what}: {_unsafe_reason(e)}; mmxattn checkpoints hold only "
                        "tensors and plain containers, so this file is damaged or was not written by mmxattn. Use a "
                        "checkpoint you trust") from e
    except Exception as e:  # truncated (no zip directory), not a torch file, unreadable
        raise DataError(f"{path}: cannot read this {what}, it is truncated or damaged ({_first_line(e)}). "
                        f"{_instead(path)}") from e
    if not isinstance(blob, dict):
        raise DataError(f"{path}: holds a {type(blob).__name__}, not an mmxattn {what}")
    if identity in _VERIFIED and _file_identity(path) == identity:
        _VERIFIED.discard(identity)  # the same bytes were checked moments ago
    else:
        _check_checksum(blob, path, what)
    return blob


def _check_checksum(blob: dict, path: Path, what: str) -> None:
    stored = blob.get(CHECKSUM_KEY)
    if stored is None:
        log.warning("%s: no checksum inside (written by an older mmxattn); its tensors cannot be verified", path)
        return
    algorithm = stored.get("algorithm") if isinstance(stored, dict) else None
    if algorithm not in hashlib.algorithms_guaranteed:
        raise DataError(f"{path}: the {what}'s checksum entry is malformed ({CHECKSUM_KEY}={stored!r}). {_instead(path)}")
    if tensor_checksum(blob, algorithm) != stored.get("digest"):
        raise DataError(f"{path}: this {what} is corrupt: its tensor data does not match its checksum, the file was "
                        f"damaged after it was written (disk, copy or transfer). {_instead(path)}")


def _instead(path: Path) -> str:
    """What to do about a damaged checkpoint: the other checkpoints next to it, or retraining."""
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p.name != path.name)
    if path.parent.joinpath("checkpoints").is_dir():
        others += sorted(f"checkpoints/{p.name}" for p in path.parent.glob("checkpoints/*.ckpt"))
    if others:
        return f"Use another checkpoint (in {path.parent}: {', '.join(others[:6])}) or retrain"
    return "Use another checkpoint (best.ckpt, a step*.ckpt, or a copy of this one) or retrain"


def _unsafe_reason(error: Exception) -> str:
    """One line out of torch's many-line weights_only refusal: which Python object the pickle asked for."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    if found:
        name = re.sub(r"[^\x21-\x7e]", "?", found.group(1))[:80]  # a damaged pickle can name binary garbage
        return f"its pickle asks for the Python object {name}, which could run code (loaded with weights_only=True)"
    return f"its pickle cannot be read safely with weights_only=True ({_first_line(error)})"


def _first_line(error: Exception) -> str:
    text = str(error).strip().split("\n")[0]
    text = text.split(". This is an internal miniz error")[0]  # torch's own advice follows; ours is in the message
    return f"{type(error).__name__}: {text[:200]}"


def _file_identity(path: Path) -> tuple:
    """Changes whenever the file does: replaced by rename (inode), rewritten (mtime) or truncated (size)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and writer for mmxattn: atomic writes with a checksum (never a
    half-written or silently damaged `.ckpt`), and reads through `load_checkpoint_file`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """The resume load (`trainer.fit(ckpt_path=...)`): always weights_only=True and checksum-verified,
        whatever Lightning asks. Tensors stay on the CPU: Lightning copies them into the model and the
        optimizer on their devices, and no rank's GPU gets the tensors of the device that saved them."""
        return load_checkpoint_file(path, what="checkpoint to resume from")


class LastCheckpoint(Checkpoint):
    """Keeps `last.ckpt` current so that `ckpt_path=last` loses little: written every `every_n_steps`
    optimizer steps, after each validation, when the process gets SIGTERM (Lightning stops after the
    current batch; a cluster's preemption or time limit sends it), and when training ends.

    With `keep_last` > 0 the step checkpoints also stay as `step0001234.ckpt` (the newest `keep_last`),
    for `mmx-average --last N`. It is a `Checkpoint` so Lightning runs it after the best-checkpoint
    callback, whose up-to-date state is then part of last.ckpt.

    A resume repeats the uninterrupted run however the run stopped, planned stops included
    (`trainer.max_steps`, `trainer.max_time`: tests/test_resume.py). For that it closes three gaps in
    Lightning's own (2.6) restore of its loop state:

    - When training ends (max_steps, should_stop, SIGTERM in an epoch's last batch), Lightning closes the
      current epoch before on_train_end, as if it had run to its end. Resumed from that state, a stop
      mid-epoch goes on with the next epoch (the rest of this one is never seen), and a stop at an epoch's
      end with max_steps set runs one batch and stops. Such a closed epoch is reopened in every checkpoint
      written or loaded (`_repair_epoch_progress`), in the state of a checkpoint from its last batch.
    - Resumed from a checkpoint written in an epoch's last batch, Lightning runs the next epoch without
      counting it as started: checkpoints written during it read as "epoch finished", and resuming one of
      them replays that epoch from its start. The count is put right at the first batch, and in such
      checkpoints when they are loaded.
    - Lightning's logging step (`step` in metrics.csv, the log_every_n_steps count) is set to the global
      step at the first batch: resumed from a checkpoint written at a validation that a stop (max_time)
      ran mid-epoch, it stays one short for the rest of the run.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, keep_last: int = 0):
        self.dirpath, self.every_n_steps, self.keep_last = Path(dirpath), int(every_n_steps or 0), int(keep_last or 0)
        self._saved_step = -1
        self._step_before = -1
        self._first_batch = False

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
        self._first_batch = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._first_batch:  # after Lightning has finished restoring its counters, before anything is logged
            self._first_batch = False
            self._count_epoch_started(trainer)
            self._align_logging_step(trainer)

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

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._repair_epoch_progress(checkpoint)  # every checkpoint the trainer writes, best.ckpt too

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._repair_epoch_progress(checkpoint)  # Lightning restores its loops from it after this hook

    @staticmethod
    def _count_epoch_started(trainer) -> None:
        """A batch of an epoch is starting, so the epoch has started; resumed from a checkpoint written in the
        previous epoch's last batch, Lightning (2.6) moves on to this epoch without counting it (its
        `_FitLoop.on_advance_start` skips that while the restart reads as "mid-epoch")."""
        current = trainer.fit_loop.epoch_progress.current
        if current.ready == current.started == current.processed:
            trainer.fit_loop.epoch_progress.increment_ready()
            trainer.fit_loop.epoch_progress.increment_started()

    @staticmethod
    def _align_logging_step(trainer) -> None:
        """Lightning's logging step (`_batches_that_stepped`) counts the batches that ended in an optimizer
        step, so in automatic optimization it equals global_step whenever a batch starts. A checkpoint
        written at a validation inside the training loop holds it one short; Lightning adds the 1 back on
        resume only when the saved batch was a scheduled validation batch, not after a validation that a
        stop ran mid-epoch (trainer.should_stop: max_time, EarlyStopping on a train metric, ...)."""
        loop = trainer.fit_loop.epoch_loop
        if trainer.lightning_module.automatic_optimization and hasattr(loop, "_batches_that_stepped"):
            loop._batches_that_stepped = trainer.global_step

    @staticmethod
    def _repair_epoch_progress(checkpoint: dict) -> None:
        """The loop state of a checkpoint that Lightning's resume would misread, put right; others untouched.

        The cases read as "epoch finished" (ready = started = processed) while batches of an epoch ran; the
        data loader's position says which epoch they belong to. The finished one: the checkpoint was written
        after Lightning closed it (at on_train_end or on_exception): reopened, as it was in its last batch
        that ran (the state of a SIGTERM checkpoint, or, when that was the epoch's last batch, of a periodic
        one; resumed from the closed state with max_steps set, Lightning would skip the rest of a cut-short
        epoch, or run one batch of the next and stop). The next one: its start was not counted (see
        `_count_epoch_started`), so it is counted.
        """
        fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
        loaders = (fit.get("state_dict") or {}).get("combined_loader") or []
        if not epochs or not batches or not loaders:
            return
        loader_epochs = {state.get("epoch") if isinstance(state, dict) else None for state in loaders}
        current, batch = epochs["current"], batches["current"]
        finished = current["ready"] == current["started"] == current["processed"] > 0
        if not (finished and batch["ready"] > 0 and len(loader_epochs) == 1):
            return
        loader_epoch, last = loader_epochs.pop(), bool(batches.get("is_last_batch"))
        ended = batch["ready"] == batch["started"] == batch["processed"] == batch["completed"]  # its batch too
        closed = current["completed"] == current["processed"]  # at its end only if fully closed (on_train_end)
        if loader_epoch == current["processed"] - 1 and ended and (closed or not last):
            for tracker in (epochs["current"], epochs["total"]):  # reopen the epoch
                tracker["processed"] -= 1
                tracker["completed"] = min(tracker["completed"], tracker["processed"])
            if last:  # and its last batch back to on_train_batch_end: Lightning resumes that at an epoch's end
                for tracker in (batches["current"], batches["total"]):
                    tracker["completed"] -= 1
            checkpoint["epoch"] = current["completed"]
        elif loader_epoch == current["processed"] and not last:  # running, not counted as started: count it
            for tracker in (epochs["current"], epochs["total"]):
                tracker["ready"] += 1
                tracker["started"] += 1

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
    save_checkpoint_file(
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


INITIAL_WEIGHTS = {"weights": None, "pretrained": False}  # encoder keys that name where training's weights came from


def without_initial_weights(cfg: DictConfig) -> DictConfig:
    """The config with every encoder's initial-weight source (encoder.weights, encoder.pretrained) cleared, to
    build a model whose weights a checkpoint then fills: the machine that loads it may have neither the file
    nor a model hub, and nothing needs to be read or downloaded twice."""
    cfg = cfg.copy()
    sections = [cfg.encoder] if cfg.get("encoder") else []
    sections += [c for c in (cfg.get("encoders") or {}).values() if c is not None]
    for section in sections:
        for key, value in INITIAL_WEIGHTS.items():
            if key in section:
                section[key] = value
    return cfg


def load_for_inference(path: str | Path, device: str | torch.device = "cpu", backend: str = "auto"
                       ) -> tuple[EncoderDecoder, Tokenizers, DictConfig]:
    """Model (frozen, eval mode), tokenizers and config from an export, a Lightning checkpoint, or a run folder.

    backend: the inference backend applied to the model (`mmxattn.inference`): auto (the fastest for
    `device`), eager, cpu or compile. Use eager to get the plain modules (e.g. to read or fine-tune them).
    """
    path = _resolve(Path(path))
    blob = load_checkpoint_file(path, what="model checkpoint")
    if blob.get("format") == EXPORT_FORMAT:
        config, tok_state, state_dict = blob["config"], blob["tokenizers"], blob["state_dict"]
    elif "mmx_tokenizers" in blob:  # Lightning checkpoint written by Seq2SeqTask
        config, tok_state = blob["mmx_config"], blob["mmx_tokenizers"]
        state_dict = {k.removeprefix("model."): v for k, v in blob["state_dict"].items() if k.startswith("model.")}
    else:
        raise DataError(f"{path}: not an mmxattn checkpoint (no tokenizer or config inside)")
    cfg = OmegaConf.create(config)
    tokenizers = Tokenizers.from_state(tok_state)
    model = build_model(without_initial_weights(cfg), tokenizers)
    model.load_state_dict(state_dict)
    return prepare(model.to(device), backend), tokenizers, cfg
