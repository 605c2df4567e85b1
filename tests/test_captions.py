"""Captioning data and recipes: COCO and Karpathy readers on small files written here, their bad-input
errors and skip counts, the synthetic quickstart set, and both recipes training a few steps end to end
(plus mmx-generate captioning a folder of images with the result)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

from mmxattn.data.captions import read_coco_captions, read_karpathy
from mmxattn.data.samples import SkipReport
from mmxattn.quickstart.captions import make_scene, write_captions
from mmxattn.errors import ConfigError, DataError
from mmxattn.metrics import checkpoint_target
from mmxattn.train import train

from .conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)


def coco_cfg(root, **extra):
    cfg = {"format": "coco", "root": str(root), "train": "captions_train.json", "valid": "captions_val.json",
           "images": {"train": "train2017", "valid": "val2017"}, "lowercase": True, "check_files": True,
           "skip_invalid": False}
    cfg.update(extra)
    return OmegaConf.create(cfg)


@pytest.fixture
def coco(tmp_path):
    """A COCO captions layout: annotations JSON per split, images in a folder per split."""
    images = [{"id": 7, "file_name": "000007.jpg"}, {"id": 9, "file_name": "000009.jpg"}]
    annotations = [
        {"id": 1, "image_id": 7, "caption": "A red square on a\n white table. "},
        {"id": 2, "image_id": 7, "caption": "a RED block"},
        {"id": 3, "image_id": 9, "caption": "Two cats."},
        {"id": 4, "image_id": 7, "caption": "  A square, red.  "},
    ]
    for split in ("train", "val"):
        (tmp_path / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
        for image in images:
            _image(tmp_path / f"{split}2017" / image["file_name"])
    return tmp_path


def test_coco_training_uses_every_caption(coco):
    samples = read_coco_captions(coco_cfg(coco), "train", SkipReport())
    assert [s.target for s in samples] == ["a red square on a white table.", "a red block", "a square, red.", "two cats."]
    assert samples[0].sources["src"] == str(coco / "train2017" / "000007.jpg")
    assert "captions_train.json: image id 7" in samples[0].where


def test_coco_evaluation_gives_one_sample_per_image_with_all_references(coco):
    samples = read_coco_captions(coco_cfg(coco), "valid", SkipReport())
    assert len(samples) == 2
    assert samples[0].references == ["a red square on a white table.", "a red block", "a square, red."]
    assert samples[0].sources["src"] == str(coco / "val2017" / "000007.jpg")
    assert samples[1].references == ["two cats."]
    cased = read_coco_captions(coco_cfg(coco, lowercase=False), "valid", SkipReport())
    assert cased[0].references[1] == "a RED block"


def _rewrite(path, mutate):
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))


def test_caption_of_an_unknown_image_id_is_an_error_or_counted(coco):
    _rewrite(coco / "captions_train.json", lambda d: d["annotations"].append({"id": 99, "image_id": 12345, "caption": "x"}))
    with pytest.raises(DataError, match=r"captions_train.json: annotations\[4\] \(id 99\): refers to image id 12345"):
        read_coco_captions(coco_cfg(coco), "train", SkipReport())
    skipped = SkipReport()
    samples = read_coco_captions(coco_cfg(coco, skip_invalid=True), "train", skipped)
    assert len(samples) == 4 and skipped.counts == {"caption of an unknown image id": 1}
    assert "skipped 1 samples: 1 caption of an unknown image id" in skipped.summary("samples")


def test_image_without_captions_is_an_error_or_counted(coco):
    _rewrite(coco / "captions_val.json", lambda d: d["images"].append({"id": 5, "file_name": "000009.jpg"}))
    with pytest.raises(DataError, match="image id 5: image without any caption"):
        read_coco_captions(coco_cfg(coco), "valid", SkipReport())
    skipped = SkipReport()
    assert len(read_coco_captions(coco_cfg(coco, skip_invalid=True), "valid", skipped)) == 2
    assert skipped.counts == {"image without captions": 1}


def test_missing_image_file_is_an_error_naming_it_or_counted(coco):
    (coco / "train2017" / "000009.jpg").unlink()
    with pytest.raises(DataError, match=r"train2017/000009.jpg not found \(1 of 2 images"):
        read_coco_captions(coco_cfg(coco), "train", SkipReport())
    skipped = SkipReport()
    samples = read_coco_captions(coco_cfg(coco, skip_invalid=True), "train", skipped)
    assert len(samples) == 3 and skipped.counts == {"image file not found": 1}


def test_coco_file_errors(coco, tmp_path):
    with pytest.raises(DataError, match="COCO captions file not found"):
        read_coco_captions(coco_cfg(coco, train="nope.json"), "train", SkipReport())
    (coco / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        read_coco_captions(coco_cfg(coco, train="broken.json"), "train", SkipReport())
    (coco / "karpathy.json").write_text(json.dumps({"images": [], "dataset": "coco"}))
    with pytest.raises(DataError, match="not a COCO captions file.*data=karpathy"):
        read_coco_captions(coco_cfg(coco, train="karpathy.json"), "train", SkipReport())
    with pytest.raises(ConfigError, match="data.images has no entry for split 'test'"):
        read_coco_captions(coco_cfg(coco, test="captions_val.json"), "test", SkipReport())


def write_karpathy(root, per_split=None):
    """A dataset_coco.json in Karpathy's format with images under train2014/ and val2014/."""
    per_split = per_split or {"train": 2, "restval": 1, "val": 1, "test": 2}
    images, imgid = [], 0
    for split, count in per_split.items():
        for _ in range(count):
            folder = "train2014" if split == "train" else "val2014"
            name = f"COCO_{folder}_{imgid:012d}.jpg"
            _image(root / folder / name, (imgid * 40 % 255, 100, 200))
            colour = ["red", "green", "blue", "white", "black", "gray"][imgid % 6]
            sentences = [{"raw": f"A {colour} picture.", "tokens": ["a", colour, "picture"]},
                         {"tokens": ["an", "image", "that", "is", colour]}]  # no raw: tokens are joined
            images.append({"filepath": folder, "filename": name, "imgid": imgid, "split": split,
                           "cocoid": 1000 + imgid, "sentences": sentences})
            imgid += 1
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


