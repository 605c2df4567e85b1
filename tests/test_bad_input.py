"""A user's mistakes get a message that names the file/line or config key and says how to fix it."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.errors import ConfigError, DataError, PluginError
from mmxattn.model import build_model
from mmxattn.train import train

from .conftest import TINY, compose_config


def write_pair(root: Path, prefix: str, src: list[str], tgt: list[str], gz: bool = False):
    root.mkdir(parents=True, exist_ok=True)
    for lang, lines in (("en", src), ("xx", tgt)):
        data = "".join(line + "\n" for line in lines).encode()
        if gz:
            (root / f"{prefix}.{lang}.gz").write_bytes(gzip.compress(data))
        else:
            (root / f"{prefix}.{lang}").write_bytes(data)


def datamodule(root, *overrides):
    cfg = compose_config([*TINY, f"data.root={root}", "data.synthetic=null", *overrides])
    return Seq2SeqDataModule.from_config(cfg)


GOOD = [f"sentence number {i} is here" for i in range(30)]


def test_missing_file_names_path_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"train\.en\[\.gz\]: file not found.*data\.root"):
        datamodule(tmp_path / "nowhere").prepare()


def test_gzip_files_are_read(tmp_path):
    write_pair(tmp_path, "train", GOOD, GOOD, gz=True)
    write_pair(tmp_path, "valid", GOOD[:3], GOOD[:3], gz=True)
    dm = datamodule(tmp_path)
    dm.prepare()
    assert len(dm.splits["train"]) == 30


def test_corrupt_gzip_is_named(tmp_path):
    write_pair(tmp_path, "valid", GOOD[:3], GOOD[:3])
    (tmp_path / "train.en.gz").write_bytes(gzip.compress(b"x\n" * 100)[:20])
    (tmp_path / "train.xx").write_text("y\n" * 100)
    with pytest.raises(DataError, match=r"train\.en\.gz: cannot be read"):
        datamodule(tmp_path).prepare()


def test_empty_line_is_an_error_naming_file_and_line_unless_skipped(tmp_path, caplog):
    tgt = list(GOOD)
    tgt[2] = "   "
    write_pair(tmp_path, "train", GOOD, tgt)
    write_pair(tmp_path, "valid", GOOD[:3], GOOD[:3])
    with pytest.raises(DataError, match=r"train\.xx:3: empty line.*data\.skip_invalid=true"):
        datamodule(tmp_path).prepare()
    dm = datamodule(tmp_path, "data.skip_invalid=true")
    dm.prepare()
    assert len(dm.splits["train"]) == 29 and dm.skipped.counts == {"empty": 1}
    assert "skipped 1 samples: 1 empty" in caplog.text


def test_line_counts_that_differ(tmp_path):
    write_pair(tmp_path, "train", GOOD, GOOD[:-1])
    with pytest.raises(DataError, match=r"train\.en has 30 lines but .*train\.xx has 29; parallel files must be line-aligned"):
        datamodule(tmp_path).prepare()


def test_overlong_line_names_line_and_limit(tmp_path):
    src = list(GOOD)
    src[4] = " ".join(["word"] * 80)
    write_pair(tmp_path, "train", src, GOOD)
    write_pair(tmp_path, "valid", GOOD[:3], GOOD[:3])
    with pytest.raises(DataError, match=r"train\.en:5: longer than data\.max_len=40: source 'src' \d+ tokens, target \d+ tokens"):
        datamodule(tmp_path, "data.max_len=40").prepare()
    dm = datamodule(tmp_path, "data.max_len=40", "data.skip_invalid=true")
    dm.prepare()
    assert dm.skipped.total == 1 and len(dm.splits["train"]) == 29


def test_non_utf8_line_is_named(tmp_path):
    write_pair(tmp_path, "train", GOOD, GOOD)
    with open(tmp_path / "train.en", "ab") as f:
        f.write(b"caf\xe9\n")
    (tmp_path / "train.xx").write_text("".join(g + "\n" for g in GOOD) + "cafe\n")
    with pytest.raises(DataError, match=r"train\.en:31: not valid UTF-8"):
        datamodule(tmp_path).prepare()


def test_unknown_encoder_name_lists_available(tiny_cfg):
    with pytest.raises(PluginError, match=r"unknown encoder 'nope'\. Available: .*text.*encoder=<name>"):
        build_model(tiny_cfg("encoder.name=nope"), None)


@pytest.mark.parametrize(
    "override,message",
    [
        ("decoder.num_heads=3", r"decoder\.d_model=32 is not divisible by decoder\.num_heads=3"),
        ("encoder.num_heads=5", r"encoder\.d_model=32 is not divisible by encoder\.num_heads=5"),
        ("optim.schedule=cosinus", r"optim\.schedule='cosinus'"),
        ("eval.generation.strategy=best", r"generation\.strategy='best'"),
        ("data.format=csv", r"data\.format=csv: unknown data format 'csv'\. Available: .*parallel_text"),
        ("eval.metrics=[bleu,meteor]", r"eval\.metrics: unknown \['meteor'\]"),
    ],
)
def test_invalid_config_values_name_the_key(tiny_cfg, override, message):
    with pytest.raises((ConfigError, DataError, PluginError), match=message):
        cfg = tiny_cfg(override, "trainer.max_steps=1", "+trainer.limit_val_batches=1", "data.test=null")
        train(cfg)


def cli(*args, cwd):
    return subprocess.run(["mmx-train", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_user_error_is_one_message_without_traceback(tmp_path):
    result = cli("data.root=/does/not/exist", "data.synthetic=null", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: /does/not/exist/train.en[.gz]: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_unknown_recipe_and_group_option_list_choices(tmp_path):
    result = cli("recipe=translation/nope", cwd=tmp_path)
    assert result.returncode == 2 and "unknown recipe 'translation/nope'" in result.stderr
    assert "translation/quickstart" in result.stderr and "translation/multi30k" in result.stderr
    result = cli("encoder=nope", cwd=tmp_path)
    assert result.returncode != 0 and "Available options in 'encoder'" in result.stderr and "text" in result.stderr
