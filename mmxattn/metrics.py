"""Text metrics on detokenized output (sacreBLEU, with its signature so numbers are comparable)."""

from __future__ import annotations

import unicodedata
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


def _edit_distance(hyp: list[str], ref: list[str]) -> int:
    """Levenshtein distance between word lists (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        current = [i]
        for j, r in enumerate(ref, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
        previous = current
    return previous[-1]


def normalize_for_wer(text: str) -> list[str]:
    """fairseq's WER normalisation (`--wer-tokenizer 13a --wer-lowercase --wer-remove-punct`): sacreBLEU's
    13a tokenizer splits punctuation off, the text is lowercased, and tokens made only of punctuation are
    dropped. "Hello, World!" and "hello world" are then the same two words; "don't" stays one word."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    words = Tokenizer13a()(text.lower()).split()
    return [w for w in words if not all(unicodedata.category(c).startswith("P") for c in w)]


def word_error_rate(hypotheses: list[str], references: list[list[str]]) -> Score:
    """Corpus WER in percent: total word edits / total reference words, after `normalize_for_wer`.

    Lower is better (see LOWER_IS_BETTER). With several references per source, the first one is used.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    edits = words = 0
    for hyp, refs in zip(hypotheses, references):
        ref_words = normalize_for_wer(refs[0])
        edits += _edit_distance(normalize_for_wer(hyp), ref_words)
        words += len(ref_words)
    return Score("WER", 100.0 * edits / max(words, 1), "wer|tok:13a|lc|punct:removed")


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
    from .errors import ConfigError

    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown {unknown}; available: {', '.join(METRICS)}")


def score_all(names, hypotheses: list[str], references: list[list[str]]) -> dict[str, Score]:
    check_metric_names(names)
    return {name: METRICS[name](hypotheses, references) for name in names}
