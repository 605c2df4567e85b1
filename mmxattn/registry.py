"""The plugin contracts and the registries that find plugins through entry points.

Two kinds of plugin object, each registered under a name in its own entry-point group:

    [project.entry-points."mmxattn.encoders"]        # encoder=<name>: EncoderPlugin
    text = "mmxattn_encoders.text:plugin"
    [project.entry-points."mmxattn.data_formats"]    # data.format=<name>: DataFormat
    speech_tsv = "mmxattn_encoders.audio_data:speech_tsv"

Built-in encoders and data formats register exactly this way; the core never imports them by name. The
rules, the same for both groups (`Registry`):
- Names are listed from package metadata without importing anything (`available`); a plugin module is
  imported only when that encoder is used (`get_plugin`), so a broken or heavy plugin costs nothing
  to a run that does not select it.
- A plugin that fails to import is an error when it is selected, and a warning naming the plugin, its
  package and the error when plugins are loaded in bulk (`load_all`, `mmx-encoders`). With
  MMX_STRICT_PLUGINS=1 (for plugin authors and CI) bulk loading raises instead.
- Two packages claiming one name is an error naming both, raised when that name is used (other names
  keep working) and listed by `mmx-encoders`; strict mode raises as soon as the names are listed.
Plugin configs (for `encoder=<name>`) are found through a second group, `mmxattn.configs`; see
`mmxattn.hydra_search`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .context import Context
from .errors import MmxError, PluginError

ENTRY_POINT_GROUP = "mmxattn.encoders"
DATA_FORMAT_GROUP = "mmxattn.data_formats"
STRICT_ENV = "MMX_STRICT_PLUGINS"


class Processor:
    """Turns raw samples into model features; runs inside DataLoader workers.

    Subclasses implement `__call__` (one raw sample -> features), `collate` (a list of features ->
    a batch dict of padded tensors plus a [B, S] `mask`), and `length` (a cheap size estimate of a raw
    sample, in the encoder's sequence units, for length bucketing and token budgets).
    """

    length_unit: str = "positions"  # what `length` counts, for messages ("tokens", "frames (10 ms)", ...)
    unit_seconds: float | None = None  # the duration of one `length` unit if it is one (10 ms frames: 0.01)

    def __call__(self, raw: Any) -> Any:
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def length(self, raw: Any) -> int:
        return 1

    def describe_context(self, raw: Any, n_positions: int):
        """Optional, for attention maps (`mmx-attend`): what the `n_positions` context positions of this
        sample show, as a `mmxattn.context.ContextView` (source pieces, the image and its patch grid, or
        a spectrogram). The default, None, numbers the positions."""
        return None


class EncoderPlugin:
    """What a plugin provides under its registered name.

    input_kind: "text" (raw samples are strings: lines of a file or stdin) or "path" (raw samples are
    file paths), so that `mmx-generate` knows how to read inputs for it.
    file_extensions: for "path" plugins, the suffixes `mmx-generate` picks up when given a folder.
    """

    input_kind: str = "text"
    file_extensions: tuple[str, ...] = ()

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> nn.Module:
        """An nn.Module with an integer `output_dim` and `forward(batch) -> Context`. An encoder that embeds
        the tokenizer's ids may expose its nn.Embedding as `token_embedding`, so that
        decoder.tie_source_embeddings=true can share it with the decoder."""
        raise NotImplementedError

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> Processor:
        raise NotImplementedError

    def summarize_files(self, files: Sequence[str], cfg: Mapping[str, Any], *, sampled: str) -> list[str]:
        """Optional, for "path" plugins: `mmx-data`'s lines about a sample of this source's files, read from
        their headers only (durations and sample rates, image sizes, feature shapes), each indented by four
        spaces. `sampled` says which files these are ("headers of all 8 files") for the first line; `cfg` is
        the encoder's config, to compare the files with (e.g. `sample_rate`). `mmxattn.data.summary` has the
        helpers the built-in plugins use. The default says nothing."""
        return []


@dataclass(frozen=True)
class PluginInfo:
    """One registration of an encoder name, as package metadata declares it (nothing imported)."""

    name: str
    value: str  # "module:attribute"
    package: str  # distribution that declares it ("<runtime>" for register_plugin)
    version: str

    def describe(self) -> str:
        return f"{self.value} from package '{self.package}' {self.version}".rstrip()


@dataclass
class DataFormat:
    """How one data set layout is read: `read(data_cfg, split, skipped) -> list[Sample]`.

    read:     the samples of split `split` (a key of the `data` config section naming the split's files),
              with `skipped` counting what `data.skip_invalid=true` dropped.
    manifest: the file suffix of one split (".tsv"), if a single such file holds a split. `mmx-generate`
              then reads a file of that kind in this format (`read_file`), so a model takes the manifests
              it was trained on. There the split is called "generate", and `data_cfg.for_generation` is
              true: a reader must then accept rows without a target (give them target "").
    guess:    optional, for `mmx-data DIR`: `guess(root) -> mmxattn.data.guess.Guess | None`, the overrides
              that select this format for the folder `root` if its files look like this format, else None.
              Guesses are tried in `guess_order` (lower first), so that a narrower format (speech manifests: a
              .tsv with an `audio` column) is tried before a broader one (any .tsv with a header).
    """

    read: Callable[..., list]
    manifest: str | None = None
    guess: Callable[[Path], Any] | None = None
    guess_order: int = 100

    def read_file(self, path: Path, data_cfg, skipped) -> list:
        """The samples of one manifest file in this format (`data.root` and the split name set from it)."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(data_cfg, {"root": str(path.parent), "generate": path.name, "skip_invalid": False,
                                         "for_generation": True})
        return self.read(cfg, "generate", skipped)


