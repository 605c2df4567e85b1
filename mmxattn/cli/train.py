"""`mmx-train`: the Hydra app around `mmxattn.train.train`. `mmx-train --help` explains its use.

Two things happen before Hydra composes the config:
- A bare `mmx-train` (nothing about the recipe, data or encoder on the command line) gets
  `recipe=translation/quickstart`. Any other command line composes from the groups and its own choices
  only, so that choosing one's own data or encoder never inherits a quickstart's settings (nor its data
  generator, which would write into `data.root`).
- Run folders are claimed with an atomic mkdir (`claim_run_dir`), so two runs started in the same second
  get two folders instead of overwriting each other's checkpoints.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .. import hydra_search, registry
from ..cpu_allocator import keep_freed_memory
from ..train import rank_config_from_env, train
from .common import setup_logging, user_errors_exit

# Installed plugins' configs (entry points `mmxattn.configs`) join Hydra's search path before it composes.
hydra_search.register()


DEFAULT_RECIPE = "translation/quickstart"
NO_RECIPE = ("none", "null")
# top-level config keys whose presence on the command line means "my own setup, not the quickstart"
OWN_SETUP_KEYS = ("recipe", "data", "encoder", "encoders")
# Hydra options that take a value (the value is not an override)
_VALUED_OPTIONS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                   "--config-dir", "-cd", "--experimental-rerun", "--info"}

_claimed_dirs: dict[str, str] = {}


def _override_keys(argv: list[str]) -> list[str]:
    """The top-level key of every override (`+data.root=x` -> data, `~recipe` -> recipe, `encoder@a=b` -> encoder)."""
    keys, skip = [], False
    for arg in argv:
        if skip or arg in _VALUED_OPTIONS:
            skip = not skip and arg in _VALUED_OPTIONS
            continue
        if arg.startswith("-"):
            continue
        key = arg.lstrip("+~").split("=", 1)[0]
        keys.append(key.split(".", 1)[0].split("@", 1)[0].split("/", 1)[0])
    return keys


def with_default_recipe(argv: list[str]) -> list[str]:
    """argv plus recipe=translation/quickstart when it chooses no recipe, data or encoder of its own."""
    if any(key in OWN_SETUP_KEYS for key in _override_keys(argv)):
        return argv
    return [*argv, f"recipe={DEFAULT_RECIPE}"]


def _launched_rank() -> bool:
    """A process that torchrun / srun started as a rank other than 0 (it must not claim a folder of its own)."""
    return any(os.environ.get(var, "0") != "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def claim_run_dir(path: str) -> str:
    """`path`, or `path_2`, `path_3`, ... if another run already took it; created here with mkdir, which
    is atomic, so two runs started in the same second cannot share a folder. Resolved once per process
    (Hydra asks for the run folder several times)."""
    if path in _claimed_dirs or _launched_rank():
        return _claimed_dirs.get(path, path)
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            continue
    _claimed_dirs[path] = str(candidate)
    return str(candidate)


OmegaConf.register_new_resolver("mmx_claim_dir", claim_run_dir, use_cache=True, replace=True)


@hydra.main(version_base="1.3", config_path="pkg://mmxattn.conf", config_name="train")
@user_errors_exit
def _app(cfg: DictConfig) -> float | None:
    results = train(cfg)
    return results.get(f"val_{cfg.eval.metrics[0]}") if cfg.eval.metrics else None  # what a sweeper optimises


def available_recipes() -> list[str]:
    """Recipe names from mmxattn's configs and every installed plugin's config package."""
    from importlib import resources

    modules = [hydra_search.BUILTIN_CONFIG_PACKAGE] + [c.module for c in hydra_search.config_packages()[0]]
    names = set()
    for module in modules:
        root = Path(str(resources.files(module) / "recipe"))
        names.update(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return sorted(names)


def check_recipe_argument(argv: list[str]) -> list[str]:
    """Hydra cannot list the options of a nested group; name the recipes ourselves when one is unknown.

    Returns argv with `recipe=null` spelled `recipe=none` (an empty recipe rather than a deleted default).
    """
    argv = [f"recipe={NO_RECIPE[0]}" if a == f"recipe={NO_RECIPE[1]}" else a for a in argv]
    wanted = [a.split("=", 1)[1] for a in argv if a.startswith("recipe=")]
    if not wanted or "," in wanted[-1]:  # sweeps (recipe=a,b) are left to Hydra
        return argv
    known = available_recipes()
    if wanted[-1] not in known:
        print(f"error: unknown recipe '{wanted[-1]}'. Available recipes: {', '.join(known)}", file=sys.stderr)
        sys.exit(2)
    return argv


def check_plugins() -> None:
    """With MMX_STRICT_PLUGINS=1 a broken or conflicting plugin stops mmx-train here with one message,
    rather than inside Hydra's search-path hook with Hydra's traceback around it."""
    if registry.strict():
        registry.available()
        registry.DATA_FORMATS.available()
        hydra_search.config_packages()


def main() -> None:
    keep_freed_memory()
    relaunched = rank_config_from_env()
    if relaunched is not None:  # a DDP rank that Lightning started: run rank 0's job, not the command line
        setup_logging()
        user_errors_exit(train)(relaunched)
        return
    user_errors_exit(check_plugins)()
    argv = check_recipe_argument(with_default_recipe(sys.argv[1:]))
    if argv[-1:] == [f"recipe={DEFAULT_RECIPE}"] and f"recipe={DEFAULT_RECIPE}" not in sys.argv:
        print(f"mmx-train: no recipe, data or encoder given: running recipe={DEFAULT_RECIPE} "
              "(it generates its own data)", file=sys.stderr)
    sys.argv[1:] = argv
    _app()


if __name__ == "__main__":
    main()
