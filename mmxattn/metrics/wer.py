"""Word error rate with fairseq's normalisation (speech recognition)."""

from __future__ import annotations

import unicodedata

from .score import Score


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
