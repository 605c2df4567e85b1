"""Test scores of a trained run with and without joint CTC/attention rescoring (generation.ctc_weight).

    python recipes/speech_translation/rescore_ctc.py RUN DATA_ROOT [--weights 0 0.3 0.5] [--split test]

A measurement script: decodes the split's manifest with the run's model.pt (beam 5) once per weight and prints
WER and BLEU; the model needs a CTC head over its targets (trained with loss.ctc_weight > 0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mmxattn.checkpoint import load_for_inference
from mmxattn.generation import GenerationConfig
from mmxattn.metrics import corpus_bleu, word_error_rate
from mmxattn.registry import build_processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizers, cfg = load_for_inference(args.run)
    processor = build_processor(cfg["encoder"]["name"], cfg["encoder"], tokenizer=tokenizers, train=False)
    rows = [line.split("\t") for line in (args.root / f"{args.split}.tsv").read_text(encoding="utf-8").splitlines()]
    column = rows[0].index(cfg["data"].get("target_column") or "tgt_text")
    rows = rows[1:]
    batches = [processor.collate([processor(str(args.root / r[1])) for r in rows[i: i + 16]])
               for i in range(0, len(rows), 16)]
    refs = [[r[column]] for r in rows]
    for weight in args.weights:
        started = time.monotonic()
        config = GenerationConfig(strategy="beam", beam_size=args.beam, max_len=200, ctc_weight=weight)
        hyps = [tokenizers.target.decode(h[0].tokens) for batch in batches for h in model.generate({"src": batch}, config)]
        print(f"generation.ctc_weight={weight}: WER {word_error_rate(hyps, refs).value:.2f}  BLEU "
              f"{corpus_bleu(hyps, refs).value:.2f}  ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
