"""Text metrics on detokenized output (sacreBLEU, with its signature so numbers are comparable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sacrebleu.metrics import BLEU

from .cider import corpus_cider_d


@dataclass
class Score:
    name: str
    value: float
    signature: str = ""

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.2f}" + (f"  ({self.signature})" if self.signature else "")


def corpus_bleu(hypotheses: list[str], references: list[list[str]], **options) -> Score:
    """sacreBLEU over detokenized text; each hypothesis may have several references.

    Sources with fewer references are padded by repeating their first one, which leaves BLEU unchanged
    (clipped counts take the maximum over references; the closest reference length is unaffected).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    width = max((len(r) for r in references), default=1)
    streams = [[refs[min(i, len(refs) - 1)] for refs in references] for i in range(width)]
    bleu = BLEU(**options)
    result = bleu.corpus_score(hypotheses, streams)
    return Score("BLEU", result.score, str(bleu.get_signature()))


# eval.metrics names -> scorer(hypotheses, references) -> Score. The first listed is the one that
# picks the best checkpoint (checkpoint.monitor = val/<name>).
METRICS: dict[str, Callable[[list[str], list[list[str]]], Score]] = {"bleu": corpus_bleu, "cider": corpus_cider_d}


def score_all(names, hypotheses: list[str], references: list[list[str]]) -> dict[str, Score]:
    from .errors import ConfigError

    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown {unknown}; available: {', '.join(METRICS)}")
    return {name: METRICS[name](hypotheses, references) for name in names}