def karpathy_cfg(root, **extra):
    cfg = {"format": "karpathy", "root": str(root), "annotations": "dataset_coco.json", "images": ".",
           "train": ["train", "restval"], "valid": ["val"], "test": ["test"], "lowercase": True,
           "check_files": True, "skip_invalid": False}
    cfg.update(extra)
    return OmegaConf.create(cfg)


def test_karpathy_splits(tmp_path):
    root = write_karpathy(tmp_path)
    train = read_karpathy(karpathy_cfg(root), "train", SkipReport())
    assert len(train) == 6  # 3 images (train + restval) × 2 captions
    assert train[0].sources["src"] == str(root / "train2014" / "COCO_train2014_000000000000.jpg")
    assert [s.target for s in train[:2]] == ["a red picture.", "an image that is red"]
    test = read_karpathy(karpathy_cfg(root), "test", SkipReport())
    assert len(test) == 2 and test[0].references == ["a black picture.", "an image that is black"]
    assert test[0].sources["src"].endswith("val2014/COCO_val2014_000000000004.jpg")


def test_karpathy_errors(tmp_path):
    root = write_karpathy(tmp_path)
    with pytest.raises(ConfigError, match=r"data.test=\['testing'\]: no image .* the file has restval, test, train, val"):
        read_karpathy(karpathy_cfg(root, test=["testing"]), "test", SkipReport())
    (root / "val2014" / "COCO_val2014_000000000005.jpg").unlink()
    with pytest.raises(DataError, match=r"imgid 5.*COCO_val2014_000000000005.jpg not found"):
        read_karpathy(karpathy_cfg(root), "test", SkipReport())
    data = json.loads((root / "dataset_coco.json").read_text())
    data["images"][0]["sentences"] = []
    (root / "dataset_coco.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="imgid 0.*image without any caption"):
        read_karpathy(karpathy_cfg(root), "train", SkipReport())
    with pytest.raises(DataError, match="Karpathy split file not found"):
        read_karpathy(karpathy_cfg(root, annotations="dataset_flickr8k.json"), "train", SkipReport())


def test_synthetic_set_is_coco_format_with_unseen_evaluation_scenes(tmp_path):
    import random

    image, captions, key = make_scene(random.Random(0))
    assert image.size == (96, 96) and len(captions) == 3 and all(c.startswith(("a ", "there is a ")) for c in captions)
    root = write_captions(tmp_path / "syn", train=30, valid=6, test=6, seed=3)
    cfg = coco_cfg(root, train="captions_train.json", valid="captions_valid.json", test="captions_test.json",
                   images={"train": "images", "valid": "images", "test": "images"})
    assert len(read_coco_captions(cfg, "train", SkipReport())) == 90  # 3 captions per image
    test = read_coco_captions(cfg, "test", SkipReport())
    assert len(test) == 6 and all(len(s.references) == 3 for s in test)
    assert Image.open(test[0].sources["src"]).size == (96, 96)
    stamp = (root / "CORPUS").stat().st_mtime_ns
    write_captions(root, train=30, valid=6, test=6, seed=3)  # already there: kept, not rewritten
    assert (root / "CORPUS").stat().st_mtime_ns == stamp


TINY_DECODER = ["decoder.d_model=32", "decoder.num_layers=1", "decoder.num_heads=2", "decoder.ffn_dim=64",
                "trainer.log_every_n_steps=1", "progress_refresh=0", "data.num_workers=0"]


def test_quickstart_recipe_trains_and_mmx_generate_captions_a_folder(tmp_path, capsys):
    root = write_captions(tmp_path / "syn", train=24, valid=4, test=4, seed=5)
    cfg = compose_config(
        ["recipe=captioning/quickstart", f"data.root={root}", "trainer.max_steps=2", "data.max_sentences=16",
         "encoder.data_config.input_size=[3,32,32]", *TINY_DECODER],
        output_dir=tmp_path / "run",
    )
    assert cfg.encoder.name == "image_timm" and cfg.data.format == "coco" and cfg.data.synthetic == "captions"
    cfg.data.synthetic = None  # the small set written above, not the recipe's full-size one
    results = train(cfg)
    assert "test_cider" in results and "test_bleu" in results
    assert (tmp_path / "run" / "model.pt").is_file()

    from mmxattn.cli.generate import main as generate

    capsys.readouterr()
    generate([str(tmp_path / "run"), str(root / "images" / "test"), "--beam-size", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.split("\t")[0].endswith(".jpg") for line in lines)


def test_coco_recipe_composes_and_trains_on_a_tiny_karpathy_set(tmp_path):
    root = write_karpathy(tmp_path / "coco")
    weights = tmp_path / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=2).state_dict(), weights)
    cfg = compose_config(
        ["recipe=captioning/coco", f"data.root={root}", f"encoder.weights={weights}",
         # the recipe as it is, on a CPU and with a tiny ViT standing in for ViT-B/16
         "trainer=cpu", "trainer.max_steps=2", "encoder.model_name=vit_tiny_patch16_224",
         "+encoder.model_kwargs={img_size: 32, depth: 2}", "encoder.freeze=1", "tokenizer.vocab_size=40",
         *TINY_DECODER],
        output_dir=tmp_path / "run",
    )
    assert cfg.data.format == "karpathy" and list(cfg.data.train) == ["train", "restval"]
    assert checkpoint_target(cfg.eval.metrics) == ("val/cider", "max")
    results = train(cfg)
    assert "val_cider" in results and (tmp_path / "run" / "model.pt").is_file()


