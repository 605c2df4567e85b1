"""`mmx-data`: look at a data set before training on it.

    mmx-data /path/to/corpus                                   # guess the format from the folder
    mmx-data recipe=translation/base data.root=DIR [key=value ...]   # exactly what mmx-train would read

It composes the real `mmx-train` config (Hydra's compose API, installed plugins' configs included), reads
every split that config names with the readers training uses (`Seq2SeqDataModule.read`, so a missing file
or a bad row is the same one-line error and exit code 2), builds the tokenizer and the encoders'
processors exactly as training does (`Seq2SeqDataModule.dataset` with no length limit), and prints per
split: sizes, skipped samples, source lengths in the processor's unit (`Processor.length`, `length_unit`),
audio durations and sample rates or image sizes from a bounded sample of file headers, target lengths,
samples over `data.max_len`; then the target vocabulary and the `data.max_len` / `data.max_tokens` it
suggests, as overrides to paste into mmx-train. No encoder runs and no model is built.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import hydra_search, registry
from ..config_checks import check_config
from ..data.batching import TokenBudgetBatchSampler, epoch_budget
from ..data.datamodule import Seq2SeqDataModule
from ..data.samples import Sample, SkipReport
from ..data.speech import split_fairseq_path
from ..errors import ConfigError, DataError
from ..sources import encoder_configs
from ..tokenizer import Tokenizers
from .common import user_errors_exit

EPILOG = """examples:
  mmx-data data/multi30k                       # guess the format; prints the overrides that select it
  mmx-data data/multi30k data.tgt_lang=fr      # guess, then change what the guess chose
  mmx-data recipe=translation/base data.root=data/multi30k data.src_lang=en data.tgt_lang=de
  mmx-data data=speech_tsv data.root=/data/mustc/en-de data.train=train_st data.valid=dev_st
  mmx-data data=coco data.root=/data/coco data.skip_invalid=true   # count bad entries instead of stopping

