"""`mmx-generate`: write outputs of a trained model for inputs given as files, folders or stdin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import registry
from ..data.samples import SkipReport, check_not_folder, decode_lines, read_lines
from ..data.multitask import task_view
from ..errors import DataError, MmxError
from ..sources import encoder_configs
from .common import checkpoint_parser, generation_config, load_model, parse_with_generation_args, user_errors_exit

EPILOG = """examples:
  mmx-generate outputs/translation-quickstart/2026-01-01_12-00-00 input.txt
  echo "Two small dogs chase the red ball." | mmx-generate outputs/.../model.pt
  mmx-generate model.pt --beam-size 8 --nbest 3 input.txt        # id, rank, score, text per line
  mmx-generate model.pt --strategy sample --top-p 0.9 --seed 1 input.txt
  mmx-generate captioner/model.pt photos/ extra.jpg               # image/audio models: files or folders
  mmx-generate speech/model.pt data/tst-COMMON.tsv                 # or a manifest in the model's data format
  mmx-generate multitask/model.pt --task translate input.txt       # a model of several tasks: ask for one

Text models read one input per line (files or stdin) and print one output per line, in order.
Image/audio models take file paths (folders are searched for known file types) and print
"path<TAB>output"; a manifest of the format the model was trained on (data.format: a fairseq speech
TSV, a multisource TSV) gives "id<TAB>output", its target column optional.
CHECKPOINT is model.pt, a Lightning .ckpt, or a run folder holding them."""


def read_manifest(path: Path, fmt: registry.DataFormat, data_cfg, source: str) -> list[tuple[str, object]]:
    """(id, raw input) per sample of a manifest in the format the model was trained on (`data.format`), read
    by the same reader as training, rows without targets allowed."""
    samples = fmt.read_file(path, data_cfg, SkipReport())
    return [(sample.id or sample.where, sample.sources[source]) for sample in samples if source in sample.sources]


def stdin_lines() -> list[str]:
    """Lines of stdin decoded as UTF-8 whatever the locale says, so that a bad byte is named as stdin:LINE
    (Python's own decoding would fail with a UnicodeDecodeError traceback and no line number)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # stdin replaced by a text stream (tests, notebooks): already decoded
        return sys.stdin.read().splitlines()
    return decode_lines(buffer.read().splitlines(keepends=True), "stdin")


def text_lines(source: str) -> list[str]:
    """The lines of an input file (UTF-8, .gz allowed) or of stdin ("-")."""
    if source == "-":
        return stdin_lines()
    path = Path(source)
    check_not_folder(path, "a text file with one input per line", "this model reads text, not a folder of files")
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    return read_lines(path)


def read_inputs(paths: list[str], plugin, data_cfg=None, source: str = "src") -> list[tuple[str, object]]:
    """(where, raw input) pairs for the model's source `source`: lines of text files/stdin, or for path-based
    encoders file paths, folders (searched for the plugin's file types) and manifests of the model's data
    format (`data_cfg`: the data section it was trained with, or its task's)."""
    fmt = registry.get_data_format(data_cfg.format) if data_cfg is not None else None
    manifest = fmt.manifest if fmt is not None else None
    items: list[tuple[str, object]] = []
    for given in paths or ["-"]:
        if plugin.input_kind == "text":
            name = "stdin" if given == "-" else given
            items += [(f"{name}:{i}", line) for i, line in enumerate(text_lines(given), 1)]
        else:
            names = " ".join(stdin_lines()).split() if given == "-" else [given]
            for name in names:
                path = Path(name)
                if path.is_dir():
                    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in plugin.file_extensions)
                    if not found:
                        raise DataError(f"{path}: no files ending in {', '.join(plugin.file_extensions)} in this folder")
                    items += [(str(p), str(p)) for p in found]
                elif path.is_file() and manifest and path.suffix == manifest and manifest not in plugin.file_extensions:
                    items += read_manifest(path, fmt, data_cfg, source)
                elif path.is_file():
                    items.append((str(path), str(path)))
                else:
                    raise DataError(f"{path}: input file not found")
    return items


def parse_args(argv=None) -> argparse.Namespace:
    parser = checkpoint_parser("mmx-generate", "Generate text with a trained mmxattn model.", EPILOG)
    parser.add_argument("inputs", nargs="*", help="input files or folders; none or '-' = stdin")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--task", help="for a model trained on several tasks: which one to ask for (its prompt, "
                                       "encoder and data format)")
    return parse_with_generation_args(parser, argv)


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    model, tokenizers, cfg = load_model(args)
    view = task_view(cfg, tokenizers, args.task)
    if len(view.sources) != 1:
        raise MmxError(f"this model reads {len(view.sources)} sources ({', '.join(view.sources)}); mmx-generate takes "
                       "one (mmx-attend --tsv reads several)")
    (source, encoder), = view.sources.items()  # the data's name for it, and the model's encoder (the batch key)
    enc_cfg = encoder_configs(cfg)[encoder]
    plugin = registry.get_plugin(enc_cfg["name"])
    processor = registry.build_processor(enc_cfg["name"], enc_cfg, tokenizer=tokenizers, train=False)
    gen = generation_config(cfg.get("generation"), args)
    items = read_inputs(args.inputs, plugin, view.data, source)

    features = []
    for where, raw in items:
        if plugin.input_kind == "text" and not raw.strip():
            print(f"warning: {where}: empty input line, empty output", file=sys.stderr)
            features.append(None)
            continue
        try:
            features.append(processor(raw))
        except DataError as e:
            raise DataError(f"{where}: {e}") from e

    # Decode in length-sorted batches (less padding), then print in input order.
    outputs: list[list] = [[] for _ in items]
    order = sorted((i for i, f in enumerate(features) if f is not None), key=lambda i: processor.length(items[i][1]))
    with torch.inference_mode():
        for start in range(0, len(order), args.batch_size):
            chunk = order[start : start + args.batch_size]
            batch = {k: v.to(args.device) for k, v in processor.collate([features[i] for i in chunk]).items()}
            for i, hyps in zip(chunk, model.generate({encoder: batch}, gen, prompt=view.prompt)):
                outputs[i] = hyps

    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for i, ((where, _), hyps) in enumerate(zip(items, outputs)):
            prefix = f"{where}\t" if plugin.input_kind == "path" else ""  # the file, or its manifest id
            if gen.nbest > 1 and gen.strategy == "beam":
                for rank, h in enumerate(hyps):
                    out.write(f"{i}\t{rank}\t{h.score:.4f}\t{prefix}{tokenizers.target.decode(h.tokens)}\n")
            else:
                out.write(prefix + (tokenizers.target.decode(hyps[0].tokens) if hyps else "") + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    main()
