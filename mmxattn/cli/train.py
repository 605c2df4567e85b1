"""`mmx-train`: the Hydra app around `mmxattn.train.train`. `mmx-train --help` explains its use."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .. import hydra_search
from ..train import rank_config_from_env, train
from .common import setup_logging, user_errors_exit

# Installed plugins' configs (entry points `mmxattn.configs`) join Hydra's search path before it composes.
hydra_search.register()


@hydra.main(version_base="1.3", config_path="pkg://mmxattn.conf", config_name="train")
@user_errors_exit
def _app(cfg: DictConfig) -> float | None:
    results = train(cfg)
    return results.get(f"val_{cfg.eval.metrics[0]}") if cfg.eval.metrics else None  # what a sweeper optimises


def main() -> None:
    relaunched = rank_config_from_env()
    if relaunched is not None:  # a DDP rank that Lightning started: run rank 0's job, not the command line
        setup_logging()
        user_errors_exit(train)(relaunched)
        return
    _app()


if __name__ == "__main__":
    main()
