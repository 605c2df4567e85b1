"""`mmx-data`'s report: every split read and checked as training reads it, described in numbers.

`analyse(cfg)` reads the splits with the readers training uses (`Seq2SeqDataModule.read`, so a missing file
or a bad row is the same one-line error), builds the tokenizer and the encoders' processors as training does
(`Seq2SeqDataModule.dataset`, with no length limit so that overlong samples are counted, not fatal), and
describes per split: sizes, skipped samples, source lengths in each processor's unit, what the encoder
plugins say about a sample of the files (`EncoderPlugin.summarize_files`), target lengths and overlong
samples; then the target vocabulary and the batch budget it suggests (budget_advice.py).
"""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry
from ..config_checks import check_config
from ..errors import ConfigError, DataError
from ..sources import encoder_configs
from ..tokenizer import Tokenizers
from .budget_advice import suggest
from .datamodule import Seq2SeqDataModule
from .guess import file_of, reader_of
from .samples import Sample, SkipReport
from .summary import describe_values

SPLITS = ("train", "valid", "test")
WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


class SplitReport:
    def __init__(self, name: Any):
        self.name = name  # data.<split>
        self.samples: list[Sample] = []
        self.skipped = SkipReport()


def _tokenizers(cfg, train: list[Sample], max_lines: int, out: list[str]) -> Tokenizers:
    """As `Seq2SeqDataModule.prepare` builds them (from the training split), on a sample of at most
    `max_lines` training samples so that a huge corpus is not a long wait."""
    tok_cfg = cfg.tokenizer
    picked = train
    if not tok_cfg.get("model") and len(train) > max_lines:
        picked = [train[i] for i in sorted(random.Random(0).sample(range(len(train)), max_lines))]
        out.append(f"  (the tokenizer here is trained on {max_lines:,} random training samples of {len(train):,}; "
                   "mmx-train uses all, so token counts may differ slightly; --tokenizer-samples N changes it)")
    text_sources = [s for s, c in encoder_configs(cfg).items() if registry.get_plugin(c["name"]).input_kind == "text"]
    source_texts = ([smp.sources[s] for smp in picked for s in text_sources if smp.sources.get(s) is not None]
                    if text_sources else None)
    where = f"data.train={cfg.data.get('train')} ({len(train)} samples from {train[0].where}, ...)"
    return Tokenizers.build(tok_cfg, source_texts, [smp.target for smp in picked], where=where)