The config is composed exactly as mmx-train composes it (same recipes, groups, installed plugins), and
the splits are read by the same readers: an error here is the error training would give. Folders it
recognises: *.tsv manifests with an `audio` column (speech_tsv), other *.tsv with a header (multisource_tsv),
COCO captions JSON (coco), dataset_*.json Karpathy split files (karpathy), line-aligned train.xx / train.yy
files, optionally .gz (parallel_text)."""

SPLITS = ("train", "valid", "test")
TARGET_UPDATES = 100  # updates per epoch the suggested budget aims for at least (as recipe=translation/base)
KEEP = 0.999  # the share of training samples the suggested data.max_len keeps
NOT_LANGUAGES = {"txt", "tsv", "csv", "json", "jsonl", "md", "py", "yaml", "yml", "jpg", "png", "wav", "flac",
                 "mp3", "ogg", "zip", "npy", "npz", "tar", "model", "vocab", "log", "bpe", "tok", "sh", "html",
                 "xml", "sgm", "pt", "ckpt", "lock", "gz", "bz2", "xz"}
SOURCE_LIKE = ("src", "source")


# ---------------------------------------------------------------------------------------------------
# Guessing the format of a folder


def _peek(path: Path, size: int = 1 << 21) -> str:
    with open(path, "rb") as f:
        return f.read(size).decode("utf-8", errors="replace")


def _first_rows(path: Path, n: int = 20) -> list[list[str]]:
    """The first n rows after the header of a TSV file, split into fields."""
    rows = []
    with open(path, "rb") as f:
        f.readline()
        for raw in f:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.strip():
                rows.append(line.split("\t"))
            if len(rows) == n:
                break
    return rows


def _tsv_header(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            return f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    except OSError:
        return []


def _pick(names: Sequence[str], exact: Sequence[str], contains: Sequence[str]) -> str | None:
    """The name equal to one of `exact` (in that order), else the shortest containing one of `contains`."""
    for wanted in exact:
        if wanted in names:
            return wanted
    found = sorted((n for n in names if any(c in n.lower() for c in contains)), key=lambda n: (len(n), n))
    return found[0] if found else None


def _splits_of(names: Sequence[str]) -> dict[str, str]:
    """{train/valid/test: name} from split names such as train, dev_st, tst-COMMON_st, captions_val2017.json."""
    chosen: dict[str, str] = {}
    train = _pick(names, ("train",), ("train",))
    if train:
        chosen["train"] = train
    rest = [n for n in names if n != train]
    valid = _pick(rest, ("valid", "val", "dev", "validation"), ("valid", "dev", "val"))
    if valid:
        chosen["valid"] = valid
    rest = [n for n in rest if n != valid]
    test = _pick(rest, ("test",), ("test", "tst"))
    if test:
        chosen["test"] = test
    return chosen


def _find_folder(root: Path, relative: str) -> str | None:
    """The folder (relative to root, '.' for root itself) under which `relative` is a file: root, then its
    subfolders, then theirs."""
    if (root / relative).is_file():
        return "."
    level = [root]
    for _ in range(2):
        children = []
        for folder in level:
            try:
                children += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        for child in children:
            if (child / relative).is_file():
                return str(child.relative_to(root))
        level = children[:200]
    return None


class Guess:
    """A guessed data format: the overrides that select it, and what the guess noticed."""

    def __init__(self, what: str, overrides: list[str], notes: list[str] | None = None):
        self.what, self.overrides, self.notes = what, overrides, notes or []


def _guess_speech(root: Path, manifests: dict[str, list[str]]) -> Guess | None:
    speech = [name for name, header in manifests.items() if {"audio", "n_frames"} <= set(header)]
    if not speech:
        return None
    splits = _splits_of(speech)
    if "train" not in splits:
        raise ConfigError(f"{root}: speech manifests ({', '.join(n + '.tsv' for n in speech)}) but none for training "
                          "(a name with 'train'); name them: mmx-data data=speech_tsv data.root=DIR data.train=NAME ...")
    overrides = ["data=speech_tsv", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    notes = []
    header = manifests[splits["train"]]
    values = [r[header.index("audio")] for r in _first_rows(root / f"{splits['train']}.tsv") if len(r) == len(header)]
    by_suffix = _readers_by_suffix()
    encoder = _reader_of(values, by_suffix) or _audio_reader(by_suffix)
    if encoder:
        overrides.insert(1, f"encoder={encoder}")
    else:
        notes.append("no installed encoder reads these audio files (mmx-encoders lists them); choose one: encoder=NAME")
    if "valid" not in splits:
        overrides.append("data.valid=null")
        notes.append("no validation manifest found (a name with dev or val)")
    unused = sorted(set(speech) - set(splits.values()))
    if unused:
        notes.append(f"other manifests, not used: {', '.join(n + '.tsv' for n in unused)}")
    return Guess("fairseq speech-to-text manifests", overrides, notes)


def _readers_by_suffix() -> dict[str, str]:
    """{file suffix: the encoder plugin that reads such files} from the plugins' `file_extensions`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plugins, _ = registry.load_all()
    by_suffix: dict[str, str] = {}
    for name, plugin in sorted(plugins.items()):
        if plugin.input_kind == "path" and hydra_search.find_encoder_config(name):
            for suffix in plugin.file_extensions:
                by_suffix.setdefault(suffix.lower(), name)
    return by_suffix


def _reader_of(values: list[str], by_suffix: dict[str, str]) -> str | None:
    """The one plugin that reads files with these values' suffixes, or None."""
    readers = {by_suffix.get(Path(_split_slice(v)[0]).suffix.lower()) for v in values}
    return readers.pop() if values and len(readers) == 1 and None not in readers else None


def _audio_reader(by_suffix: dict[str, str]) -> str | None:
    """The plugin that reads the audio files soundfile reads (for manifests of .zip / .npy features)."""
    import soundfile as sf

    return next((by_suffix[f".{s.lower()}"] for s in sf.available_formats() if f".{s.lower()}" in by_suffix), None)


def _path_encoders(root: Path, header: list[str], rows: list[list[str]], default_text: str) -> dict[str, str]:
    """{column: encoder name}: each column whose values are file names goes to the plugin that reads files
    with that suffix (`file_extensions`), the others to the default text encoder."""
    by_suffix = _readers_by_suffix()
    chosen = {}
    for index, column in enumerate(header):
        values = [r[index].strip() for r in rows if len(r) == len(header) and r[index].strip()]
        files = values and all((Path(v) if Path(v).is_absolute() else root / v).is_file() for v in values[:5])
        reader = _reader_of(values, by_suffix)
        chosen[column] = reader if (reader and files) else default_text
    return chosen


