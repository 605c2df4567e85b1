"""The quickstarts learn: each quickstart recipe, run as it is (its own model sizes, optimizer, tokenizer,
batching and data format) for a short run on a smaller corpus written by its own generator, reaches a score
on held-out data that a model which learned nothing cannot reach.

Shrunk: the generated corpus, the number of epochs, the validation (once, at the end, on 16 samples), the
test split (50 samples) and the decoding length (40 tokens, twice the longest target; a model that has not
learned to stop would otherwise decode 200). Everything else is the recipe's.

Chance level: a model that ignores its input writes the same text for every input, so none beats the best
constant output. `constant_output_score` measures that on each test's own test split (the best of 100
training targets, written out for every test sample), and each test asserts that its floor stands well
above it. On the generators' data (50 test samples): translation BLEU 1.2-2.0 (another sample's target for
each: 0.8; the most frequent target words: 0.3); speech translation BLEU 11-13 (6.1; 0.6: the spoken
language has 15 words, so any fixed sentence shares most of its words with every reference); captioning
CIDEr-D 140-167 and BLEU-4 40 against three references (89 and 33; 88 and 3.7); multimodal BLEU 1.4-1.6
(0.7; 0.3).

Each floor sits well under the scores observed while calibrating (noted next to it, for data and training
seeds 1, 2, 3, ... and one torch thread). Translation and speech translation learn measurably in about 45 s
of CPU each and run in the default suite. Captioning and multimodal translation need 2-4 minutes each before
their scores leave chance clearly behind (at 96 updates the captioning model's CIDEr-D is 121, at chance;
multimodal BLEU is 1.9 after 200 updates), so they run with `-m slow`.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from mmxattn.quickstart.captions import write_captions
from mmxattn.quickstart.multimodal import meaning_accuracy, write_multimodal_corpus
from mmxattn.quickstart.speech import write_speech_corpus
from mmxattn.quickstart.translation import write_corpus
from mmxattn.metrics import score_all
from mmxattn.train import train

from .conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread: on a busy machine 2 threads stall

VALID, TEST = 16, 50


def short_run(recipe: str, root: Path, output_dir: Path, epochs: int) -> dict:
    """`mmx-train recipe=<recipe> data.root=<root>` for `epochs` epochs, validated once at the end."""
    cfg = compose_config(
        [f"recipe={recipe}", f"data.root={root}", "data.synthetic=null", f"trainer.max_epochs={epochs}",
         f"trainer.check_val_every_n_epoch={epochs}", "eval.generation.max_len=40", "generation.max_len=40",
         "progress_refresh=0"],
        output_dir=output_dir,
    )
    assert cfg.name == recipe.replace("/", "-").replace("_", "-")  # the recipe itself, nothing swapped in
    return train(cfg)


def constant_output_score(metric: str, train_targets: list[str], test_references: list[list[str]]) -> float:
    """The best `metric` that one text written for every test sample reaches, over 100 training targets."""
    candidates = train_targets[:: max(1, len(train_targets) // 100)][:100]
    return max(score_all([metric], [c] * len(test_references), test_references)[metric].value for c in candidates)


def tsv_column(path: Path, column: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def coco_references(path: Path) -> list[list[str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    captions = defaultdict(list)
    for annotation in data["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"])
    return [captions[image["id"]] for image in data["images"]]


def test_translation_quickstart_learns(tmp_path):
    # 2000 sentence pairs, 12 epochs of 14 batches: 168 updates (~43 s of CPU)
    root = write_corpus(tmp_path / "data", train=2000, valid=VALID, test=TEST, seed=11)
    results = short_run("translation/quickstart", root, tmp_path / "run", epochs=12)
    chance = constant_output_score("bleu", (root / "train.xx").read_text().splitlines(),
                                   [[line] for line in (root / "test.xx").read_text().splitlines()])
    # observed test BLEU: 25.6, 26.8, 14.3, 15.3, 27.3 (seeds 1-5, while calibrating); chance 1.2-2.0.
    # It rises steeply here: 1.8 after 117 updates, 52-64 after 200
    assert results["test_bleu"] >= 8.0 > 1.5 * chance, (results, chance)


def test_speech_translation_quickstart_learns(tmp_path):
    # 300 utterances, 16 epochs of about 123 batches of 2-3 utterances (the recipe's data.min_batches_per_epoch
    # lowers its frame budget on small data): about 1970 updates, with the recipe's auxiliary CTC loss
    # (~48 s of CPU, a sixth of it writing the audio, plus a DataLoader worker on the other core)
    root = write_speech_corpus(tmp_path / "data", train=300, valid=VALID, test=TEST, seed=11)
    results = short_run("speech_translation/quickstart", root, tmp_path / "run", epochs=16)
    chance = constant_output_score("bleu", tsv_column(root / "train.tsv", "tgt_text"),
                                   [[t] for t in tsv_column(root / "test.tsv", "tgt_text")])
    # observed test BLEU: 52.8, 41.4, 45.6 (seeds 1-3, while calibrating); chance 11.0-13.0
    # (12 epochs gave 43.8, 40.0, 30.4; 6 epochs 25.7, 24.4, 13.7: too close to chance)
    assert results["test_bleu"] >= 25.0 > 1.5 * chance, (results, chance)


@pytest.mark.slow
def test_captioning_quickstart_learns(tmp_path):
    # 3000 images (9000 captions), 3 epochs of 141 batches: 423 updates of a ResNet on 64 images each
    root = write_captions(tmp_path / "data", train=3000, valid=VALID, test=TEST, seed=11)
    results = short_run("captioning/quickstart", root, tmp_path / "run", epochs=3)
    train_captions = [refs[0] for refs in coco_references(root / "captions_train.json")]
    chance = constant_output_score("cider", train_captions, coco_references(root / "captions_test.json"))
    # chance 140-167; 2 epochs gave 315, 209, 208 and 1000 images for 6 epochs 241, 218, 206 (too close to
    # chance), so 3 epochs of 3000 images: passed 2026-12-01 (the score itself was not recorded)
    assert results["test_cider"] >= 250.0 > 1.5 * chance, (results, chance)


@pytest.mark.slow
def test_multimodal_quickstart_learns(tmp_path):
    # 3000 samples, 13 epochs of 25 batches: 325 updates (~100 s of CPU)
    root = write_multimodal_corpus(tmp_path / "data", train=3000, valid=VALID, test=TEST, seed=11)
    results = short_run("multimodal/quickstart", root, tmp_path / "run", epochs=13)
    targets = tsv_column(root / "test.tsv", "tgt")
    chance = constant_output_score("bleu", tsv_column(root / "train.tsv", "tgt"), [[t] for t in targets])
    # observed test BLEU: 65.3, 83.7, 75.1 (seeds 1-3, while calibrating); chance 1.4
    assert results["test_bleu"] >= 30.0 > 1.5 * chance, (results, chance)
    # and it reads the picture: from the sentence alone the ambiguous noun's meaning is a coin flip (50%)
    hypotheses = (tmp_path / "run" / "test.hyp").read_text(encoding="utf-8").splitlines()
    accuracy = meaning_accuracy(targets, hypotheses)
    assert accuracy >= 70.0, accuracy  # observed 86, 98, 90% (seeds 1-3, while calibrating)
