"""sacreBLEU on detokenized output, with its signature so that numbers are comparable."""

from __future__ import annotations

from sacrebleu.metrics import BLEU

from .score import Score


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