def _guess_multisource(root: Path, manifests: dict[str, list[str]], default_text: str) -> Guess | None:
    tables = {name: header for name, header in manifests.items() if len(header) >= 2}
    splits = _splits_of(list(tables))
    if "train" not in splits:
        return None
    header = tables[splits["train"]]
    target = next((c for c in ("tgt", "target", "tgt_text") if c in header), header[-1])
    sources = [c for c in header if c not in ("id", target)]
    if not sources:
        return None
    rows = _first_rows(root / f"{splits['train']}.tsv")
    encoders = _path_encoders(root, header, rows, default_text)
    overrides = ["data=multisource_tsv", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    if "valid" not in splits:
        overrides.append("data.valid=null")
    if target != "tgt":
        overrides.append(f"data.target_column={target}")
    paths = [c for c in sources if encoders[c] != default_text]
    if paths:
        overrides.append(f"data.path_columns=[{','.join(paths)}]")
    if sources != ["src"] or paths:  # one text column `src` is what the default `encoder` reads
        overrides += ["~encoder"] + [f"+encoder@encoders.{c}={encoders[c]}" for c in sources]
    notes = [f"sources: {', '.join(f'{c} ({encoders[c]})' for c in sources)}; target column: {target}"]
    return Guess("tab-separated samples with a header (one column per source)", overrides, notes)


def _guess_captions(root: Path) -> Guess | None:
    files = sorted(root.glob("*.json")) + sorted(root.glob("*/*.json"))
    karpathy, coco = [], []
    for path in files:
        head = _peek(path)
        if '"images"' in head and '"sentences"' in head and '"filename"' in head:
            karpathy.append((path, head))
        elif '"images"' in head and '"file_name"' in head:
            coco.append((path, head))
    if karpathy:
        path, head = karpathy[0]
        overrides = ["data=karpathy", f"data.root={root}", f"data.annotations={path.relative_to(root)}"]
        filename = re.search(r'"filename"\s*:\s*"([^"]+)"', head)
        encoder = _reader_of(re.findall(r'"filename"\s*:\s*"([^"]+)"', head)[:20], _readers_by_suffix())
        if encoder:
            overrides.insert(1, f"encoder={encoder}")
        filepath = re.search(r'"filepath"\s*:\s*"([^"]*)"', head)
        notes = []
        if filename:
            relative = str(Path(filepath.group(1) if filepath else "") / filename.group(1))
            folder = _find_folder(root, relative)
            if folder is None:
                notes.append(f"image {relative} not found under {root} or its subfolders; set data.images=FOLDER")
            elif folder != ".":
                overrides.append(f"data.images={folder}")
        splits = set(re.findall(r'"split"\s*:\s*"([^"]+)"', head))
        if splits and "restval" not in splits:
            overrides.append("data.train=[train]")
        return Guess(f"Karpathy split file ({path.name})", overrides, notes)
    if not coco:
        return None
    captions = [c for c in coco if "caption" in c[0].name.lower()] or coco
    by_name = {str(p.relative_to(root)): head for p, head in captions}
    splits = _splits_of(list(by_name))
    if "train" not in splits:
        return None
    overrides = ["data=coco", f"data.root={root}"] + [f"data.{k}={v}" for k, v in splits.items()]
    if "valid" not in splits:
        overrides.append("data.valid=null")
    notes = []
    encoder = _reader_of(re.findall(r'"file_name"\s*:\s*"([^"]+)"', by_name[splits["train"]])[:20], _readers_by_suffix())
    if encoder:
        overrides.insert(1, f"encoder={encoder}")
    else:
        notes.append("no installed encoder reads these image files (mmx-encoders lists them); choose one: encoder=NAME")
    for split, name in splits.items():
        found = re.search(r'"file_name"\s*:\s*"([^"]+)"', by_name[name])
        if not found:
            continue
        folder = _find_folder(root, found.group(1))
        if folder is None:
            notes.append(f"image {found.group(1)} of {name} not found under {root}; set data.images.{split}=FOLDER")
        else:
            overrides.append(f"data.images.{split}={folder}")
    return Guess("COCO captions JSON", overrides, notes)


LANGUAGE = re.compile(r"^(?P<prefix>.+?)\.(?P<lang>[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,4})?|src|tgt|source|target)(?:\.gz)?$")


def _guess_parallel(root: Path) -> Guess | None:
    languages: dict[str, set[str]] = {}
    for path in root.iterdir():
        found = LANGUAGE.match(path.name)
        if path.is_file() and found and found["lang"].lower() not in NOT_LANGUAGES:
            languages.setdefault(found["prefix"], set()).add(found["lang"])
    prefixes = [p for p, langs in languages.items() if len(langs) >= 2]
    splits = _splits_of(prefixes)
    if "train" not in splits:
        return None
    common = set(languages[splits["train"]])
    for split in ("valid", "test"):
        if split in splits and len(common & languages[splits[split]]) >= 2:
            common &= languages[splits[split]]
        elif split in splits:
            del splits[split]
    ordered = sorted(common)
    source = next((lang for lang in ("en", *SOURCE_LIKE) if lang in common), ordered[0])
    target = next((lang for lang in ("tgt", "target") if lang in common and lang != source),
                  next(lang for lang in ordered if lang != source))
    overrides = ["data=parallel_text", f"data.root={root}", f"data.src_lang={source}", f"data.tgt_lang={target}"]
    overrides += [f"data.{k}={v}" for k, v in splits.items()]
    if "valid" not in splits:
        overrides.append("data.valid=null")
    notes = []
    if len(common) > 2:
        notes.append(f"languages in every split: {', '.join(ordered)}; chose {source} -> {target} "
                     "(pick another pair with data.src_lang=... data.tgt_lang=...)")
    else:
        notes.append(f"languages: {source} -> {target} (swap with data.src_lang={target} data.tgt_lang={source})")
    unused = sorted(set(prefixes) - set(splits.values()))
    if unused:
        notes.append(f"other file sets, not used: {', '.join(unused)} (data.test=NAME scores one at the end)")
    return Guess("line-aligned parallel text", overrides, notes)


def guess_format(root: Path, default_text: str = "text") -> Guess:
    """The overrides that select `root`'s data format, from its file names and the first bytes of its files."""
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'folder not found'}; give the folder that "
                        "holds the data set, or compose the config: mmx-data data=<format> data.root=DIR")
    manifests = {p.stem: _tsv_header(p) for p in sorted(root.glob("*.tsv"))}
    for guess in (_guess_speech(root, manifests), _guess_multisource(root, manifests, default_text),
                  _guess_captions(root), _guess_parallel(root)):
        if guess is not None:
            return guess
    names = sorted(p.name for p in root.iterdir())
    raise ConfigError(
        f"{root}: cannot tell the data format from its files ({', '.join(names[:12]) or 'none'}"
        f"{', ...' if len(names) > 12 else ''}). Name it: mmx-data data=<format> data.root={root} ... (formats: "
        f"{', '.join(available_formats())}; their files are described in conf/data/<format>.yaml)"
    )


