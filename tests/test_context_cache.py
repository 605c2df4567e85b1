"""Frozen encoders compute once: the context cache gives the same losses as the encoder, and is never stale."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mmxattn.errors import ConfigError
from mmxattn.quickstart.captions import write_captions
from mmxattn.train import train

from .conftest import TINY, compose_config
from .run_helpers import read_trace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    return write_captions(tmp_path_factory.mktemp("captions"), train=48, valid=8, test=8, seed=2)


def weights_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False)
    params = dict(model.named_parameters())  # random weights; BatchNorm's statistics as initialised
    save_file({k: torch.randn_like(v) * 0.1 if k in params else v for k, v in model.state_dict().items()}, str(path))
    return path


def run(captions: Path, out: Path, *overrides):
    """test_resnet: BatchNorm, whose statistics a frozen encoder must leave alone (a cached run cannot update them)."""
    tiny = [o for o in TINY if not o.startswith("encoder.")]
    cfg = compose_config(["recipe=captioning/quickstart", "encoder=timm_test_convnext_32px",
                          "encoder.model_name=test_resnet", "encoder.freeze=all",
                          f"data.root={captions}", "data.synthetic=null", "data.num_workers=0", *tiny,
                          "trainer.max_epochs=2", "trace_data=true", "generation.max_len=6", "eval.generation.max_len=6",
                          *overrides], output_dir=out)
    return train(cfg)


def test_the_cache_gives_the_same_losses_and_is_rebuilt_for_other_weights(captions, tmp_path, caplog):
    weights = weights_file(tmp_path / "a.safetensors", seed=0)
    plain = run(captions, tmp_path / "plain", f"encoder.weights={weights}")
    cache = tmp_path / "cache"
    with caplog.at_level("INFO", logger="mmxattn.context_cache"):
        cached = run(captions, tmp_path / "cached", f"encoder.weights={weights}", f"encoder.cache={cache}")
    # 48 training + 8 validation images before training, the 8 test images after it: every image once
    assert "56 samples encoded now" in caplog.text and "8 samples encoded now" in caplog.text, caplog.text
    losses = [row[3] for row in read_trace(tmp_path / "plain" / "trace" / "rank0.tsv")]
    assert [row[3] for row in read_trace(tmp_path / "cached" / "trace" / "rank0.tsv")] == pytest.approx(losses, rel=1e-5)
    assert cached["val_cider"] == pytest.approx(plain["val_cider"])
    (key,) = [p.name for p in cache.iterdir()]
    assert len(list((cache / key).glob("*.pt"))) == 48 + 8 + 8

    caplog.clear()
    with caplog.at_level("INFO", logger="mmxattn.context_cache"):  # the same run again: nothing to encode
        run(captions, tmp_path / "again", f"encoder.weights={weights}", f"encoder.cache={cache}")
    assert "0 samples encoded now" in caplog.text and "56 samples" not in caplog.text
    other = weights_file(tmp_path / "b.safetensors", seed=1)  # other weights: another key, encoded anew
    run(captions, tmp_path / "other", f"encoder.weights={other}", f"encoder.cache={cache}")
    assert len(list(cache.iterdir())) == 2


def test_a_trained_encoder_cannot_be_cached(captions, tmp_path):
    with pytest.raises(ConfigError, match=r"encoder.cache=.*trains \(some weights are not frozen\).*freeze=all"):
        run(captions, tmp_path / "run", "encoder.freeze=none", f"encoder.cache={tmp_path / 'cache'}")


def test_the_encoder_key_reads_every_weight_and_setting():
    from mmxattn.context_cache import encoder_key

    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # 0-d num_batches_tracked
    key = encoder_key(encoder, {"name": "x", "size": 1, "cache": "/a"})
    assert key == encoder_key(encoder, {"name": "x", "size": 1, "cache": "/b"})  # where the cache is: not a setting
    assert key != encoder_key(encoder, {"name": "x", "size": 2})
    encoder[1].num_batches_tracked += 1
    assert key != encoder_key(encoder, {"name": "x", "size": 1})
