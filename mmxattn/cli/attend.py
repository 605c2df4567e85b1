"""`mmx-attend`: decode inputs and write what the decoder's cross-attention read for each output token."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from ..viz.attention_maps import AttentionMap, AttentionMapper
from ..viz.attention_plots import plot_source
from ..errors import ConfigError, DataError
from .common import add_generation_args, generation_config, setup_logging, user_errors_exit
from .generate import read_inputs

EPILOG = """examples:
  echo "Two small dogs chase the red ball." | mmx-attend outputs/translation-quickstart/<run> -o attention/
  mmx-attend captioner/model.pt photos/ -o attention/ --layer 1 --head mean
  mmx-attend speech/model.pt clip.flac -o attention/ --strategy beam --beam-size 4 --nbest 2 --rank 1
  mmx-attend fused/model.pt --tsv inputs.tsv -o attention/     # several sources: a TSV, one column each

For each input it writes into the output folder (NAME = the input file's stem, or FILE.LINE for lines
of a text file):
  NAME.png   target tokens against context positions: labelled source tokens for text, the image with
             a heatmap per token for images, the heatmap over the log-mel spectrogram for audio
             (NAME.SOURCE.png, one per source, for a model that reads several sources)
  NAME.txt   per generated token its most-read context positions: "la → the 80%, cat 15%, sat 5%"
  NAME.npy   all weights, float32 [layers, heads, target tokens, context positions] (padding removed):
             numpy.load("NAME.npy") or torch.from_numpy(...)
  NAME.json  input, output, target tokens, context position labels, and each source's positions
and prints "input<TAB>output<TAB>NAME.png" per input. --layer/--head choose what the PNG and the table
show (a number, or mean = the average); the .npy always holds every layer and head."""


def layer_or_head(value: str) -> int | str:
    if value == "mean":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number or 'mean'") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmx-attend", description="Show which part of the input each generated token attended to.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="model.pt, a .ckpt file, or a run folder")
    parser.add_argument("inputs", nargs="*", help="input files or folders; none or '-' = stdin")
    parser.add_argument("-o", "--output-dir", default="attention", help="folder for the files (default: attention)")
    parser.add_argument("--tsv", help="inputs for a model with several sources: a TSV whose header names the "
                                      "sources, one input per row (paths relative to the TSV's folder)")
    parser.add_argument("--layer", type=layer_or_head, default="mean", help="decoder layer to show, or mean (default)")
    parser.add_argument("--head", type=layer_or_head, default="mean", help="attention head to show, or mean (default)")
    parser.add_argument("--top", type=int, default=3, help="context positions listed per token in NAME.txt (default 3)")
    parser.add_argument("--task", help="for a model trained on several tasks: which one to ask for")
    parser.add_argument("--rank", type=int, default=0, help="which beam hypothesis: 0 = best (needs --nbest > rank)")
    add_generation_args(parser)
    return parser.parse_intermixed_args(argv)  # inputs may follow options


def read_tsv(path: str, sources: list[str]) -> list[tuple[str, dict]]:
    """(where, {source: raw}) per row of a TSV whose header names the model's sources."""
    tsv = Path(path)
    if not tsv.is_file():
        raise DataError(f"{tsv}: TSV file not found")
    with open(tsv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = list(rows[0]) if rows else []
    missing = [s for s in sources if s not in header]
    if missing:
        raise DataError(f"{tsv}: header {header} lacks columns {missing}; this model reads sources {sources}")
    items = []
    for line, row in enumerate(rows, 2):
        raw = {}
        for source in sources:
            value = row[source] or ""
            relative = tsv.parent / value
            raw[source] = str(relative) if value and not Path(value).exists() and relative.exists() else value
        items.append((f"{tsv}:{line}", raw))
    return items


def output_stem(where: str, taken: set[str]) -> str:
    """A file name for an input: 'a.jpg' -> 'a', 'in.txt:3' -> 'in.3', stdin line 3 -> '3'; unique."""
    name, _, line = where.rpartition(":")
    if name and line.isdigit():
        stem = line if name == "-" else f"{Path(name).stem}.{line}"
    else:
        stem = Path(where).stem
    unique, n = stem, 2
    while unique in taken:
        unique, n = f"{stem}-{n}", n + 1
    taken.add(unique)
    return unique


def write_outputs(amap: AttentionMap, out_dir: Path, stem: str, args) -> list[Path]:
    """NAME.png (per source), NAME.txt, NAME.npy and NAME.json for one map."""
    single = len(amap.sources) == 1
    pngs = [plot_source(amap, span.name, out_dir / (f"{stem}.png" if single else f"{stem}.{span.name}.png"),
                        layer=args.layer, head=args.head) for span in amap.sources]
    header = [f"# input: {v}" if single else f"# input {k}: {v}" for k, v in amap.inputs.items()]
    header += [f"# output: {amap.text}",
               f"# top {args.top} context positions per generated token; weights of layer {args.layer}, head {args.head}"]
    (out_dir / f"{stem}.txt").write_text("\n".join(header) + "\n" + amap.table(args.top, args.layer, args.head),
                                         encoding="utf-8")
    np.save(out_dir / f"{stem}.npy", amap.weights.numpy())
    meta = {
        "inputs": {k: str(v) for k, v in amap.inputs.items()}, "output": amap.text, "score": amap.score,
        "target_tokens": amap.target_labels, "context_positions": amap.context_labels,
        "sources": {s.name: {"start": s.start, "end": s.end, "kind": s.view.kind} for s in amap.sources},
        "weights": {"file": f"{stem}.npy", "shape": list(amap.weights.shape),
                    "axes": ["layer", "head", "target token", "context position"]},
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return pngs


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    if args.top < 1:
        raise ConfigError(f"--top={args.top}: list at least one context position")
    mapper = AttentionMapper.from_checkpoint(args.checkpoint, args.device, args.backend, task=args.task)
    sources = list(mapper.source_configs)
    if args.tsv:
        items = read_tsv(args.tsv, sources)
    elif len(sources) == 1:
        plugin = mapper.plugins[sources[0]]
        items = []
        for where, raw in read_inputs(args.inputs, plugin, mapper.view.data, mapper.local_source(sources[0])):
            if plugin.input_kind == "text" and not raw.strip():
                print(f"warning: {where}: empty line, skipped", file=sys.stderr)
            else:
                items.append((where, raw))
    else:
        raise ConfigError(f"this model reads {len(sources)} sources ({', '.join(sources)}); give the inputs as "
                          "--tsv FILE with one column per source")
    gen = generation_config(mapper.cfg.get("generation"), args)
    maps = mapper([raw for _, raw in items], gen, rank=args.rank, batch_size=args.batch_size)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for (where, raw), amap in zip(items, maps):
        pngs = write_outputs(amap, out_dir, output_stem(where, taken), args)
        shown = raw if isinstance(raw, str) else where
        print(f"{shown}\t{amap.text}\t{', '.join(str(p) for p in pngs)}")


if __name__ == "__main__":
    main()
