"""Text metrics on detokenized output: BLEU (sacreBLEU), WER, CIDEr-D; `eval.metrics` names them."""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .bleu import corpus_bleu
from .cider import corpus_cider_d
from .score import Score
from .wer import normalize_for_wer, word_error_rate

__all__ = ["METRICS", "LOWER_IS_BETTER", "Score", "check_metric_names", "checkpoint_target", "corpus_bleu",
           "corpus_cider_d", "normalize_for_wer", "score_all", "word_error_rate"]

# eval.metrics names -> scorer(hypotheses, references) -> Score. The first listed is the one that
# picks the best checkpoint (see checkpoint_target).
METRICS: dict[str, Callable[[list[str], list[list[str]]], Score]] = {"bleu": corpus_bleu, "wer": word_error_rate, "cider": corpus_cider_d}
LOWER_IS_BETTER = {"wer"}


def checkpoint_target(metrics, monitor: str | None = None, mode: str | None = None) -> tuple[str, str]:
    """(monitor, mode) that picks the best checkpoint; by default the first eval metric, else val/loss.

    The mode follows the monitored quantity when not given: loss and wer are minimised, bleu and cider maximised.
    """
    monitor = monitor or (f"val/{metrics[0]}" if metrics else "val/loss")
    name = monitor.rsplit("/", 1)[-1]
    return monitor, mode or ("min" if name == "loss" or name in LOWER_IS_BETTER else "max")


def check_metric_names(names) -> None:
    """eval.metrics must name registered scorers: checked when training starts, not after the first epoch."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown {unknown}; available: {', '.join(METRICS)}")


def score_all(names, hypotheses: list[str], references: list[list[str]]) -> dict[str, Score]:
    check_metric_names(names)
    return {name: METRICS[name](hypotheses, references) for name in names}
