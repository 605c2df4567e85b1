"""CIDEr-D against numbers computed by the reference implementation, pycocoevalcap.

The expected values below were computed once with pycocoevalcap 1.2 (pip package; `cider/cider.py`
`Cider().compute_score`, captions tokenized by its `tokenizer/ptbtokenizer.py`, i.e. Stanford CoreNLP
3.4.1's PTBTokenizer with -lowerCase and punctuation removal, run under OpenJDK 17). The test does not
need pycocoevalcap or Java.
"""

from __future__ import annotations

import pytest

from mmxattn.metrics.cider import corpus_cider_d, cider_d_scores, ptb_tokenize
from mmxattn.metrics import METRICS

REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
     "a person on a surf board riding a wave", "A man is surfing on a big wave."],
    ["Two dogs playing with a frisbee in the grass.", "Two dogs are running on a grassy field.",
     "A pair of dogs chase a frisbee on the lawn", "two brown dogs in a park"],
    ["A plate of food with broccoli and rice.", "A white plate topped with rice, meat and broccoli.",
     "Dinner on a plate: chicken, rice and broccoli."],
    ["A red double decker bus driving down a street.", "A double-decker bus on a city street.",
     "The red bus isn't moving; it's parked by the curb.", "a big red bus near a building",
     "A bus that is parked on the side of a road."],
    ["A cat sitting on a laptop keyboard.", "A cat lies on the keyboard of a laptop computer.",
     "The cat's sleeping on someone's laptop."],
    ["A kitchen with a stove, a sink and a refrigerator.", "An empty kitchen with white cabinets.",
     "A small kitchen w/ wooden cabinets and a window"],
]
HYPOTHESES = [
    "A man riding a wave on a surfboard.",
    "Two dogs playing in the grass.",
    "A plate of food with rice and broccoli.",
    "A red bus driving down a street.",
    "A cat is sitting on a laptop.",
    "A bathroom with a sink and a toilet.",
]
# pycocoevalcap 1.2: PTBTokenizer().tokenize + Cider().compute_score on the captions above
PYCOCOEVALCAP_MEAN = 2.40330462406861
PYCOCOEVALCAP_PER_IMAGE = [2.8054230469609727, 1.8353783950599052, 3.9326638752169756, 1.9249612451878413,
                           2.7036361482259914, 1.217765033759974]

# Stanford PTBTokenizer (stanford-corenlp-3.4.1 via pycocoevalcap 1.2) output, punctuation removed
PTB_CASES = {
    "A dog. A cat sits.": "a dog a cat sits",
    "a man on a skate board.": "a man on a skate board",
    "There are 2 dogs. They run": "there are 2 dogs they run",
    "People at St. Mary church": "people at st. mary church",
    'A sign that says "STOP".': "a sign that says stop",
    "The cat's toy isn't here!": "the cat 's toy is n't here",
    "a kitchen w/ a stove": "a kitchen w / a stove",
    "A 10-year-old boy, smiling": "a 10-year-old boy smiling",
    "Mr. Smith's car": "mr. smith 's car",
    "an apple; an orange: a pear": "an apple an orange a pear",
    "they're we've I'm you'll he'd": "they 're we 've i 'm you 'll he 'd",
    "cannot gonna": "can not gon na",
    "A   man   riding a horse .": "a man riding a horse",
    "two U.S. flags": "two u.s. flags",
    "a 'hot dog' stand": "a hot dog stand",
    "e-mail...": "e-mail",
    "$5 bill at 50% off": "$ 5 bill at 50 % off",
    "A cat -- a dog": "a cat a dog",
    "Dogs' bowls": "dogs bowls",
    "a plane in the sky.\n": "a plane in the sky",
    "He (John) doesn't care": "he -lrb- john -rrb- does n't care",
}


@pytest.mark.parametrize("raw,expected", PTB_CASES.items())
def test_tokenizer_matches_stanford_ptb(raw, expected):
    assert ptb_tokenize(raw) == expected


def test_cider_d_matches_pycocoevalcap():
    score = corpus_cider_d(HYPOTHESES, REFERENCES)
    assert score.value == pytest.approx(100 * PYCOCOEVALCAP_MEAN, abs=1e-9)
    per_image = cider_d_scores([ptb_tokenize(h) for h in HYPOTHESES], [[ptb_tokenize(r) for r in rs] for rs in REFERENCES])
    assert per_image == pytest.approx(PYCOCOEVALCAP_PER_IMAGE, abs=1e-12)


def test_clipping_empty_hypothesis_and_length_penalty_match_pycocoevalcap():
    # pycocoevalcap 1.2 Cider().compute_score on these pre-tokenized strings: repeated n-grams are clipped
    # to the reference counts, an empty hypothesis scores 0, a one-word reference still counts.
    refs = [["a dog runs on the beach", "a brown dog running along the sand", "dog"], ["a dog dog dog", "the dog sleeps"],
            ["a cat on a mat", "a cat sitting on a red mat near the door"]]
    hyps = ["a dog a dog a dog a dog runs on the beach", "", "a cat on a mat"]
    assert cider_d_scores(hyps, refs) == pytest.approx([1.1050258502678352, 0.0, 5.815613938092343], abs=1e-12)


def test_cider_is_a_registered_metric_on_the_paper_scale():
    score = METRICS["cider"](["a red bus"], [["a red bus", "the red bus"]])
    assert score.name == "CIDEr-D" and score.value == 0.0  # one image: every n-gram has idf log(1/1) = 0
    perfect = METRICS["cider"](HYPOTHESES, [[h] for h in HYPOTHESES])
    assert perfect.value == pytest.approx(1000.0)  # each hypothesis equals its only reference: 10 per image, ×100
