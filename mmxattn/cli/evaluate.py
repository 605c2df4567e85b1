"""`mmx-eval`: score a trained model on a data split and print the metrics."""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from ..data.datamodule import Seq2SeqDataModule
from ..data.multitask import MultiTaskDataModule, is_multitask, task_specs, task_view
from ..errors import ConfigError
from ..evaluate import decode_split, score_split
from ..training.validation import score_tasks
from .common import checkpoint_parser, generation_config, load_model, parse_with_generation_args, user_errors_exit

EPILOG = """examples:
  mmx-eval outputs/translation-quickstart/2026-01-01_12-00-00            # the run's own test split
  mmx-eval model.pt data.root=/data/multi30k data.test=test_2017_flickr --beam-size 5
  mmx-eval model.pt --split valid --json
  mmx-eval multitask/model.pt                      # a model of several tasks: each task's test split
  mmx-eval multitask/model.pt --task speech tasks.speech.data.test=tst-COMMON

The data section of the model's training config says where the data is; override any of its keys with
key=value (OmegaConf dotlist). Prints each metric (sacreBLEU with its signature)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = checkpoint_parser("mmx-eval", "Score a trained mmxattn model on a test set.", EPILOG)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=PATH data.test=PREFIX")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"], help="default: test")
    parser.add_argument("--hyp-out", help="also write the hypotheses to this file, one per line")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument("--task", help="for a model trained on several tasks: score this one only (default: each)")
    return parse_with_generation_args(parser, argv)


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    model, tokenizers, cfg = load_model(args)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
    except Exception as e:
        raise ConfigError(f"cannot apply overrides {args.overrides}: {e}; write them as key=value") from e
    gen = generation_config(cfg.get("generation"), args)
    if is_multitask(cfg):
        scores, hyps = score_multitask(model, tokenizers, cfg, args, gen)
    else:
        if args.task is not None:
            task_view(cfg, tokenizers, args.task)  # says why --task does not apply
        if not cfg.data.get(args.split):
            raise ConfigError(f"data.{args.split} is not set in the model's config; pass data.{args.split}=<file prefix>")
        datamodule = Seq2SeqDataModule.from_config(cfg, tokenizers)
        datamodule.prepare((args.split,))
        metrics = list(cfg.get("eval", {}).get("metrics") or ["bleu"])
        scores, hyps = score_split(model, datamodule, args.split, gen, metrics, args.device)
    if args.hyp_out:
        with open(args.hyp_out, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
    if args.json:
        print(json.dumps({name: {"score": s.value, "signature": s.signature} for name, s in scores.items()}))
    else:
        print(f"{args.split} ({len(hyps)} samples, {gen.strategy}):")
        for name, score in scores.items():
            print(f"  {name.split('/')[0] + ': ' if '/' in name else ''}{score}")


def score_multitask(model, tokenizers, cfg, args, gen):
    """({"<task>/<metric>": score}, hypotheses) of each task's split, or of --task's only."""
    specs = task_specs(cfg)
    names = [task_view(cfg, tokenizers, args.task).name] if args.task is not None else list(specs)
    unset = [n for n in names if not specs[n].data.get(args.split)]
    if unset:
        raise ConfigError(f"tasks.{unset[0]}.data.{args.split} is not set in the model's config; pass "
                          f"tasks.{unset[0]}.data.{args.split}=<name>" + (", or choose a task with --task" if not args.task else ""))
    datamodule = MultiTaskDataModule.from_config(cfg, tokenizers, tasks=names)
    datamodule.prepare((args.split,))
    hyps = decode_split(model, datamodule, args.split, gen, args.device)
    dataset = datamodule.splits[args.split]
    return score_tasks({n: s.metrics for n, s in datamodule.tasks.items()}, list(enumerate(hyps)), dataset.samples,
                       dataset.task_of), hyps


if __name__ == "__main__":
    main()
