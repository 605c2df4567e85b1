"""Run tracking: the `logger` config group (csv, tensorboard, wandb, mlflow) as Lightning loggers.

metrics.csv is always written (mmx-train's results, the recipes' tables and resumed runs read it); the chosen
logger comes second and gets the resolved config as its hyperparameters. TensorBoard, W&B and MLflow are
optional extras: a missing one stops the run before training, naming the extra to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import OmegaConf

from ..errors import ConfigError

KINDS = ("csv", "tensorboard", "wandb", "mlflow")
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # logger -> the module it needs


def _require(kind: str) -> None:
    if importlib.util.find_spec(MODULES[kind]) is None:
        raise ConfigError(f"logger={kind} needs the package {MODULES[kind]}, which is not installed: "
                          f"pip install 'mmxattn[{kind}]' (or choose logger=csv)")


def build_loggers(logger_cfg: Mapping | None, output_dir: Path, run_cfg, name: str = "run") -> list[Logger]:
    """[CSVLogger, the chosen logger (if not csv)], the latter with the resolved config as hyperparameters."""
    logger_cfg = logger_cfg or {}
    kind = logger_cfg.get("kind", "csv")
    if kind not in KINDS:
        raise ConfigError(f"logger.kind={kind!r}; expected one of {', '.join(KINDS)} (select with logger=<kind>)")
    loggers: list[Logger] = [CSVLogger(output_dir, name="", version="")]
    if kind == "csv":
        return loggers
    _require(kind)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        tracker = TensorBoardLogger(output_dir, name="tensorboard", version="", default_hp_metric=False)
    elif kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        tracker = WandbLogger(project=logger_cfg.get("project", "mmxattn"), entity=logger_cfg.get("entity"), name=name,
                              save_dir=str(output_dir), offline=bool(logger_cfg.get("offline", False)))
    else:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = logger_cfg.get("tracking_uri") or (Path(output_dir).absolute() / "mlruns").as_uri()
        tracker = MLFlowLogger(experiment_name=logger_cfg.get("experiment_name", "mmxattn"), run_name=name,
                               tracking_uri=uri)
    tracker.log_hyperparams(resolved(run_cfg))
    return loggers + [tracker]


def resolved(cfg) -> dict[str, Any]:
    """The run config as plain values, interpolations resolved where they can be (outside Hydra, `${hydra:...}`
    cannot, and stays as written)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation is logged as its text
        return OmegaConf.to_container(cfg, resolve=False)
