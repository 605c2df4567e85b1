"""`mmx-average`: average the weights of several checkpoints of one run into an inference export.

    mmx-average outputs/translation-quickstart/2026-01-01_10-00-00 --last 5      # newest 5 step checkpoints
    mmx-average RUN_DIR --best 3 -o averaged.pt                                  # best 3 by checkpoint.monitor
    mmx-average a.ckpt b.ckpt c.ckpt -o averaged.pt                              # these files

Averaging the last few checkpoints of a run (Vaswani et al. 2017; fairseq's average_checkpoints.py)
usually gains a little over the single last one. Train with `checkpoint.keep_last=N` (step checkpoints
every `checkpoint.every_n_steps`) or `checkpoint.keep_best=N` so that there are N to average. The result
is an export like model.pt (weights, tokenizer, config) for mmx-generate and mmx-eval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import export_state
from ..errors import DataError
from .common import setup_logging, user_errors_exit


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


def _score(ckpt: dict, monitor: str) -> float | None:
    """The monitored value this checkpoint was saved with (from Lightning's ModelCheckpoint state)."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("monitor") == monitor and state.get("current_score") is not None:
            return float(state["current_score"])
    return None


def select(run: Path, last: int | None, best: int | None) -> list[Path]:
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    if last:
        by_step: dict[int, Path] = {}
        for path in sorted(folder.glob("step*.ckpt")) + [folder / "last.ckpt"]:
            if path.is_file():
                by_step.setdefault(int(_load(path)["global_step"]), path)  # last.ckpt may repeat a step file
        chosen = [by_step[s] for s in sorted(by_step)[-last:]]
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
            scored.append((score if cfg.get("mode", "max") == "max" else -score, path))
    if len(scored) < best:
        raise DataError(f"{folder}: {len(scored)} best checkpoint(s) with a score, --best {best} wanted; train with "
                        "checkpoint.keep_best=N")
    return [path for _, path in sorted(scored, reverse=True)[:best]]


def average(paths: list[Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """Mean of the model weights (float tensors; integer buffers from the newest); the newest's metadata."""
    if not paths:
        raise DataError("no checkpoints to average")
    ckpts = sorted((_load(p) for p in paths), key=lambda c: c.get("global_step", 0))
    newest = ckpts[-1]
    if "mmx_tokenizers" not in newest:
        raise DataError(f"{paths[-1]}: not an mmxattn training checkpoint (.ckpt written by mmx-train)")
    keys = [k for k in newest["state_dict"] if k.startswith("model.")]
    averaged = {}
    for key in keys:
        tensors = [c["state_dict"][key] for c in ckpts]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise DataError(f"{key}: shapes differ between the checkpoints; they must come from the same model")
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
        paths = select(args.inputs[0], args.last, args.best)
        kind = f"last{args.last}" if args.last else f"best{args.best}"
        output = args.output or args.inputs[0] / f"model.avg-{kind}.pt"
    else:
        missing = [str(p) for p in args.inputs if not p.is_file()]
        if missing:
            raise DataError(f"not found: {', '.join(missing)}; give .ckpt files, or a run folder with --last/--best")
        paths, output = list(args.inputs), args.output
        if output is None:
            raise DataError("give the output file with -o when averaging explicit checkpoint files")
    state_dict, newest = average(paths)
    export_state(output, state_dict, newest["mmx_tokenizers"], newest["mmx_config"])
    steps = ", ".join(f"{p.name} (step {int(_load(p)['global_step'])})" for p in paths)
    print(f"averaged {len(paths)} checkpoints: {steps}\nwrote {output}")


if __name__ == "__main__":
    main()
