"""Run tracking: the logger config group, with attention pictures of fixed validation samples each epoch."""

from __future__ import annotations

import importlib.util

import pytest

from mmxattn.errors import ConfigError
from mmxattn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
SHORT = ["trainer.max_epochs=2", "eval.generation.max_len=8", "generation.max_len=8", "generation.beam_size=1"]


def test_tensorboard_gets_scalars_hyperparameters_and_attention_images(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_cfg("logger=tensorboard", "logger.attention_samples=2", *SHORT))
    run = tmp_path / "run"
    assert (run / "metrics.csv").is_file()  # always there, whatever the logger
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "val/bleu"} <= set(tags["scalars"]), tags["scalars"]
    assert set(tags["images"]) == {"attention/0", "attention/1"}, tags["images"]
    images = events.Images("attention/0")
    assert len(images) == 2 and images[0].width > 100 and images[0].height > 100  # one per validation (epoch)
    assert (run / "tensorboard" / "hparams.yaml").read_text().count("tokenizer") >= 1  # the resolved config


def test_csv_writes_attention_pictures_to_the_run_folder(tiny_cfg, tmp_path):
    train(tiny_cfg("logger.attention_samples=1", *SHORT))
    assert sorted(p.name for p in (tmp_path / "run" / "attention").rglob("*.png")) == ["0.png", "0.png"]
    assert (tmp_path / "run" / "attention" / "epoch001" / "0.png").stat().st_size > 1000


@pytest.mark.parametrize("kind", ["wandb", "mlflow"])
def test_a_missing_optional_logger_names_its_extra(tiny_cfg, kind):
    if importlib.util.find_spec(kind) is not None:
        pytest.skip(f"{kind} is installed here")
    with pytest.raises(ConfigError, match=rf"logger={kind} needs the package {kind}.*pip install 'mmxattn\[{kind}\]'"):
        train(tiny_cfg(f"logger={kind}", *SHORT))