def strict() -> bool:
    """MMX_STRICT_PLUGINS=1: a broken, conflicting or ill-formed plugin is an error, never a warning."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """The objects registered in one entry-point group, found by name and imported only when used."""

    def __init__(self, group: str, what: str, check: Callable[[str, Any, str], None], select_with: str):
        self.group, self.what, self.check, self.select_with = group, what, check, select_with
        self.runtime: dict[str, Any] = {}
        self.loaded: dict[tuple[str, str], Any] = {}  # (name, value) -> object

    def scan(self) -> tuple[dict[str, PluginInfo], dict[str, list[PluginInfo]]]:
        """(name -> registration, name -> all registrations for names claimed more than once)."""
        claims: dict[str, list[PluginInfo]] = {}
        # entry_points() already keeps one distribution per name (the first on sys.path), so one package
        # installed twice (a wheel in a venv, an editable copy further down the path) is not a duplicate.
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist
            info = PluginInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
            same = [c for c in claims.get(ep.name, []) if (c.value, c.package) == (info.value, info.package)]
            if not same:
                claims.setdefault(ep.name, []).append(info)
        for name, obj in self.runtime.items():
            claims.setdefault(name, []).append(PluginInfo(name, f"{type(obj).__module__}.{type(obj).__name__}", "<runtime>", ""))
        found = {name: infos[0] for name, infos in claims.items()}
        return found, {name: infos for name, infos in claims.items() if len(infos) > 1}

    def conflict_error(self, name: str, infos: list[PluginInfo]) -> PluginError:
        claimed = " and ".join(i.describe() for i in sorted(infos, key=lambda i: (i.package, i.value)))
        return PluginError(
            f"{len(infos)} plugins claim the {self.what} name '{name}': {claimed}. Uninstall one of the packages "
            "(`pip uninstall <package>`) or rename one entry point in its pyproject.toml."
        )

    def available(self) -> dict[str, PluginInfo]:
        """Every registered name, from package metadata and `register`, importing nothing; a name claimed
        twice maps to its first registration (`get` and `conflicts` report it; strict mode raises now)."""
        found, conflicts = self.scan()
        if conflicts and strict():
            name, infos = next(iter(conflicts.items()))
            raise self.conflict_error(name, infos)
        return found

    def register(self, name: str, obj: Any) -> None:
        """Register an object in this process (for notebooks and tests; packages use entry points)."""
        if name in self.scan()[0]:
            raise PluginError(f"a {self.what} named '{name}' is already registered; pick another name")
        self.check(name, obj, "<runtime>")
        self.runtime[name] = obj

    def get(self, name: str, unknown_hint: str = "") -> Any:
        """Import (once) and return the object registered under `name`."""
        if name in self.runtime:
            return self.runtime[name]
        found, conflicting = self.scan()
        if name in conflicting:
            raise self.conflict_error(name, conflicting[name])
        if name not in found:
            raise PluginError(
                f"{self.select_with}={name}: unknown {self.what} '{name}'. Available: "
                f"{', '.join(sorted(found)) or '(none)'}.{unknown_hint} Choose one of them with "
                f"{self.select_with}=<name>, or install the package that provides it (registered in the "
                f"'{self.group}' entry-point group; `mmx-encoders` lists the installed encoders)."
            )
        info = found[name]
        key = (name, info.value)
        if key in self.loaded:
            return self.loaded[key]
        module_name, _, attr = info.value.partition(":")
        try:
            obj: Any = importlib.import_module(module_name.strip())
            for part in attr.strip().split(".") if attr else []:
                obj = getattr(obj, part)
        except Exception as e:  # a broken plugin must not take the others down
            raise PluginError(
                f"{self.what} plugin '{name}' ({info.describe()}) failed to load: {type(e).__name__}: {e}. "
                f"Fix or reinstall that package, or uninstall it if you do not use '{name}'."
            ) from e
        self.check(name, obj, info.describe())
        self.loaded[key] = obj
        return obj

    def load_all(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Every object: (name -> object, name -> error for those that failed: warned, or raised if strict)."""
        objects, failures = {}, {}
        for name in sorted(self.available()):
            try:
                objects[name] = self.get(name)
            except PluginError as e:
                if strict():
                    raise
                warnings.warn(str(e), RuntimeWarning, stacklevel=3)
                failures[name] = str(e)
        return objects, failures