def test_coco_recipe_selects_ddp_and_takes_the_weights_path():
    cfg = compose_config(["recipe=captioning/coco", "data.root=/data/coco", "encoder.weights=/models/vit.pt"])
    assert cfg.encoder.weights == "/models/vit.pt" and cfg.encoder.freeze == 4
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"  # frozen blocks have no gradients
    assert compose_config(["recipe=captioning/coco", "data.root=/x", "trainer=cpu"]).trainer.accelerator == "cpu"


def write_strips(root, counts=(("train", 12), ("valid", 4), ("test", 4))):
    """A user's own captioned images as the base recipe expects them: grayscale strips of 2-4 "digits"
    (dark bars of digit-dependent height) of different widths, COCO captions JSON per split."""
    words = "zero one two three four five six seven eight nine".split()
    for split, count in counts:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            digits = [(i * 7 + k * 3 + len(split)) % 10 for k in range(2 + i % 3)]
            strip = Image.new("L", (20 * len(digits) + 6, 24), 240)
            for k, d in enumerate(digits):
                strip.paste(20, (4 + 20 * k, 22 - 2 * d, 16 + 20 * k, 22))
            name = f"{split}/{i:03d}.png"
            strip.save(root / "images" / name)
            images.append({"id": i, "file_name": name})
            annotations.append({"id": len(annotations), "image_id": i, "caption": " ".join(words[d] for d in digits)})
        (root / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def test_base_recipe_composes_and_trains_on_wide_grayscale_strips(tmp_path, capsys):
    root = write_strips(tmp_path / "strips")
    cfg = compose_config(["recipe=captioning/base", f"data.root={root}", "data.test=captions_test.json",
                          "trainer.max_steps=3", *TINY_DECODER], output_dir=tmp_path / "run")
    # data-adaptive: early stopping, warmup as a share of the run, an epoch budget, inverse-sqrt decay
    assert cfg.early_stopping.patience == 5 and cfg.optim.schedule == "inverse_sqrt"
    assert cfg.optim.warmup_fraction == 0.01 and cfg.data.min_batches_per_epoch == 100
    assert cfg.encoder.resize == "shorter" and cfg.encoder.model_name == "resnet10t" and cfg.data.synthetic is None
    assert cfg.encoder.positions and cfg.encoder.norm and cfg.trainer.min_steps == 1000
    assert cfg.checkpoint.monitor is None and list(cfg.eval.metrics) == ["cider", "bleu"]
    results = train(cfg)
    assert "test_cider" in results and "test_bleu" in results and results["global_step"] == 3
    assert (tmp_path / "run" / "model.pt").is_file()

    from mmxattn.cli.generate import main as generate

    capsys.readouterr()
    generate([str(tmp_path / "run"), str(root / "images" / "test"), "--beam-size", "2"])  # widths 46-86 px in one batch
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_base_recipe_opens_with_its_command_and_names_the_data_it_expects():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "recipes" / "captioning" / "base.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "# @package _global_" and lines[1].startswith("# mmx-train recipe=captioning/base data.root=")
    assert "captions_train.json" in text and "captions_valid.json" in text and "encoder.weights=" in text
