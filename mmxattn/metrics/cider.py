"""CIDEr-D (Vedantam et al. 2015), as computed by the COCO caption evaluation code, in pure Python.

It follows pycocoevalcap's `cider/cider_scorer.py` step by step, so that numbers are comparable with
published ones: n-grams 1..4; tf-idf vectors whose document frequencies come from the references of the
scored set itself; per n, the cosine similarity with hypothesis counts clipped to the reference's; a
Gaussian length penalty (sigma 6) on the difference in length (counted, as there, in bigrams); the mean
over n, the mean over references, times 10; averaged over images. Reported ×100, as papers do (133.5, not 1.335).

pycocoevalcap first runs the Stanford PTB tokenizer (Java) with lowercasing and removes punctuation;
`ptb_tokenize` is a pure-Python stand-in that gives the same tokens on ordinary captions (contractions,
possessives, sentence periods, quotes, brackets, $ and %); tests check it against the Java output.
Rare constructs (abbreviations outside a short list, slashes inside words) may tokenize differently.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from .score import Score

# pycocoevalcap/tokenizer/ptbtokenizer.py removes exactly these tokens after tokenizing. It lowercases
# before the comparison, so the bracket tokens ("-lrb-") survive there, and here too.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "ft.", "mt.", "no.", "inc.", "co.",
                 "ave.", "approx.", "dept.", "est.", "lb.", "lbs.", "oz.", "prof.", "rd."}
CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"]}

_SPACED = re.compile(r"(\.\.\.|--|[\"?!;$%&]|(?<!\d)[,:]|[,:](?!\d))")


def _split_word(word: str) -> list[str]:
    """One whitespace-separated word -> PTB tokens (leading quotes, trailing punctuation and clitics peeled)."""
    head: list[str] = []
    while len(word) > 1 and word[0] in "'`":
        head.append(word[0])
        word = word[1:]
    tail: list[str] = []
    while len(word) > 1:
        if word.endswith(".") and word not in ABBREVIATIONS and "." not in word[:-1]:
            tail.insert(0, ".")
            word = word[:-1]
        elif word[-1] in "'`/" and not word.endswith(CLITICS):
            tail.insert(0, word[-1])
            word = word[:-1]
        else:
            break
    for clitic in CLITICS:
        if word.endswith(clitic) and len(word) > len(clitic):
            tail.insert(0, clitic)
            word = word[: -len(clitic)]
            break
    return head + SPLIT_WORDS.get(word, [word]) + tail


def ptb_tokenize(text: str) -> str:
    """Lowercased PTB-style tokens with punctuation removed, space-separated (what CIDEr-D is computed on)."""
    text = text.lower()
    text = "".join(f" {BRACKETS[c]} " if c in BRACKETS else c for c in text)
    text = _SPACED.sub(r" \1 ", text).replace('"', "''")  # PTB turns " into `` or '', both removed
    tokens = [token for word in text.split() for token in _split_word(word)]
    return " ".join(token for token in tokens if token not in PUNCTUATIONS)


def _ngram_counts(sentence: str, n: int) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d_scores(hypotheses: list[str], references: list[list[str]], *, n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-image CIDEr-D (the COCO scale, ~0..10) of tokenized hypotheses against tokenized references."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every hypothesis needs at least one reference")
    ref_counts = [[_ngram_counts(r, n) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in ref_counts:  # in how many images' references each n-gram occurs
        document_frequency.update({gram for counts in refs for gram in counts})
    log_images = math.log(float(len(references)))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vectors: list[dict] = [{} for _ in range(n)]
        norms = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            weight = float(tf) * (log_images - math.log(max(1.0, document_frequency[gram])))
            vectors[k][gram] = weight
            norms[k] += weight * weight
            if k == 1:  # as in pycocoevalcap: the length is counted in bigrams
                length += tf
        return vectors, [math.sqrt(x) for x in norms], length

    scores = []
    for hyp, refs in zip(hypotheses, ref_counts):
        vec_h, norm_h, len_h = tfidf(_ngram_counts(hyp, n))
        total = [0.0] * n
        for ref in refs:
            vec_r, norm_r, len_r = tfidf(ref)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                value = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
                if norm_h[k] != 0 and norm_r[k] != 0:
                    value /= norm_h[k] * norm_r[k]
                total[k] += value * penalty
        scores.append(sum(total) / n / len(refs) * 10.0)
    return scores


def corpus_cider_d(hypotheses: list[str], references: list[list[str]]):
    """CIDEr-D ×100 over a set of images, on raw captions (tokenized here like the COCO evaluation)."""
    if not hypotheses:
        return Score("CIDEr-D", 0.0, "no hypotheses")
    hyps = [ptb_tokenize(h) for h in hypotheses]
    refs = [[ptb_tokenize(r) for r in rs] for rs in references]
    scores = cider_d_scores(hyps, refs)
    return Score("CIDEr-D", 100.0 * sum(scores) / len(scores), "n=4|sigma=6|tok=ptb-lc-nopunct|df=refs")
