"""Bad data files get one clear line naming the file, also from DataLoader workers; skipping is explicit.

Every bad file is built here (soundfile for audio, PIL for images, truncation with `truncate`), on tiny
corpora and tiny models, so that each test takes seconds.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmxattn.cli.generate import read_inputs
from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.data.samples import SkipReport
from mmxattn.data.speech import fbank_frames, read_speech_tsv
from mmxattn.errors import DataError
from mmxattn.registry import get_plugin
from mmxattn.tokenizer import Tokenizer
from mmxattn.train import train
from mmxattn_encoders.audio import AudioProcessor

from .conftest import TINY, compose_config
from .run_helpers import cli_env

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

RATE = 16000
WORDS = ["hallo welt", "guten tag", "gute nacht", "bis bald", "danke schoen", "bitte sehr"]
# a short run that stops at the first batch holding the bad file; one worker process loads the data
RUN = ["trainer=cpu", "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
       "trainer.accumulate_grad_batches=1", "data.num_workers=1", "data.test=null", "optim.warmup_steps=1"]


def tone(path: Path, seconds: float = 0.3, rate: int = RATE, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(len(path.name)).uniform(-0.3, 0.3, int(rate * seconds)).astype(np.float32)
    sf.write(path, wave, rate, **kwargs)
    return path


def manifest(path: Path, rows: list[tuple[str, int, str]]) -> Path:
    """A fairseq speech-to-text manifest: (audio, n_frames, tgt_text) per row."""
    lines = ["id\taudio\tn_frames\ttgt_text"] + [f"u{i}\t{a}\t{n}\t{t}" for i, (a, n, t) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def speech_corpus(root: Path, train: int = 4, valid: int = 2) -> Path:
    """train.tsv / valid.tsv over 0.3 s WAV files clips/{split}{i}.wav; n_frames in 10 ms frames."""
    for split, count in (("train", train), ("valid", valid)):
        rows = [(tone(root / "clips" / f"{split}{i}.wav").relative_to(root).as_posix(), fbank_frames(4800, RATE),
                 WORDS[i % len(WORDS)]) for i in range(count)]
        manifest(root / f"{split}.tsv", rows)
    return root


def speech_cfg(root: Path, tmp_path: Path, *overrides: str):
    return compose_config(["recipe=speech_translation/quickstart", *TINY, "encoder.conv_channels=16",
                           f"data.root={root}", "data.synthetic=null", "data.min_batches_per_epoch=null", "tokenizer.vocab_size=40", *RUN, *overrides],
                          output_dir=tmp_path / "run")


def one_line_error(excinfo) -> str:
    """The DataError's message: one line, not PyTorch's worker report around it."""
    message = str(excinfo.value)
    assert "\n" not in message and "DataLoader worker" not in message and "Traceback" not in message, message
    return message


# --- 1. errors inside DataLoader workers reach the user as the main process's one line -------------------


def corrupt(path: Path) -> None:
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt this is not audio")


def empty(path: Path) -> None:
    sf.write(path, np.zeros(0, np.float32), RATE)


def nan(path: Path) -> None:
    wave = np.full(4800, 0.1, np.float32)
    wave[100] = np.nan
    sf.write(path, wave, RATE, subtype="FLOAT")


def cut_in_half(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage,message", [
    (corrupt, "cannot be read as audio"), (empty, "the audio has no samples"),
    (nan, "the audio holds NaN or infinite sample values"), (cut_in_half, r"truncated: the header says 4800 samples, the file holds \d+"),
])
def test_bad_audio_in_a_worker_is_one_line_naming_the_file(tmp_path, damage, message):
    root = speech_corpus(tmp_path / "data")
    bad = root / "clips" / "train2.wav"
    damage(bad)
    with pytest.raises(DataError) as excinfo:
        train(speech_cfg(root, tmp_path))
    assert re.search(f"^{root / 'train.tsv'}:4: {bad}: {message}", one_line_error(excinfo)), str(excinfo.value)


def coco_set(root: Path) -> Path:
    """COCO captions JSON for train (4 images, png and jpg) and valid (2), images in images/."""
    (root / "images").mkdir(parents=True)
    for split, count in (("train", 4), ("valid", 2)):
        images = []
        for i in range(count):
            name = f"{split}{i}.{'png' if i % 2 else 'jpg'}"
            Image.effect_noise((48, 48), 40 + 10 * i).convert("RGB").save(root / "images" / name)
            images.append({"id": i, "file_name": name})
        annotations = [{"id": i, "image_id": i, "caption": WORDS[i]} for i in range(count)]
        (root / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def caption_overrides(root: Path) -> list[str]:
    return ["recipe=captioning/quickstart", *TINY[4:], f"data.root={root}", "data.synthetic=null",
            "data.train=captions_train.json", "data.valid=captions_valid.json", "data.images=images",
            "encoder.data_config.input_size=[3,32,32]", "tokenizer.vocab_size=40", "tokenizer.model_type=unigram", *RUN]


def text_as_image(path: Path) -> None:
    path.write_text("this is a text file, not a picture\n")


@pytest.mark.parametrize("name,damage,message", [
    ("train0.jpg", cut_in_half, "image cannot be decoded"), ("train1.png", text_as_image, "not an image file"),
])
def test_bad_image_in_a_worker_is_one_line_naming_the_file(tmp_path, name, damage, message):
    root = coco_set(tmp_path / "coco")
    damage(root / "images" / name)
    with pytest.raises(DataError) as excinfo:
        train(compose_config(caption_overrides(root), output_dir=tmp_path / "run"))
    text = one_line_error(excinfo)
    assert text.startswith(f"{root / 'captions_train.json'}: image id {name[5]}") and str(root / "images" / name) in text
    assert message in text


def test_mmx_train_prints_a_worker_error_as_one_line(tmp_path):
    root = coco_set(tmp_path / "coco")
    text_as_image(root / "images" / "train1.png")
    result = subprocess.run(["mmx-train", *caption_overrides(root), f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=cli_env())
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(root / "images" / "train1.png") in errors[0] and "not an image file" in errors[0]
    assert result.stderr.splitlines()[-1] == errors[0]  # the last word, after Lightning's start-up notes
    assert "Traceback" not in result.stderr and "worker process" not in result.stderr, result.stderr[-3000:]


# --- 2. truncated WAV files ---------------------------------------------------------------------------


def test_a_wav_cut_in_half_is_an_error_or_skipped_and_counted(tmp_path):
    good, bad = tone(tmp_path / "good.wav", 1.0), tone(tmp_path / "bad.wav", 1.0)
    cut_in_half(bad)
    assert sf.info(bad).frames < RATE  # libsndfile alone would read the half without a word
    processor = AudioProcessor()
    assert processor(str(good)).shape[0] == 98
    with pytest.raises(DataError, match=f"{bad}: truncated: the header says 16000 samples, the file holds 79"):
        processor(str(bad))
    # a fairseq slice reaching past the end of the file
    with pytest.raises(DataError, match=r"the slice asks for 8000 samples from sample 12000, but the file holds only 4000"):
        processor(f"{good}:12000:8000")

    root = speech_corpus(tmp_path / "data")
    cut_in_half(root / "clips" / "train1.wav")
    module = Seq2SeqDataModule.from_config(speech_cfg(root, tmp_path, "data.num_workers=0", "data.skip_invalid=true"))
    module.prepare(("train",))
    batches = list(module.loader("train", shuffle=False))
    assert sum(b["skipped"] for b in batches) == 1 and sum(len(b.get("index", [])) for b in batches) == 3


# --- 3. non-UTF-8 lines are skipped with skip_invalid, pairs stay aligned ---------------------------------


def text_cfg(root: Path, *overrides: str):
    return compose_config([*TINY, f"data.root={root}", "data.synthetic=null", "data.src_lang=en", "data.tgt_lang=xx",
                           *overrides])


def write_text(root: Path, name: str, lines: list[bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"".join(line + b"\n" for line in lines))
    return root / name


def test_non_utf8_lines_are_skipped_in_both_files_and_counted(tmp_path, caplog):
    src = [f"source sentence {i}".encode() for i in range(10)]
    tgt = [f"target sentence {i}".encode() for i in range(10)]
    src[3], tgt[6] = b"caf\xe9 au lait", b"na\xefve"
    write_text(tmp_path, "train.en", src), write_text(tmp_path, "train.xx", tgt)
    write_text(tmp_path, "valid.en", src[:2]), write_text(tmp_path, "valid.xx", tgt[:2])
    with pytest.raises(DataError, match=r"train\.en:4: not valid UTF-8 .*data\.skip_invalid=true"):
        Seq2SeqDataModule.from_config(text_cfg(tmp_path)).prepare()
    module = Seq2SeqDataModule.from_config(text_cfg(tmp_path, "data.skip_invalid=true"))
    with caplog.at_level(logging.WARNING):
        module.prepare()
    samples = module.splits["train"].samples
    assert [s.sources["src"] for s in samples] == [f"source sentence {i}" for i in range(10) if i not in (3, 6)]
    assert [s.target for s in samples] == [f"target sentence {i}" for i in range(10) if i not in (3, 6)]  # aligned
    assert module.skipped.counts == {"not valid UTF-8": 2}
    assert f"{tmp_path / 'train.en'}:4" in caplog.text and f"{tmp_path / 'train.xx'}:7" in caplog.text


def test_non_utf8_manifest_row_is_skipped_and_counted(tmp_path):
    root = speech_corpus(tmp_path)
    with open(root / "train.tsv", "ab") as f:
        f.write(b"u9\tclips/train0.wav\t28\tgr\xfc\xdfe\n")
    with pytest.raises(DataError, match=r"train\.tsv:6: not valid UTF-8"):
        read_speech_tsv(speech_cfg(root, tmp_path).data, "train", SkipReport())
    skipped = SkipReport()
    assert len(read_speech_tsv(speech_cfg(root, tmp_path, "data.skip_invalid=true").data, "train", skipped)) == 4
    assert skipped.counts == {"not valid UTF-8": 1}


# --- 4. empty splits and folders where files belong ------------------------------------------------------


def test_an_empty_validation_split_names_its_files(tmp_path):
    write_text(tmp_path, "train.en", [b"one two"] * 5), write_text(tmp_path, "train.xx", [b"un deux"] * 5)
    write_text(tmp_path, "valid.en", []), write_text(tmp_path, "valid.xx", [])
    with pytest.raises(DataError) as excinfo:
        Seq2SeqDataModule.from_config(text_cfg(tmp_path)).prepare()
    assert str(excinfo.value).startswith(f"{tmp_path / 'valid.en'}, {tmp_path / 'valid.xx'}: no usable sentence pairs "
                                         "in data.valid (it is empty)")
    write_text(tmp_path, "valid.en", [b"   "]), write_text(tmp_path, "valid.xx", [b"x"])
    with pytest.raises(DataError, match=r"valid\.xx: no usable sentence pairs in data\.valid \(all 1 were invalid and "
                                        r"skipped 1 entries so far: 1 empty"):
        Seq2SeqDataModule.from_config(text_cfg(tmp_path, "data.skip_invalid=true")).prepare()


def test_folders_where_files_belong_are_named(tmp_path):
    (tmp_path / "train.en").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'train.en'}: is a folder, but a UTF-8 text file"):
        Seq2SeqDataModule.from_config(text_cfg(tmp_path)).prepare()

    root = speech_corpus(tmp_path / "speech")
    (root / "clips" / "folder.wav").mkdir()
    manifest(root / "train.tsv", [("clips/train0.wav", 28, "gut"), ("clips/folder.wav", 28, "schlecht")])
    with pytest.raises(DataError, match=r"train\.tsv:3: audio path .*folder\.wav is a folder, not an audio file"):
        read_speech_tsv(speech_cfg(root, tmp_path).data, "train", SkipReport())
    with pytest.raises(DataError, match=r"folder\.wav: is a folder, but an audio file is expected"):
        AudioProcessor()(str(root / "clips" / "folder.wav"))
    (root / "valid.tsv").unlink()
    (root / "valid.tsv").mkdir()
    with pytest.raises(DataError, match=r"valid\.tsv: is a folder, but a fairseq speech-to-text manifest"):
        read_speech_tsv(speech_cfg(root, tmp_path).data, "valid", SkipReport())

    coco = coco_set(tmp_path / "coco")
    (coco / "captions_train.json").unlink()
    (coco / "captions_train.json").mkdir()
    with pytest.raises(DataError, match=r"captions_train\.json: is a folder, but the COCO captions file \(JSON\)"):
        Seq2SeqDataModule.from_config(compose_config(caption_overrides(coco))).prepare()


# --- 5. empty training text --------------------------------------------------------------------------


def test_empty_training_files_say_there_is_no_training_text(tmp_path):
    write_text(tmp_path, "train.en", []), write_text(tmp_path, "train.xx", [])
    write_text(tmp_path, "valid.en", [b"a b"]), write_text(tmp_path, "valid.xx", [b"c d"])
    with pytest.raises(DataError, match=f"{tmp_path / 'train.en'}, {tmp_path / 'train.xx'}: .*there is no training text"):
        Seq2SeqDataModule.from_config(text_cfg(tmp_path)).prepare()
    with pytest.raises(DataError, match="data.train .*: there is no training text to train the tokenizer on"):
        Tokenizer.train(["", "  "], vocab_size=40, where="data.train (train.en)")


# --- 6. mmx-generate: non-UTF-8 input -----------------------------------------------------------------


def test_generate_names_a_non_utf8_input_line(tmp_path, monkeypatch):
    text = get_plugin("text")
    bad = write_text(tmp_path, "in.txt", [b"fine", b"caf\xe9"])
    with pytest.raises(DataError, match=f"{bad}:2: not valid UTF-8"):
        read_inputs([str(bad)], text)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\r\nalso fine\n\xff\xfe\n")))
    with pytest.raises(DataError, match="stdin:3: not valid UTF-8"):
        read_inputs([], text)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\r\ntwo\n")))
    assert read_inputs(["-"], text) == [("stdin:1", "one"), ("stdin:2", "two")]
    with pytest.raises(DataError, match=f"{tmp_path}: is a folder, but a text file"):
        read_inputs([str(tmp_path)], text)


# --- 7. fairseq's two n_frames conventions; overlong messages in the source's unit ----------------------------


@pytest.mark.parametrize("unit", ["frames", "samples"])
def test_n_frames_in_frames_or_in_samples(tmp_path, caplog, unit):
    seconds = [0.3, 0.5, 0.8, 1.0]
    rows = []
    for i, s in enumerate(seconds):
        n_samples = int(RATE * s)
        tone(tmp_path / f"a{i}.wav", s)
        rows.append((f"a{i}.wav", n_samples if unit == "samples" else fbank_frames(n_samples, RATE), WORDS[i]))
    manifest(tmp_path / "train.tsv", rows)
    with caplog.at_level(logging.INFO, logger="mmxattn.data.speech"):
        samples = read_speech_tsv(speech_cfg(tmp_path, tmp_path).data, "train", SkipReport())
    processor = AudioProcessor()
    assert [s.sources["src"].n_frames for s in samples] == [processor(s.sources["src"]).shape[0] for s in samples]
    assert ("n_frames counts audio samples" in caplog.text) == (unit == "samples")


def test_overlong_messages_speak_of_the_sources_unit(tmp_path):
    root = speech_corpus(tmp_path)
    with pytest.raises(DataError, match=r"train\.tsv:2: longer than data\.max_len=20: source 'src' 28 frames \(10 ms\), "
                                        r"target \d+ tokens\. Raise data\.max_len"):
        Seq2SeqDataModule.from_config(speech_cfg(root, tmp_path, "data.max_len=20")).prepare()


# --- 8. sample rates that give no frames, empty files -------------------------------------------------------


def with_header_rate(path: Path, rate: int) -> Path:
    data = bytearray(tone(path).read_bytes())
    data[24:28] = struct.pack("<I", rate)  # the fmt chunk's sample rate field
    path.write_bytes(bytes(data))
    return path


def test_odd_sample_rates_and_empty_files_are_named(tmp_path):
    processor = AudioProcessor()
    cases = {  # 20 samples at 1 kHz are 320 at 16 kHz: less than one window, no frame
        tone(tmp_path / "low.wav", seconds=0.02, rate=1000): "only 320 samples at 16000 Hz, shorter than one 25 ms",
        tone(tmp_path / "lower.wav", seconds=1, rate=100): r"sample rate 100 Hz in the file header",
        with_header_rate(tmp_path / "huge.wav", 2**31 - 1): r"sample rate 2147483647 Hz in the file header",
        with_header_rate(tmp_path / "tiny.wav", 3): r"sample rate 3 Hz in the file header",
        tmp_path / "empty.flac": "cannot be read as audio",
    }
    (tmp_path / "empty.flac").write_bytes(b"")
    for path, message in cases.items():
        with pytest.raises(DataError, match=f"{path}: {message}"):
            processor(str(path))
        processor.length(str(path))  # sizing never fails: the processor names the problem when it loads