def available_formats() -> list[str]:
    from importlib import resources

    modules = [hydra_search.BUILTIN_CONFIG_PACKAGE] + [c.module for c in hydra_search.config_packages()[0]]
    names = set()
    for module in modules:
        folder = resources.files(module) / "data"
        if folder.is_dir():
            names.update(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
    return sorted(names)


# ---------------------------------------------------------------------------------------------------
# Composing the config mmx-train would use


def compose_config(overrides: list[str]):
    """(the config `mmx-train <overrides>` composes, the overrides it composes from, whether the quickstart
    recipe was added): same root config, groups, recipes, plugin configs and checks as mmx-train."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .train import check_recipe_argument, with_default_recipe

    hydra_search.register()  # installed plugins' configs, as mmx-train
    given = list(overrides)
    overrides = check_recipe_argument(with_default_recipe(given))
    try:
        with initialize_config_module(hydra_search.BUILTIN_CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"cannot compose the config from {' '.join(overrides)}: {e}") from e
    check_config(cfg)  # the config errors training would stop at first (data.root unset, values out of range)
    return cfg, overrides, len(overrides) > len(given)  # True: mmx-train would add recipe=translation/quickstart


# ---------------------------------------------------------------------------------------------------
# Numbers


def quantiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"min": a.min(), "median": float(np.quantile(a, 0.5, method="higher")),
            "p95": float(np.quantile(a, 0.95, method="higher")), "max": a.max(), "mean": a.mean()}


def _num(x: float, digits: int = 1) -> str:
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def describe(values: Sequence[float], digits: int = 1) -> str:
    if not len(values):
        return "none"
    q = quantiles(values)
    return (f"min {_num(q['min'], digits)}  median {_num(q['median'], digits)}  p95 {_num(q['p95'], digits)}  "
            f"max {_num(q['max'], digits)}  (mean {q['mean']:,.{digits}f})")


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "es" if word.endswith("ch") else "s")


def nice_up(x: float) -> int:
    """x rounded up to two significant digits (87 -> 87, 123 -> 130, 3456 -> 3500)."""
    x = max(1, math.ceil(x))
    step = 10 ** max(0, len(str(x)) - 2)
    return -(-x // step) * step


def _frequent(counter: Counter, n: int = 6) -> str:
    total = sum(counter.values())
    parts = [f"{key} ×{count:,}" + (f" ({100 * count / total:.0f}%)" if len(counter) > 1 else "")
             for key, count in counter.most_common(n)]
    return ", ".join(parts) + (f", ... ({len(counter)} distinct)" if len(counter) > n else "")


WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


# ---------------------------------------------------------------------------------------------------
# File headers: audio (soundfile) and images (PIL), read for a bounded sample of a source's files


def _split_slice(raw: str) -> tuple[str, int | None]:
    """fairseq's `file:OFFSET:LENGTH` -> (file, LENGTH); a plain path -> (path, None)."""
    file, _, length = split_fairseq_path(str(raw))
    return file, length


def probe_files(raws: list[str], limit: int, seed: int = 0) -> dict[str, Any]:
    """Header facts of up to `limit` distinct files of one source (a seeded random sample when there are more)."""
    import soundfile as sf
    from PIL import Image

    Image.init()
    image_suffixes = {s.lower() for s in Image.registered_extensions()}
    audio_suffixes = {f".{s.lower()}" for s in sf.available_formats()}
    distinct = list(dict.fromkeys(str(r) for r in raws))
    chosen = distinct if len(distinct) <= limit else random.Random(seed).sample(distinct, limit)
    facts: dict[str, Any] = {"files": len(distinct), "read": 0, "audio": [], "images": [], "other": Counter(),
                             "unreadable": []}
    for raw in chosen:
        file, length = _split_slice(raw)
        suffix = Path(file).suffix.lower()
        if suffix in (".npy", ".zip"):
            facts["other"]["precomputed features (.npy / .zip entries: no audio header)"] += 1
            continue
        try:
            if suffix in audio_suffixes or suffix not in image_suffixes:
                try:
                    info = sf.info(file)
                    frames = length if length is not None else info.frames
                    facts["audio"].append((info.samplerate, frames / info.samplerate, info.channels,
                                           f"{info.format} {info.subtype}"))
                    facts["read"] += 1
                    continue
                except Exception:
                    if suffix in audio_suffixes:
                        raise
            with Image.open(file) as image:  # reads the header only
                facts["images"].append((image.size[0], image.size[1], image.mode, image.format))
            facts["read"] += 1
        except Exception as e:  # noqa: BLE001 - reported, the loader will name it in training
            facts["unreadable"].append(f"{file} ({type(e).__name__}: {str(e)[:80]})")
    facts["sampled"] = len(chosen)
    return facts


# ---------------------------------------------------------------------------------------------------
# Reading the splits as training does


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


def _world(cfg) -> tuple[int, int]:
    """(processes, gradient accumulation) of the trainer config: updates per epoch = batches / both."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif hasattr(devices, "__len__") and not isinstance(devices, str):
        n = len(devices)
    else:
        n = 1
    nodes = trainer.get("num_nodes", 1) or 1
    accumulate = trainer.get("accumulate_grad_batches", 1) or 1
    return n * int(nodes), int(accumulate)


def _batches(sizes: Sequence[int], max_tokens: int, max_sentences: int | None) -> int:
    return len(TokenBudgetBatchSampler(sizes, max_tokens=max_tokens, max_sentences=max_sentences, shuffle=False))


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
            details.append(f"  references per sample: {describe(refs)}")
        for name, proc in processors.items():
            unit = getattr(proc, "length_unit", "positions")
            have = len(lengths[name])
            share = f" ({have:,} of {len(dataset):,} samples have it)" if missing[name] else ""
            details.append(f"  source '{name}' ({configs[name]['name']}) length in {unit}: {describe(lengths[name])}{share}")
            if split == "train":
                details += _files_read_as_text(name, configs[name]["name"], dataset.samples)
            if "10 ms" in unit and have:
                seconds = np.asarray(lengths[name]) * 0.01
                details.append(f"    in seconds: {describe(seconds, 2)}; {seconds.sum() / 3600:,.2f} h in all")
            if registry.get_plugin(configs[name]["name"]).input_kind == "path" and have:
                raws = [s.sources[name] for s in dataset.samples if s.sources.get(name) is not None]
                details += _file_lines(probe_files(raws, max_files), configs[name])
        details.append(f"  target length in tokens (EOS included): {describe(tokens)}")
        details.append(f"  target length in words: {describe(words)}")
        details.append(f"  target length in characters: {describe(chars)}")
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
    if not values or not all(Path(_split_slice(v)[0]).is_file() for v in values):
        return []
    by_suffix = _readers_by_suffix()
    reader = _reader_of(values, by_suffix)
    fix = f"encoder={reader}" if reader else "an encoder that reads files (mmx-encoders lists them)"
    key = "encoder" if source == "src" else f"encoders.{source}"
    return [f"  WARNING: {encoder} reads source '{source}' as text, but its values are file names (e.g. {values[0]}): "
            f"training would learn from the path strings. Choose {fix.replace('encoder=', key + '=')}"]


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


def _file_lines(facts: dict[str, Any], enc_cfg) -> list[str]:
    lines = []
    sampled = (f"headers of all {facts['files']:,} files" if facts["sampled"] == facts["files"] else
               f"headers of {facts['sampled']:,} random files of {facts['files']:,}")
    if facts["audio"]:
        rates = Counter(a[0] for a in facts["audio"])
        lines.append(f"    audio ({sampled}): duration in s {describe([a[1] for a in facts['audio']], 2)}")
        lines.append(f"    sample rates: {_frequent(Counter(f'{r} Hz' for r in rates.elements()))}; channels: "
                     f"{_frequent(Counter(a[2] for a in facts['audio']))}; {_frequent(Counter(a[3] for a in facts['audio']), 3)}")
        wanted = enc_cfg.get("sample_rate") if hasattr(enc_cfg, "get") else None
        if wanted and set(rates) - {int(wanted)}:
            other = sum(n for r, n in rates.items() if r != int(wanted))
            lines.append(f"    {other:,} of {facts['read']:,} read are not at encoder.sample_rate={wanted}: resampled "
                         "when loaded (costs time in every epoch; resample the files once to save it)")
    if facts["images"]:
        images = facts["images"]
        sizes = Counter(f"{w}×{h}" for w, h, _, _ in images)
        lines.append(f"    images ({sampled}): width {describe([i[0] for i in images])}")
        lines.append(f"      height {describe([i[1] for i in images])}")
        lines.append(f"      aspect ratio (w/h) {describe([i[0] / max(1, i[1]) for i in images], 2)}")
        lines.append(f"      sizes: {_frequent(sizes, 4)}; modes: {_frequent(Counter(i[2] for i in images))}; "
                     f"formats: {_frequent(Counter(str(i[3]) for i in images))}")
    for what, n in facts["other"].items():
        lines.append(f"    {what}: {n:,} of those sampled")
    if facts["unreadable"]:
        lines.append(f"    UNREADABLE: {len(facts['unreadable']):,} of {facts['sampled']:,} sampled; training stops at "
                     f"such a file unless data.skip_invalid=true. E.g. {'; '.join(facts['unreadable'][:3])}")
    return lines


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


def suggest(cfg, sizes: list[int], skip: bool, eval_longest: int = 0) -> tuple[list[str], list[str]]:
    """(suggested overrides, the lines explaining them) for data.max_len and data.max_tokens.

    sizes: the training samples' sizes; eval_longest: the longest validation / test sample, which the
    suggested data.max_len keeps (a test sample dropped as overlong would change the score)."""
    data = cfg.data
    max_len, max_tokens = int(data.max_len), int(data.max_tokens)
    max_sentences = data.get("max_sentences")
    min_batches = data.get("min_batches_per_epoch")
    world, accumulate = _world(cfg)
    per_update = world * accumulate
    lines = ["batch budget (train; a sample's size = max(each source's length, target tokens + 1), in the units above):"]
    overrides: list[str] = []
    ordered = np.sort(np.asarray(sizes))
    longest = int(ordered[-1])
    # data.max_len: keep every sample if the limit allows, else the smallest round number keeping 99.9%
    if max(longest, eval_longest) <= max_len:
        new_len = max_len
        lines.append(f"  data.max_len={max_len} keeps every sample (the longest is {longest:,}"
                     + (f"; of valid/test {eval_longest:,}" if eval_longest else "") + "): unchanged")
    else:
        keep_at = int(ordered[min(len(ordered) - 1, math.ceil(KEEP * len(ordered)) - 1)])
        new_len = nice_up(longest) if nice_up(longest) <= 1.25 * nice_up(keep_at) else nice_up(keep_at)
        evaluation = ""
        if eval_longest > new_len:
            new_len, evaluation = nice_up(eval_longest), f", and every valid/test sample (the longest is {eval_longest:,})"
        dropped = int((ordered > new_len).sum())
        lines.append(f"  data.max_len={max_len} drops {int((ordered > max_len).sum()):,} training samples; "
                     f"{100 * KEEP:.1f}% are ≤ {keep_at:,}, the longest is {longest:,} -> data.max_len={new_len} keeps "
                     f"{100 * (len(ordered) - dropped) / len(ordered):.2f}%{evaluation}"
                     + (f" (drop the other {dropped:,} with data.skip_invalid=true)" if dropped else ""))
        overrides.append(f"data.max_len={new_len}")
        if dropped and not skip:
            overrides.append("data.skip_invalid=true")
    kept = ordered[ordered <= new_len]
    total, longest = int(kept.sum()), int(kept[-1])
    effective = epoch_budget(kept.tolist(), max_tokens, min_batches)
    batches = _batches(kept.tolist(), effective, max_sentences)
    updates = math.ceil(batches / per_update)
    how = f" ({world} processes × {accumulate} accumulated batches per update)" if per_update > 1 else ""
    lowered = (f" (lowered to {effective:,} by data.min_batches_per_epoch={min_batches}: {total:,} / {min_batches})"
               if effective != max_tokens else "")
    lines.append(f"  {len(kept):,} samples, {total:,} in all. data.max_tokens={max_tokens}{lowered}: {_n(batches, 'batch')} "
                 f"of ~{len(kept) / batches:,.1f} samples per epoch -> {_n(updates, 'update')} per epoch{how}")
    if updates >= TARGET_UPDATES and effective >= longest:
        lines.append(f"  data.max_tokens={max_tokens} is fine: ≥ {TARGET_UPDATES} updates per epoch, and the longest "
                     f"sample ({longest:,}) fits in a batch: unchanged")
    else:
        wanted = total // (TARGET_UPDATES * per_update)
        budget = max(longest, wanted // 8 * 8 if wanted >= 64 else wanted)
        new_batches = _batches(kept.tolist(), budget, max_sentences)
        reason = (f"the longest sample ({longest:,}) does not fit in data.max_tokens={effective}"
                  if effective < longest else f"only {_n(updates, 'update')} per epoch")
        lines.append(f"  {reason}. For ≥ {TARGET_UPDATES} updates per epoch: {total:,} / ({TARGET_UPDATES} × {per_update}) "
                     f"= {wanted:,}" + (f", but a batch must hold the longest sample ({longest:,})" if budget == longest
                                        else "") + f" -> data.max_tokens={budget} ({_n(new_batches, 'batch')} of "
                     f"~{len(kept) / new_batches:,.1f} samples)")
        if budget == longest and new_batches < TARGET_UPDATES * per_update:
            lines.append(f"  ({len(kept):,} samples are too few for {TARGET_UPDATES} updates per epoch even in batches "
                         "of one: count epochs rather than updates, or set trainer.max_steps)")
        overrides.append(f"data.max_tokens={budget}")
        if min_batches:
            overrides.append("data.min_batches_per_epoch=null")
    return overrides, lines


# ---------------------------------------------------------------------------------------------------
# The command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmx-data", description="Read a data set as mmx-train would, and print what to know before training: "
        "sizes, lengths, durations, sample rates, image sizes, overlong and skipped samples, vocabulary, and the "
        "batch budget it suggests.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("args", nargs="*", metavar="DIR | key=value",
                        help="a data folder (its format is guessed) and/or mmx-train config overrides")
    parser.add_argument("--max-files", type=int, default=2000,
                        help="audio / image headers read per source and split, a random sample (default 2000)")
    parser.add_argument("--tokenizer-samples", type=int, default=200_000,
                        help="train the tokenizer on at most this many training samples (default 200000)")
    parser.add_argument("--top", type=int, default=12, help="most frequent target words shown (default 12)")
    parser.add_argument("--examples", type=int, default=5, help="overlong samples named per split (default 5)")
    args = parser.parse_args(argv)
    if not args.args:
        parser.error("give a data folder (mmx-data DIR) or the config (mmx-data data=<format> data.root=DIR ...)")
    return args


@user_errors_exit
def main(argv=None) -> None:
    args = parse_args(argv)
    folders = [a for a in args.args if "=" not in a and not a.startswith(("~", "+"))]
    overrides = [a for a in args.args if a not in folders]
    if len(folders) > 1:
        raise ConfigError(f"one data folder at a time; got {', '.join(folders)} (overrides are written key=value)")
    guess = None
    if folders:
        root = Path(folders[0])
        if any(o.lstrip("+").split("=", 1)[0] in ("recipe", "data", "data.format") for o in overrides):
            overrides = [f"data.root={root}", *overrides]  # the user chose the format: the folder is data.root
        else:
            guess = guess_format(root, _default_text_encoder())
            overrides = [*guess.overrides, *overrides]
    cfg, used, quickstart = compose_config(overrides)
    print(f"mmx-data: {cfg.data.format} data under data.root={cfg.data.root}")
    if guess is not None:
        print(f"format guessed: {guess.what}")
        for note in guess.notes:
            print(f"  {note}")
        print(f"  the same data for training: mmx-train {' '.join(_quote(o) for o in guess.overrides)}")
    elif quickstart:
        print("(no recipe, data or encoder given: recipe=translation/quickstart, as a bare mmx-train)")
    sources = ", ".join(f"{s}={c['name']}" for s, c in encoder_configs(cfg).items())
    if guess is None or used != guess.overrides:
        print(f"config: {' '.join(_quote(o) for o in used)}")
    print(f"  encoders: {sources}; "
          f"data.max_len={cfg.data.max_len}, data.max_tokens={cfg.data.max_tokens}, "
          f"data.skip_invalid={str(bool(cfg.data.skip_invalid)).lower()}")
    print()
    lines, suggestions = analyse(cfg, max_files=args.max_files, tokenizer_samples=args.tokenizer_samples,
                                 top=args.top, examples=args.examples)
    print("\n".join(lines))
    print()
    if suggestions:
        print("suggested overrides (add them to the mmx-train command):")
        print("  " + " ".join(suggestions))
    else:
        print("suggested overrides: none, the config suits this data")
    sys.stdout.flush()


def _default_text_encoder() -> str:
    """The encoder `mmx-train` selects by default (conf/train.yaml), for the text columns of a guessed table."""
    from importlib import resources

    import yaml

    text = (resources.files(hydra_search.BUILTIN_CONFIG_PACKAGE) / "train.yaml").read_text(encoding="utf-8")
    for entry in yaml.safe_load(text).get("defaults", []):
        if isinstance(entry, dict) and "encoder" in entry:
            return str(entry["encoder"])
    return "text"


def _quote(override: str) -> str:
    return f"'{override}'" if override.startswith("~") or any(c in override for c in " []{}*?$'\"") else override


if __name__ == "__main__":
    main()
