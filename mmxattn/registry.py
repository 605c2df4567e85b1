"""The encoder plugin contract and the registry that finds plugins through entry points.

A plugin is an object registered under a name in the entry-point group `mmxattn.encoders`:

    [project.entry-points."mmxattn.encoders"]
    text = "mmxattn_encoders.text:plugin"

Built-in encoders register exactly this way; the core never imports them by name. Names are listed from
package metadata without importing anything; a plugin is imported only when it is used. A plugin that
fails to import is reported with a warning naming it (or raises, with MMX_STRICT_PLUGINS=1); two
packages claiming one name is an error naming both.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .context import Context
from .errors import PluginError

ENTRY_POINT_GROUP = "mmxattn.encoders"
STRICT_ENV = "MMX_STRICT_PLUGINS"


class Processor:
    """Turns raw samples into model features; runs inside DataLoader workers.

    Subclasses implement `__call__` (one raw sample -> features), `collate` (a list of features ->
    a batch dict of padded tensors plus a [B, S] `mask`), and `length` (a cheap size estimate of a raw
    sample, in the encoder's sequence units, for length bucketing and token budgets).
    """

    def __call__(self, raw: Any) -> Any:
        raise NotImplementedError

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def length(self, raw: Any) -> int:
        return 1


class EncoderPlugin:
    """What a plugin provides under its registered name.

    input_kind: "text" (raw samples are strings: lines of a file or stdin) or "path" (raw samples are
    file paths), so that `mmx-generate` knows how to read inputs for it.
    file_extensions: for "path" plugins, the suffixes `mmx-generate` picks up when given a folder.
    """

    input_kind: str = "text"
    file_extensions: tuple[str, ...] = ()

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> nn.Module:
        """An nn.Module with an integer `output_dim` and `forward(batch) -> Context`."""
        raise NotImplementedError

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> Processor:
        raise NotImplementedError


@dataclass(frozen=True)
class PluginInfo:
    name: str
    value: str  # "module:attribute"
    package: str  # distribution that declares it ("<runtime>" for register_plugin)
    version: str


_runtime_plugins: dict[str, EncoderPlugin] = {}
_loaded: dict[str, EncoderPlugin] = {}


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in {"1", "true", "yes"}


def available() -> dict[str, PluginInfo]:
    """Every registered encoder name, from package metadata and `register_plugin`, importing nothing."""
    found: dict[str, PluginInfo] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        other = found.get(ep.name)
        if other is not None and (other.value, other.package) != (info.value, info.package):
            raise PluginError(
                f"two plugins claim the encoder name '{ep.name}': {other.value} from package "
                f"'{other.package}' and {info.value} from package '{info.package}'. Uninstall one of them "
                "or rename one entry point."
            )
        found[ep.name] = info
    for name in _runtime_plugins:
        if name in found:
            raise PluginError(f"encoder name '{name}' is registered at runtime and by package '{found[name].package}'")
        found[name] = PluginInfo(name, repr(_runtime_plugins[name]), "<runtime>", "")
    return found


def register_plugin(name: str, plugin: EncoderPlugin) -> None:
    """Register a plugin object in this process (for notebooks and tests; packages use entry points)."""
    if name in available():
        raise PluginError(f"an encoder named '{name}' is already registered; pick another name")
    _check_plugin(name, plugin)
    _runtime_plugins[name] = plugin


def unregister_plugin(name: str) -> None:
    _runtime_plugins.pop(name, None)
    _loaded.pop(name, None)


def _check_plugin(name: str, plugin: Any) -> None:
    if not (callable(getattr(plugin, "build_encoder", None)) and callable(getattr(plugin, "build_processor", None))):
        raise PluginError(
            f"encoder plugin '{name}' is a {type(plugin).__name__}, which lacks build_encoder/build_processor; "
            "a plugin must be an mmxattn.registry.EncoderPlugin (see README, 'Write an encoder plugin')."
        )


def get_plugin(name: str) -> EncoderPlugin:
    """Import (once) and return the plugin registered under `name`."""
    if name in _loaded:
        return _loaded[name]
    if name in _runtime_plugins:
        return _runtime_plugins[name]
    infos = available()
    if name not in infos:
        raise PluginError(
            f"unknown encoder '{name}'. Available encoders: {', '.join(sorted(infos)) or '(none)'}. "
            "Choose one of them with encoder=<name>, or install the package that provides it "
            "(`mmx-encoders` lists what is installed)."
        )
    info = infos[name]
    module_name, _, attr = info.value.partition(":")
    try:
        obj: Any = __import__(module_name, fromlist=["_"])
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as e:  # a broken plugin must not take the others down
        raise PluginError(
            f"encoder plugin '{name}' ({info.value}, package '{info.package}' {info.version}) failed to load: "
            f"{type(e).__name__}: {e}"
        ) from e
    _check_plugin(name, obj)
    _loaded[name] = obj
    return obj


def load_all() -> tuple[dict[str, EncoderPlugin], dict[str, str]]:
    """Load every plugin; broken ones are reported (warning, or error in strict mode), not fatal."""
    plugins, failures = {}, {}
    for name in available():
        try:
            plugins[name] = get_plugin(name)
        except PluginError as e:
            if _strict():
                raise
            warnings.warn(str(e), RuntimeWarning, stacklevel=2)
            failures[name] = str(e)
    return plugins, failures


def build_encoder(name: str, cfg: Mapping[str, Any], *, tokenizer=None) -> nn.Module:
    """Create the encoder registered under `name` and check it honours the contract."""
    encoder = get_plugin(name).build_encoder(cfg, tokenizer=tokenizer)
    if not isinstance(encoder, nn.Module):
        raise PluginError(f"encoder plugin '{name}' built a {type(encoder).__name__}; it must build an nn.Module")
    dim = getattr(encoder, "output_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise PluginError(
            f"encoder plugin '{name}' built {type(encoder).__name__} with output_dim={dim!r}; "
            "it must set a positive integer `output_dim`"
        )
    return encoder


def check_context(name: str, context: Any, batch_size: int) -> Context:
    if not isinstance(context, Context):
        raise PluginError(f"encoder '{name}' returned {type(context).__name__}; forward must return a Context")
    if context.states.shape[0] != batch_size:
        raise PluginError(f"encoder '{name}' returned {context.states.shape[0]} rows for a batch of {batch_size}")
    return context
