"""`mmx-eval`: score a trained model on a data split and print the metrics."""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from ..data.datamodule import Seq2SeqDataModule
from ..errors import ConfigError
from ..evaluate import score_split
from .common import checkpoint_parser, generation_config, load_model, parse_with_generation_args, user_errors_exit

EPILOG = """examples:
  mmx-eval outputs/translation-quickstart/2026-01-01_12-00-00            # the run's own test split
  mmx-eval model.pt data.root=/data/multi30k data.test=test_2017_flickr --beam-size 5
  mmx-eval model.pt --split valid --json

The data section of the model's training config says where the data is; override any of its keys with
key=value (OmegaConf dotlist). Prints each metric (sacreBLEU with its signature)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = checkpoint_parser("mmx-eval", "Score a trained mmxattn model on a test set.", EPILOG)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=PATH data.test=PREFIX")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"], help="default: test")
    parser.add_argument("--hyp-out", help="also write the hypotheses to this file, one per line")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    return parse_with_generation_args(parser, argv)


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    model, tokenizers, cfg = load_model(args)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.overrides))
    except Exception as e:
        raise ConfigError(f"cannot apply overrides {args.overrides}: {e}; write them as key=value") from e
    if not cfg.data.get(args.split):
        raise ConfigError(f"data.{args.split} is not set in the model's config; pass data.{args.split}=<file prefix>")
    datamodule = Seq2SeqDataModule.from_config(cfg, tokenizers)
    datamodule.prepare((args.split,))
    gen = generation_config(cfg.get("generation"), args)
    metrics = list(cfg.get("eval", {}).get("metrics") or ["bleu"])
    scores, hyps = score_split(model, datamodule, args.split, gen, metrics, args.device)
    if args.hyp_out:
        with open(args.hyp_out, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hyps)
    if args.json:
        print(json.dumps({name: {"score": s.value, "signature": s.signature} for name, s in scores.items()}))
    else:
        print(f"{args.split} ({len(hyps)} samples, {gen.strategy}):")
        for score in scores.values():
            print(f"  {score}")


if __name__ == "__main__":
    main()
