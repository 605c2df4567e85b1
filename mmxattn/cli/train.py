"""`mmx-train`: the Hydra app around `mmxattn.train.train`. `mmx-train --help` explains its use."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .. import hydra_search
from ..cpu_allocator import keep_freed_memory
from ..train import rank_config_from_env, train
from .common import setup_logging, user_errors_exit

# Installed plugins' configs (entry points `mmxattn.configs`) join Hydra's search path before it composes.
hydra_search.register()


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


def check_recipe_argument(argv: list[str]) -> None:
    """Hydra cannot list the options of a nested group; name the recipes ourselves when one is unknown."""
    wanted = [a.split("=", 1)[1] for a in argv if a.startswith("recipe=")]
    if not wanted or "," in wanted[-1]:  # sweeps (recipe=a,b) are left to Hydra
        return
    known = available_recipes()
    if wanted[-1] not in known:
        print(f"error: unknown recipe '{wanted[-1]}'. Available recipes: {', '.join(known)}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    keep_freed_memory()
    relaunched = rank_config_from_env()
    if relaunched is not None:  # a DDP rank that Lightning started: run rank 0's job, not the command line
        setup_logging()
        user_errors_exit(train)(relaunched)
        return
    check_recipe_argument(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
