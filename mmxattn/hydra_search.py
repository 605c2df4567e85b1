"""Plugin configs on Hydra's search path, without `hydra_plugins` namespace packages.

A plugin package ships its Hydra configs in an importable package (one with an `__init__.py`) laid out
like mmxattn's own `conf/`, e.g. `my_plugin/conf/encoder/my_encoder.yaml`, and names that package in the
entry-point group `mmxattn.configs`:

    [project.entry-points."mmxattn.configs"]
    my_plugin = "my_plugin.conf"

`register()` adds a Hydra SearchPathPlugin (programmatically, before `hydra.main` composes anything)
that appends `pkg://my_plugin.conf` to the search path, so `mmx-train encoder=my_encoder` finds the
file. Why not the usual `hydra_plugins.<name>` namespace package: Hydra discovers those by walking the
namespace package's `__path__`, which PEP 660 editable installs (setuptools' import-hook finder) do not
extend (hydra #2359), so the plugin silently vanishes under `pip install -e`. A `pkg://` path is
resolved by a plain import, which works for wheels and editable installs alike.

Plugins may also ship recipes (`my_plugin/conf/recipe/<task>/<name>.yaml`) or other config groups;
mmxattn's own configs come first on the search path, so a plugin cannot shadow a built-in file.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata, resources

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

from . import registry
from .errors import PluginError

CONFIG_ENTRY_POINT_GROUP = "mmxattn.configs"
BUILTIN_CONFIG_PACKAGE = "mmxattn.conf"


@dataclass(frozen=True)
class ConfigPackage:
    """A package of Hydra configs declared by an installed distribution."""

    name: str  # the entry point's name
    module: str  # importable package holding the YAML files, e.g. "my_plugin.conf"
    package: str  # distribution
    version: str

    @property
    def search_path(self) -> str:
        return f"pkg://{self.module}"


def _module_of(value: str) -> str:
    # Accept "my_plugin.conf", "pkg://my_plugin.conf" and "pkg://my_plugin/conf".
    return value.strip().removeprefix("pkg://").replace("/", ".").strip(".")


def declared_config_packages() -> list[ConfigPackage]:
    """Every `mmxattn.configs` entry point, from package metadata (nothing imported)."""
    found = []
    for ep in metadata.entry_points(group=CONFIG_ENTRY_POINT_GROUP):
        dist = ep.dist
        found.append(ConfigPackage(ep.name, _module_of(ep.value), dist.name if dist else "?", dist.version if dist else "?"))
    return sorted(set(found), key=lambda c: (c.package, c.name))


def check_config_package(cfg_pkg: ConfigPackage) -> str | None:
    """None if Hydra can read configs from it, else why not (it is then left off the search path)."""
    try:
        importlib.import_module(cfg_pkg.module)
        files = resources.files(cfg_pkg.module)
    except Exception as e:  # a broken plugin package must not break Hydra for everyone
        return f"{type(e).__name__}: {e}"
    if not (files / "__init__.py").is_file():
        return f"{cfg_pkg.module} has no __init__.py; Hydra reads pkg:// configs only from regular packages"
    return None


def config_packages() -> tuple[list[ConfigPackage], dict[ConfigPackage, str]]:
    """(usable config packages, broken ones -> error). Broken ones warn, or raise in strict mode."""
    usable, broken = [], {}
    for cfg_pkg in declared_config_packages():
        error = check_config_package(cfg_pkg)
        if error is None:
            usable.append(cfg_pkg)
            continue
        message = (
            f"config package '{cfg_pkg.module}' (entry point '{cfg_pkg.name}' in group {CONFIG_ENTRY_POINT_GROUP}, "
            f"package '{cfg_pkg.package}' {cfg_pkg.version}) cannot be read and is left off Hydra's search path: {error}"
        )
        if registry.strict():
            raise PluginError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        broken[cfg_pkg] = error
    return usable, broken


class PluginConfigSearchPath(SearchPathPlugin):
    """Appends every installed plugin's config package to Hydra's search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        present = {element.path for element in search_path.get_path()}
        for cfg_pkg in config_packages()[0]:
            if cfg_pkg.search_path not in present:
                search_path.append(provider=f"mmxattn-plugin:{cfg_pkg.package}", path=cfg_pkg.search_path)


def register() -> None:
    """Put plugin configs on Hydra's search path for every later compose in this process (idempotent).

    Call before `hydra.main` (mmx-train does) or before `hydra.initialize*` + `compose` in your own code.
    """
    Plugins.instance().register(PluginConfigSearchPath)


def find_encoder_config(name: str, packages: list[ConfigPackage] | None = None) -> str | None:
    """Where `encoder=<name>` is read from ("pkg://<package>/encoder/<name>.yaml"), or None if nowhere.

    packages: the usable config packages, if the caller has them (else they are looked up).
    """
    usable = config_packages()[0] if packages is None else packages
    for module in [BUILTIN_CONFIG_PACKAGE] + [c.module for c in usable]:
        try:
            if (resources.files(module) / "encoder" / f"{name}.yaml").is_file():
                return f"pkg://{module}/encoder/{name}.yaml"
        except Exception:  # noqa: BLE001 - listed as broken by config_packages already
            continue
    return None


def configs_naming(name: str) -> list[str]:
    """Encoder config files (pkg:// paths) whose `name:` is `name`, e.g. a plugin's byte_cnn.yaml that
    says `name: bytecnn`: for the message about an unknown encoder name."""
    import yaml

    found = []
    for module in [BUILTIN_CONFIG_PACKAGE] + [c.module for c in config_packages()[0]]:
        try:
            folder = resources.files(module) / "encoder"
            files = [f for f in folder.iterdir() if f.name.endswith(".yaml")] if folder.is_dir() else []
            for file in files:
                if (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("name") == name:
                    found.append(f"pkg://{module}/encoder/{file.name}")
        except Exception:  # noqa: BLE001 - an unreadable package is reported by config_packages
            continue
    return found


def read_encoder_config(name: str) -> str | None:
    """The YAML text of `encoder=<name>`, or None."""
    where = find_encoder_config(name)
    if where is None:
        return None
    module, _, rest = where.removeprefix("pkg://").partition("/")
    return resources.files(module).joinpath(rest).read_text(encoding="utf-8")