def analyse(cfg, *, max_files: int = 2000, tokenizer_samples: int = 200_000, top: int = 12,
            examples: int = 5) -> tuple[list[str], list[str]]:
    """The report's lines and the suggested overrides."""
    out: list[str] = []
    data = cfg.data
    check_config(cfg)  # the config errors training would stop at (data.root unset, values out of range)
    if data.get("synthetic") and not Path(str(data.root)).exists():
        raise ConfigError(f"data.root={data.root} does not exist yet: data.synthetic={data.synthetic} makes mmx-train "
                          "generate it there when it starts; mmx-data only reads data (run mmx-train once, or point "
                          "data.root at your own data with data.synthetic=null)")
    unbounded = copy.deepcopy(cfg)
    unbounded.data.max_len = 2**62  # read and check like training, but report overlong samples instead of stopping
    module = Seq2SeqDataModule.from_config(unbounded)  # the same readers (data.format -> registry.DATA_FORMATS) as training
    stopper = Seq2SeqDataModule.from_config(cfg)  # training's own check, for its message about an overlong sample
    splits = [s for s in SPLITS if data.get(s) not in (None, "")]
    if "train" not in splits:
        raise ConfigError("data.train is not set; the tokenizer and the batch budget come from the training split")
    reports: dict[str, SplitReport] = {}
    for split in splits:
        report = reports[split] = SplitReport(data.get(split))
        module.skipped = report.skipped
        report.samples = module.read(split)

    module.tokenizers = stopper.tokenizers = _tokenizers(cfg, reports["train"].samples, tokenizer_samples, out)
    configs = encoder_configs(cfg)
    max_len, skip = int(data.max_len), bool(data.skip_invalid)

    rows = [("split", "data.<split>", "samples", "skipped")]
    details: list[str] = []
    train_sizes: list[int] = []
    eval_longest = 0
    first_overlong: str | None = None
    vocabulary = Counter()
    for split, report in reports.items():
        module.skipped = report.skipped
        dataset = module.dataset(split, report.samples)  # training's checks (no source, ...) bar the length limit
        processors = dataset.processors
        lengths = {name: [] for name in processors}
        missing = Counter()
        sizes, overlong = list(dataset.sizes), []
        for sample, target, size in zip(dataset.samples, dataset.targets, dataset.sizes):
            present = {}
            for name, proc in processors.items():
                if sample.sources.get(name) is None:
                    missing[name] += 1
                else:
                    present[name] = proc.length(sample.sources[name])
                    lengths[name].append(present[name])
            if size > max_len:
                overlong.append((sample, present, len(target) + 1))
        targets = [s.target for s in dataset.samples]
        words = [len(t.split()) for t in targets]
        chars = [len(t) for t in targets]
        tokens = [len(t) + 1 for t in dataset.targets]
        skipped = report.skipped.total
        rows.append((split, str(report.name), f"{len(dataset):,}", f"{skipped:,}" if skip or skipped else "-"))

        details.append("")
        details.append(f"{split}: {len(dataset):,} samples (data.{split}={report.name}; first {dataset.samples[0].where})")
        if report.skipped.total:
            details.append(f"  {report.skipped.summary('samples (data.skip_invalid=true)')}")
        refs = [len(s.references) for s in dataset.samples]
        if max(refs) > 1:
            details.append(f"  references per sample: {describe_values(refs)}")
        for name, proc in processors.items():
            unit = getattr(proc, "length_unit", "positions")
            have = len(lengths[name])
            share = f" ({have:,} of {len(dataset):,} samples have it)" if missing[name] else ""
            details.append(f"  source '{name}' ({configs[name]['name']}) length in {unit}: {describe_values(lengths[name])}{share}")
            if split == "train":
                details += _files_read_as_text(name, configs[name]["name"], dataset.samples)
            if proc.unit_seconds and have:
                seconds = np.asarray(lengths[name]) * proc.unit_seconds
                details.append(f"    in seconds: {describe_values(seconds, 2)}; {seconds.sum() / 3600:,.2f} h in all")
            if registry.get_plugin(configs[name]["name"]).input_kind == "path" and have:
                raws = [s.sources[name] for s in dataset.samples if s.sources.get(name) is not None]
                details += _file_lines(configs[name], raws, max_files)
        details.append(f"  target length in tokens (EOS included): {describe_values(tokens)}")
        details.append(f"  target length in words: {describe_values(words)}")
        details.append(f"  target length in characters: {describe_values(chars)}")
        empty = sum(1 for t in targets if not t.strip())
        details.append(f"  empty targets: {empty:,}" + ("" if skip else " (the reader stops at an empty one: "
                                                         "data.skip_invalid=true drops and counts them)" if empty else ""))
        if overlong:
            details.append(f"  over data.max_len={max_len}: {len(overlong):,} samples "
                           f"({100 * len(overlong) / len(dataset):.2f}%); the first {min(examples, len(overlong))}:")
            for sample, present, target_len in overlong[:examples]:
                sides = [f"{n} {v}" for n, v in present.items()] + [f"target {target_len}"]
                details.append(f"    {sample.where}  ({', '.join(sides)})")
            if first_overlong is None and not skip:  # training's own error, from its own check of that sample
                try:
                    stopper.dataset(split, [overlong[0][0]])
                except DataError as e:
                    first_overlong = str(e)
        else:
            details.append(f"  over data.max_len={max_len}: none (longest {max(sizes):,})")
        if split == "train":
            train_sizes = sizes
            for t in targets:
                vocabulary.update(WORD.findall(t))
        else:
            eval_longest = max(eval_longest, max(sizes))

    out[:0] = [_table(rows)]
    out += details
    out.append("")
    out += _vocabulary_lines(cfg, vocabulary, module.tokenizers, top)
    if first_overlong is not None:
        out.append("")
        out.append(f"with data.max_len={max_len} and data.skip_invalid=false, training would stop at the first "
                   f"overlong sample:\n  error: {first_overlong}")
    suggestions, lines = suggest(cfg, train_sizes, skip, eval_longest)
    out.append("")
    out += lines
    return out, suggestions


