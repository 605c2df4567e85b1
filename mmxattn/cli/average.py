"""`mmx-average`: average the weights of several checkpoints of one run into an inference export.

    mmx-average outputs/translation-quickstart/2026-01-01_10-00-00 --last 5      # newest 5 step checkpoints
    mmx-average RUN_DIR --best 3 -o averaged.pt                                  # best 3 by checkpoint.monitor
    mmx-average a.ckpt b.ckpt c.ckpt -o averaged.pt                              # these files

Averaging the last few checkpoints of a run (Vaswani et al. 2017; fairseq's average_checkpoints.py)
usually gains a little over the single last one. Train with `checkpoint.keep_last=N` (step checkpoints
every `checkpoint.every_n_steps`) or `checkpoint.keep_best=N` so that there are N to average. The result
is an export like model.pt (weights, tokenizer, config) for mmx-generate and mmx-eval.

Every input is checked (checksum) and compared with the first: the same weights by name and shape, the same
tokenizer models and the same encoder/decoder config, or it refuses. Checkpoints of different runs (another
seed or output folder) are averaged with a warning: averaging unrelated runs usually gives garbage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import export_state, load_checkpoint_file
from ..errors import DataError
from .common import setup_logging, user_errors_exit

MODEL_SECTIONS = ("encoder", "encoders", "decoder", "fusion")  # the config sections that shape the model


def _load(path: Path) -> dict:
    """A checkpoint to average: verified (checksum, no pickled code) and memory-mapped, so that many fit in memory."""
    return load_checkpoint_file(path, what="checkpoint to average", mmap=True)


def _score(ckpt: dict, monitor: str) -> float | None:
    """The monitored value this checkpoint was saved with (from Lightning's ModelCheckpoint state)."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("monitor") == monitor and state.get("current_score") is not None:
            return float(state["current_score"])
    return None


def select(run: Path, last: int | None, best: int | None) -> dict[Path, dict]:
    """The chosen checkpoints of a run folder, each read once: {path: checkpoint}, oldest / best first."""
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    if last:
        by_step: dict[int, tuple[Path, dict]] = {}
        for path in sorted(folder.glob("step*.ckpt")) + [folder / "last.ckpt"]:
            if path.is_file():
                ckpt = _load(path)
                by_step.setdefault(int(ckpt.get("global_step", -1)), (path, ckpt))  # last.ckpt may repeat a step file
        chosen = dict(by_step[s] for s in sorted(by_step)[-last:])
        if len(chosen) < last:
            raise DataError(f"{folder}: {len(chosen)} checkpoint(s) of distinct steps, --last {last} wanted; train "
                            "with checkpoint.keep_last=N and checkpoint.every_n_steps=K to keep step checkpoints")
        return chosen
    scored = []
    for path in sorted(folder.glob("best*.ckpt")):
        ckpt = _load(path)
        cfg = ckpt.get("mmx_config", {}).get("checkpoint", {})
        score = _score(ckpt, cfg.get("monitor"))
        if score is not None:
            scored.append((score if cfg.get("mode", "max") == "max" else -score, path, ckpt))
    if len(scored) < best:
        raise DataError(f"{folder}: {len(scored)} best checkpoint(s) with a score, --best {best} wanted; train with "
                        "checkpoint.keep_best=N")
    return {path: ckpt for _, path, ckpt in sorted(scored, key=lambda s: s[:2], reverse=True)[:best]}


# --- what must match between the checkpoints ------------------------------------------------------------


def check_compatible(ckpts: dict[Path, dict]) -> None:
    """Refuse checkpoints that cannot be averaged (another model, vocabulary or architecture config) with a
    DataError naming both files; warn when they come from different runs, which is allowed but rarely useful.

    Every input is compared with the first. A weight average is only meaningful between points of one
    optimization path: same tensors, same token ids, same model.
    """
    for path, ckpt in ckpts.items():
        if "mmx_tokenizers" not in ckpt or "mmx_config" not in ckpt:
            raise DataError(f"{path}: not an mmxattn training checkpoint (.ckpt written by mmx-train); exports "
                            "(model.pt) hold no training state to select by and cannot be averaged")
    (first, ref), *others = ckpts.items()
    for path, ckpt in others:
        difference = _vocab_difference(ref, ckpt) or _weights_difference(ref, ckpt) or _config_difference(ref, ckpt)
        if difference:
            raise DataError(f"{first} and {path} cannot be averaged: {difference}; average checkpoints of one run")
        run_difference = _run_difference(ref, ckpt)
        if run_difference:
            print(f"warning: {first} and {path} come from different runs ({run_difference}); averaging unrelated "
                  "runs usually gives garbage", file=sys.stderr)


def _vocab_difference(a: dict, b: dict) -> str | None:
    """Same token ids: the SentencePiece models (bytes) must be identical, not just of the same size."""
    tok_a, tok_b = a["mmx_tokenizers"], b["mmx_tokenizers"]
    if tok_a.keys() != tok_b.keys():
        return "one has a joint tokenizer, the other separate source and target tokenizers"
    for side in sorted(tok_a):
        if tok_a[side] != tok_b[side]:
            return f"their {side} vocabularies differ (different tokenizer models)"
    return None


def _weights_difference(a: dict, b: dict) -> str | None:
    """Same architecture: the same model weights by name and shape; names the first that differs."""
    shapes_a, shapes_b = _model_shapes(a), _model_shapes(b)
    for key in shapes_a:
        if key not in shapes_b:
            return f"weight {key} is in the first only (a different architecture)"
    for key in shapes_b:
        if key not in shapes_a:
            return f"weight {key} is in the second only (a different architecture)"
    for key, shape in shapes_a.items():
        if shapes_b[key] != shape:
            return f"weight {key} has shape {list(shape)} in the first, {list(shapes_b[key])} in the second"
    return None


def _model_shapes(ckpt: dict) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def _config_difference(a: dict, b: dict) -> str | None:
    """Same model config (encoder(s), decoder, fusion), which also covers options that shape no weight."""
    for section in MODEL_SECTIONS:
        found = _first_difference(a["mmx_config"].get(section), b["mmx_config"].get(section), section)
        if found:
            return f"config {found}"
    return None


def _run_difference(a: dict, b: dict) -> str | None:
    """Different runs: another seed or another output folder (a resumed run keeps its folder)."""
    for key in ("seed", "output_dir"):
        va, vb = a["mmx_config"].get(key), b["mmx_config"].get(key)
        if va != vb:
            return f"{key} {va} vs {vb}"
    return None


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """`where.key: A vs B` for the first leaf that differs between two plain config containers."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def average(ckpts: dict[Path, dict]) -> tuple[dict[str, torch.Tensor], dict]:
    """Mean of the model weights (float tensors; integer buffers from the newest); the newest's metadata."""
    if not ckpts:
        raise DataError("no checkpoints to average")
    check_compatible(ckpts)
    ordered = sorted(ckpts.values(), key=lambda c: c.get("global_step", 0))
    newest = ordered[-1]
    averaged = {}
    for key in _model_shapes(newest):
        tensors = [c["state_dict"][key] for c in ordered]
        if tensors[0].is_floating_point():
            mean = torch.stack([t.double() for t in tensors]).mean(0)
            averaged[key.removeprefix("model.")] = mean.to(tensors[0].dtype)
        else:
            averaged[key.removeprefix("model.")] = tensors[-1].clone()
    return averaged, newest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmx-average", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("inputs", nargs="+", type=Path, help="a run folder, or .ckpt files to average")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--last", type=int, help="average the N newest step checkpoints of the run folder")
    group.add_argument("--best", type=int, help="average the N best checkpoints (by checkpoint.monitor)")
    parser.add_argument("-o", "--output", type=Path, help="export to write (default: RUN/model.avg-last5.pt etc.)")
    args = parser.parse_args(argv)
    setup_logging()
    user_errors_exit(_run)(args)


def _run(args) -> None:
    if args.last or args.best:
        if len(args.inputs) != 1 or not args.inputs[0].is_dir():
            raise DataError("--last/--best take one run folder (the one with checkpoints/ inside)")
        ckpts = select(args.inputs[0], args.last, args.best)
        kind = f"last{args.last}" if args.last else f"best{args.best}"
        output = args.output or args.inputs[0] / f"model.avg-{kind}.pt"
    else:
        missing = [str(p) for p in args.inputs if not p.is_file()]
        if missing:
            raise DataError(f"not found: {', '.join(missing)}; give .ckpt files, or a run folder with --last/--best")
        if args.output is None:
            raise DataError("give the output file with -o when averaging explicit checkpoint files")
        ckpts, output = {p: _load(p) for p in args.inputs}, args.output
    state_dict, newest = average(ckpts)
    export_state(output, state_dict, newest["mmx_tokenizers"], newest["mmx_config"])
    steps = ", ".join(f"{p.name} (step {int(c.get('global_step', 0))})" for p, c in ckpts.items())
    print(f"averaged {len(ckpts)} checkpoints: {steps}\nwrote {output}")


if __name__ == "__main__":
    main()