def _check_encoder_plugin(name: str, plugin: Any, where: str) -> None:
    if isinstance(plugin, type):
        raise PluginError(
            f"encoder plugin '{name}' ({where}) is the class {plugin.__name__}, not an instance of it; "
            f"register an object, e.g. `plugin = {plugin.__name__}()`, and point the entry point at `plugin`"
        )
    if not (callable(getattr(plugin, "build_encoder", None)) and callable(getattr(plugin, "build_processor", None))):
        raise PluginError(
            f"encoder plugin '{name}' ({where}) is a {type(plugin).__name__}, which lacks build_encoder/"
            "build_processor; a plugin must be an mmxattn.registry.EncoderPlugin (see docs/writing-a-plugin.md)."
        )
    kind = getattr(plugin, "input_kind", None)
    if kind not in ("text", "path"):
        raise PluginError(f"encoder plugin '{name}' ({where}) has input_kind={kind!r}; it must be 'text' or 'path'")


def _check_data_format(name: str, fmt: Any, where: str) -> None:
    if not isinstance(fmt, DataFormat):
        raise PluginError(f"data format '{name}' ({where}) is a {type(fmt).__name__}; it must be an "
                          "mmxattn.registry.DataFormat(read=...) (see docs/writing-a-plugin.md)")


ENCODERS = Registry(ENTRY_POINT_GROUP, "encoder", _check_encoder_plugin, "encoder")
DATA_FORMATS = Registry(DATA_FORMAT_GROUP, "data format", _check_data_format, "data.format")


# The encoder registry's functions, as mmxattn and plugins have always called them.
def available() -> dict[str, PluginInfo]:
    return ENCODERS.available()


def conflicts() -> dict[str, list[PluginInfo]]:
    """Encoder names claimed by more than one plugin, with every claim."""
    return ENCODERS.scan()[1]


def register_plugin(name: str, plugin: EncoderPlugin) -> None:
    ENCODERS.register(name, plugin)


def unregister_plugin(name: str) -> None:
    ENCODERS.runtime.pop(name, None)


def get_plugin(name: str) -> EncoderPlugin:
    """Import (once) and return the encoder plugin registered under `name`."""
    hint = ""
    if name not in ENCODERS.runtime and name not in ENCODERS.scan()[0]:
        from .hydra_search import configs_naming  # lazy: hydra_search imports this module

        files = configs_naming(name)
        hint = (f" It is the `name:` of {', '.join(files)}: a config file's `name:` must be the entry-point name of "
                "the encoder it configures.") if files else ""
    return ENCODERS.get(name, hint)


def load_all() -> tuple[dict[str, EncoderPlugin], dict[str, str]]:
    """Load every encoder plugin: (name -> plugin, name -> error message for the ones that failed)."""
    return ENCODERS.load_all()


def get_data_format(name: str) -> DataFormat:
    return DATA_FORMATS.get(name)


def _built_by_plugin(name: str, what: str, build, cfg: Mapping[str, Any], **kwargs):
    """Call a plugin's builder; a plain exception from it (a config value of the wrong type or range that
    the plugin did not check) becomes one message naming the plugin and its config, not a traceback."""
    try:
        return build(cfg, **kwargs)
    except MmxError:
        raise
    except Exception as e:  # noqa: BLE001 - the plugin's code, fed the user's config
        values = ", ".join(f"{k}={v!r}" for k, v in dict(cfg).items() if k != "name")
        raise PluginError(
            f"encoder plugin '{name}' could not build its {what} from its config ({values}): {type(e).__name__}: "
            f"{e}. Check those encoder.* values (`mmx-train ... --cfg job` prints the composed config); if they "
            "are right, the plugin has a bug."
        ) from e


def build_encoder(name: str, cfg: Mapping[str, Any], *, tokenizer=None) -> nn.Module:
    """Create the encoder registered under `name` and check it honours the contract."""
    encoder = _built_by_plugin(name, "encoder", get_plugin(name).build_encoder, cfg, tokenizer=tokenizer)
    if not isinstance(encoder, nn.Module):
        raise PluginError(f"encoder plugin '{name}' built a {type(encoder).__name__}; it must build an nn.Module")
    dim = getattr(encoder, "output_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise PluginError(
            f"encoder plugin '{name}' built {type(encoder).__name__} with output_dim={dim!r}; "
            "it must set a positive integer `output_dim`"
        )
    return encoder


def build_processor(name: str, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> Processor:
    """Create the processor of the encoder registered under `name`."""
    return _built_by_plugin(name, "processor", get_plugin(name).build_processor, cfg, tokenizer=tokenizer, train=train)


def check_context(name: str, context: Any, batch_size: int) -> Context:
    if not isinstance(context, Context):
        raise PluginError(f"encoder '{name}' returned {type(context).__name__}; forward must return a Context")
    if context.states.shape[0] != batch_size:
        raise PluginError(f"encoder '{name}' returned {context.states.shape[0]} rows for a batch of {batch_size}")
    if context.mask.dtype != torch.bool:
        raise PluginError(f"encoder '{name}' returned a {context.mask.dtype} mask; Context.mask must be bool (True = real)")
    return context