def _files_read_as_text(source: str, encoder: str, samples: list[Sample]) -> list[str]:
    """A warning when a text encoder reads a source whose values are file names (e.g. data=speech_tsv with
    the default encoder=text: it would learn from the path strings)."""
    if registry.get_plugin(encoder).input_kind != "text":
        return []
    values = [str(s.sources[source]) for s in samples[:20] if s.sources.get(source) is not None]
    if not values or not all(Path(file_of(v)).is_file() for v in values):
        return []
    reader = reader_of(values)
    fix = f"encoder={reader}" if reader else "an encoder that reads files (mmx-encoders lists them)"
    key = "encoder" if source == "src" else f"encoders.{source}"
    return [f"  WARNING: {encoder} reads source '{source}' as text, but its values are file names (e.g. {values[0]}): "
            f"training would learn from the path strings. Choose {fix.replace('encoder=', key + '=')}"]


def _file_lines(enc_cfg, raws: list[str], limit: int, seed: int = 0) -> list[str]:
    """What the source's encoder plugin reads from the headers of up to `limit` of its distinct files (a
    seeded random sample when there are more)."""
    distinct = list(dict.fromkeys(str(r) for r in raws))
    chosen = distinct if len(distinct) <= limit else random.Random(seed).sample(distinct, limit)
    sampled = (f"headers of all {len(distinct):,} files" if len(chosen) == len(distinct) else
               f"headers of {len(chosen):,} random files of {len(distinct):,}")
    return registry.get_plugin(enc_cfg["name"]).summarize_files(chosen, enc_cfg, sampled=sampled)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


def _vocabulary_lines(cfg, vocabulary: Counter, tokenizers: Tokenizers, top: int) -> list[str]:
    lines = []
    lowered = Counter()
    for word, n in vocabulary.items():
        lowered[word.lower()] += n
    once = sum(1 for n in vocabulary.values() if n == 1)
    lines.append(f"target vocabulary (train; words and punctuation, case-sensitive): {len(vocabulary):,} distinct "
                 f"({len(lowered):,} lowercased), {once:,} seen once; {sum(vocabulary.values()):,} in all")
    lines.append("  top: " + " · ".join(f'"{w}" {n:,}' for w, n in vocabulary.most_common(top)))
    tok = cfg.tokenizer
    size = len(tokenizers.target)
    if tok.get("model"):
        lines.append(f"tokenizer: {tok.model} ({size:,} pieces)")
        return lines
    asked = int(tok.vocab_size)
    side = "sources and targets" if tokenizers.joint and tokenizers.source is tokenizers.target else "targets"
    trained = (f"tokenizer: tokenizer.vocab_size={asked} asked; SentencePiece ({tok.get('model_type', 'unigram')}, "
               f"trained on the {side}, as mmx-train does) made {size:,} pieces")
    if size < asked:
        lines.append(f"{trained}: the text supports no more. tokenizer.vocab_size={size} says what you get")
    else:
        lines.append(trained)
    if asked > len(lowered) and size >= asked * 0.9:
        lines.append(f"  more pieces than the {len(lowered):,} distinct (lowercased) target words: most pieces are whole "
                     "words, and rare words get no subword pieces of their own")
    return lines


