"""`mmx-data`: a data set read as training reads it, summarised, on tiny data of every built-in format."""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmxattn import registry
from mmxattn.cli import data as mmx_data
from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.data.samples import Sample
from mmxattn.data.speech import fbank_frames
from mmxattn.errors import DataError
from mmxattn.quickstart.multimodal import write_multimodal_corpus
from mmxattn.quickstart.translation import write_corpus

SMALL_VOCAB = "tokenizer.vocab_size=60"


def run(capsys, *args) -> str:
    mmx_data.main([*args])
    return capsys.readouterr().out


def fails(capsys, *args) -> str:
    """mmx-data's stderr for a command that must exit 2 with one `error:` line."""
    with pytest.raises(SystemExit) as exit_info:
        mmx_data.main([*args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def training_error(overrides: list[str]) -> str:
    """The one line `mmx-train` prints for the same data: its datamodule's error, as user_errors_exit shows it."""
    cfg, _, _ = mmx_data.compose_config(overrides)
    with pytest.raises(DataError) as error:
        Seq2SeqDataModule.from_config(cfg).prepare(("train", "valid"))
    return f"error: {error.value}"


def suggested(out: str) -> dict[str, str]:
    line = out.split("suggested overrides (add them to the mmx-train command):\n", 1)[1].splitlines()[0]
    return dict(item.split("=", 1) for item in line.split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("parallel"), train=120, valid=12, test=12, seed=3)


def test_help_from_the_console_script():
    result = subprocess.run(["mmx-data", "--help"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "usage: mmx-data" in result.stdout and "recipe=translation/base" in result.stdout


def test_parallel_text_guessed_sizes_lengths_vocabulary(corpus, capsys):
    out = run(capsys, str(corpus), SMALL_VOCAB)
    assert "format guessed: line-aligned parallel text" in out
    assert (f"mmx-train data=parallel_text data.root={corpus} data.src_lang=en data.tgt_lang=xx data.train=train "
            "data.valid=valid data.test=test") in out
    assert re.search(r"^train\s+train\s+120\s", out, re.M) and re.search(r"^valid\s+valid\s+12\s", out, re.M)
    assert re.search(r"^test\s+test\s+12\s", out, re.M)
    assert re.search(r"source 'src' \(text\) length in tokens: min \d+  median \d+  p95 \d+  max \d+", out)
    assert "target length in words: min" in out and "target length in characters: min" in out
    assert "empty targets: 0" in out and "over data.max_len=256: none" in out
    words = int(re.search(r"target vocabulary \(train.*\): [\d,]+ distinct .*; ([\d,]+) in all", out).group(1).replace(",", ""))
    train_words = sum(len(line.split()) + line.count(".") for line in (corpus / "train.xx").read_text().splitlines())
    assert words == train_words  # words and the sentence-final full stops of the training targets
    assert re.search(r"tokenizer\.vocab_size=60 asked; SentencePiece .* made \d+ pieces", out)
    # 120 short pairs cannot fill 100 updates at the default 4096-token budget: a smaller budget, with its arithmetic
    budget = int(suggested(out)["data.max_tokens"])
    assert re.search(rf"= \d+.* -> data.max_tokens={budget} ", out)
    longest = int(re.search(r"the longest is (\d+)", out).group(1))
    assert budget >= longest


def test_overlong_samples_are_listed_with_trainings_message_and_a_max_len(corpus, capsys):
    out = run(capsys, str(corpus), SMALL_VOCAB, "data.max_len=20")
    found = re.search(r"over data\.max_len=20: (\d+) samples", out)
    assert found and int(found.group(1)) > 0
    assert re.search(rf"    {re.escape(str(corpus))}/train\.en:\d+  \(src \d+, target \d+\)", out)
    # the message training stops with is the datamodule's own
    assert training_error([f"data.root={corpus}", "data.src_lang=en", "data.tgt_lang=xx", "data.valid=valid",
                           SMALL_VOCAB, "data.max_len=20"]) in out
    new_len = int(suggested(out)["data.max_len"])
    sizes = re.search(r"(\d+(?:\.\d+)?)% are ≤ ([\d,]+), the longest is ([\d,]+)", out)
    assert sizes and new_len >= int(sizes.group(2).replace(",", ""))


def test_empty_line_is_trainings_error_and_skip_invalid_counts_it(tmp_path, capsys):
    (tmp_path / "train.de").write_text("ein Hund\n\nzwei Katzen\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("a dog\nthe cat\ntwo cats\n", encoding="utf-8")
    (tmp_path / "val.de").write_text("ein Hund\n", encoding="utf-8")
    (tmp_path / "val.en").write_text("a dog\n", encoding="utf-8")
    err = fails(capsys, str(tmp_path), SMALL_VOCAB)
    assert err == training_error([f"data.root={tmp_path}", SMALL_VOCAB])
    assert f"{tmp_path}/train.de:2: empty line" in err

    out = run(capsys, str(tmp_path), SMALL_VOCAB, "data.skip_invalid=true")
    assert re.search(r"^train\s+train\s+2\s+1$", out, re.M)
    assert f"skipped 1 samples (data.skip_invalid=true): 1 empty (e.g. {tmp_path}/train.de:2)" in out


def test_missing_folder_and_unknown_format(tmp_path, capsys):
    assert "folder not found" in fails(capsys, str(tmp_path / "nowhere"))
    (tmp_path / "notes.md").write_text("hello\n")
    assert "cannot tell the data format" in fails(capsys, str(tmp_path))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A fairseq manifest over WAVs at 16 kHz and 8 kHz (one of them stereo)."""
    root = tmp_path_factory.mktemp("speech")
    (root / "clips").mkdir()
    rng = np.random.default_rng(0)
    words = "ein Hund sieht zwei Katzen am Fluss".split()
    for split, count in (("train", 8), ("dev", 3)):
        rows = ["id\taudio\tn_frames\ttgt_text"]
        for i in range(count):
            rate, seconds = (16000, 0.4 + 0.1 * i) if i % 2 == 0 else (8000, 0.3 + 0.1 * i)
            wave = (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32)
            if i == 1:
                wave = np.stack([wave, wave], axis=1)
            sf.write(root / "clips" / f"{split}{i}.wav", wave, rate, subtype="PCM_16")
            frames = fbank_frames(int(16000 * seconds), 16000)
            rows.append(f"{split}{i}\tclips/{split}{i}.wav\t{frames}\t{' '.join(words[: 2 + i % 5])}.")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_speech_manifest_durations_and_sample_rates(speech, capsys):
    out = run(capsys, str(speech), SMALL_VOCAB)
    assert "format guessed: fairseq speech-to-text manifests" in out
    assert f"mmx-train data=speech_tsv encoder=audio data.root={speech} data.train=train data.valid=dev" in out
    assert re.search(r"^train\s+train\s+8\s", out, re.M) and re.search(r"^valid\s+dev\s+3\s", out, re.M)
    assert re.search(r"source 'src' \(audio\) length in frames \(10 ms\): min \d+", out)
    assert re.search(r"in seconds: min 0\.\d+ .*h in all", out)
    assert "audio (headers of all 8 files): duration in s min 0.40" in out
    assert re.search(r"sample rates: 16000 Hz ×4 \(50%\), 8000 Hz ×4 \(50%\)", out)
    assert "channels: 1 ×7 (88%), 2 ×1 (12%)" in out
    assert "4 of 8 read are not at encoder.sample_rate=16000" in out
    longest = int(re.search(r"the longest is (\d+)", out).group(1))  # frames: the budget is in frames too
    assert int(suggested(out)["data.max_tokens"]) == longest  # 8 samples: one per batch is all an epoch can do


def test_speech_bounded_header_sample_and_the_default_text_encoder_warning(speech, capsys):
    out = run(capsys, "data=speech_tsv", "encoder=audio", f"data.root={speech}", SMALL_VOCAB, "--max-files", "3")
    assert "audio (headers of 3 random files of 8)" in out
    out = run(capsys, "data=speech_tsv", f"data.root={speech}", SMALL_VOCAB)  # mmx-train's default encoder: text
    assert "WARNING: text reads source 'src' as text, but its values are file names" in out
    assert "Choose encoder=audio" in out


def test_speech_missing_audio_is_trainings_error(speech, tmp_path, capsys):
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text((speech / name).read_text().replace("clips/", f"{speech}/clips/"))
    (tmp_path / "dev.tsv").write_text((tmp_path / "dev.tsv").read_text().replace("dev1.wav", "gone.wav"))
    err = fails(capsys, str(tmp_path), SMALL_VOCAB)
    assert err == training_error(["data=speech_tsv", "encoder=audio", f"data.root={tmp_path}", SMALL_VOCAB])
    assert f"{tmp_path}/dev.tsv:3: audio file {speech}/clips/gone.wav not found" in err


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """COCO captions JSON, images of two sizes and modes under images/."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    for split, count in (("train", 6), ("val", 2)):
        images, annotations = [], []
        for i in range(count):
            name = f"{split}{i}.png"
            size, mode = ((40, 30), "RGB") if i % 3 else ((20, 20), "L")
            Image.new(mode, size, 128).save(root / "images" / name)
            images.append({"id": i, "file_name": name})
            annotations += [{"id": 10 * i + k, "image_id": i, "caption": f"A grey square number {i} ."} for k in range(2)]
        (root / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def test_coco_image_sizes_modes_and_positions(coco, capsys):
    out = run(capsys, str(coco), SMALL_VOCAB, "encoder.model_name=resnet10t")
    assert "format guessed: COCO captions JSON" in out
    assert (f"data=coco encoder=image_timm data.root={coco} data.train=captions_train.json "
            "data.valid=captions_val.json data.images.train=images data.images.valid=images") in out
    assert re.search(r"^train\s+captions_train\.json\s+12\s", out, re.M)  # one sample per caption
    assert re.search(r"^valid\s+captions_val\.json\s+2\s", out, re.M)  # one per image, with its references
    assert "references per sample: min 2" in out
    assert re.search(r"source 'src' \(image_timm\) length in image positions: min \d+", out)
    assert "images (headers of all 6 files): width min 20  median 40  p95 40  max 40" in out
    assert "sizes: 40×30 ×4 (67%), 20×20 ×2 (33%); modes: RGB ×4 (67%), L ×2 (33%); formats: PNG ×6" in out
    assert "aspect ratio (w/h) min 1  median 1.33" in out


def test_karpathy_split_file(tmp_path, capsys):
    (tmp_path / "flickr" / "Images").mkdir(parents=True)
    entries = []
    for i, split in enumerate(["train", "train", "train", "val", "test"]):
        Image.new("RGB", (30 + 10 * (i % 2), 30), (i * 40, 0, 0)).save(tmp_path / "flickr" / "Images" / f"{i}.jpg")
        entries.append({"filepath": "Images", "filename": f"{i}.jpg", "split": split, "imgid": i,
                        "sentences": [{"raw": f"A red picture number {i}."}, {"raw": "A red picture."}]})
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))
    out = run(capsys, str(tmp_path), SMALL_VOCAB, "encoder.model_name=resnet10t")
    assert "format guessed: Karpathy split file (dataset_flickr8k.json)" in out
    assert (f"data=karpathy encoder=image_timm data.root={tmp_path} data.annotations=dataset_flickr8k.json "
            "data.images=flickr 'data.train=[train]'") in out
    assert re.search(r"^train\s+\['train'\]\s+6\s", out, re.M)  # 3 images x 2 captions
    assert "sizes: 30×30 ×2 (67%), 40×30 ×1 (33%)" in out


def test_multisource_columns_get_their_encoders(tmp_path, capsys):
    root = write_multimodal_corpus(tmp_path / "mm", train=10, valid=3, test=3, seed=5)
    out = run(capsys, str(root), SMALL_VOCAB, "encoders.image.model_name=resnet10t")
    assert "sources: src (text), image (image_timm); target column: tgt" in out
    assert ("data=multisource_tsv data.root=" in out and "'data.path_columns=[image]' '~encoder' "
            "+encoder@encoders.src=text +encoder@encoders.image=image_timm" in out)
    assert re.search(r"^train\s+train\s+10\s", out, re.M)
    assert "source 'src' (text) length in tokens" in out and "source 'image' (image_timm) length in image positions" in out
    assert "sizes: 32×32 ×10; modes: RGB ×10; formats: PNG ×10" in out


def test_a_plugins_data_format_is_read_through_readers(corpus, capsys, monkeypatch):
    """A registered data format (as a plugin's entry point registers it) is what data.format selects."""
    def read_toy(data_cfg, split, skipped):
        return [Sample({"src": f"toy source {i}"}, f"toy target {i} {split}", f"toy:{i}") for i in range(1, 6)]

    monkeypatch.setitem(registry.DATA_FORMATS.runtime, "toy", registry.DataFormat(read_toy))
    out = run(capsys, "data.format=toy", f"data.root={corpus}", SMALL_VOCAB)
    assert "mmx-data: toy data" in out and re.search(r"^train\s+train\s+5\s", out, re.M)
    assert "train: 5 samples (data.train=train; first toy:1)" in out
