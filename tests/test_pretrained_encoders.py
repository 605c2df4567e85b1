"""Pretrained encoders without a model hub: weights a test writes itself, loaded the way users load them.

timm: `encoder.pretrained=true` through timm's own loader, from a local file (timm's pretrained_cfg_overlay
file) or from a Hugging Face hub cache in offline mode (a cache laid out as the hub client writes it); a cold
cache is one clear error. An export of a model trained from pretrained weights loads on a machine that has
neither the file nor the hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mmxattn import registry
from mmxattn.checkpoint import export_model, load_for_inference
from mmxattn.errors import ConfigError
from mmxattn.model import build_model
from mmxattn.tokenizer import Tokenizer, Tokenizers

from .conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")


def random_weights(model_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the architecture with random values: what `pretrained` weights look like to a test."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def hub_cache(root: Path, model_name: str, state: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face hub cache holding the model's default pretrained tag, as `hf_hub_download` leaves it."""
    repo_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id  # e.g. timm/test_vit.r160_in1k
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    return root


def image_encoder(model_name: str, **cfg):
    return registry.build_encoder("image_timm", {"name": "image_timm", "model_name": model_name, **cfg})


@pytest.mark.parametrize("model_name", ["test_vit", "test_convnext"])  # a ViT and a CNN
def test_pretrained_from_a_local_file_through_timms_loader(model_name, tmp_path):
    state = random_weights(model_name)
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    encoder = image_encoder(model_name, pretrained=True, weights=str(path), freeze="all")
    loaded = encoder.backbone.state_dict()
    for key, value in loaded.items():  # every backbone weight is the file's (the classifier head is dropped)
        torch.testing.assert_close(value, state[key], msg=key)
    assert not any(p.requires_grad for p in encoder.backbone.parameters())  # frozen: no gradients


def test_pretrained_from_a_warm_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = random_weights("test_vit", seed=1)
    cache = hub_cache(tmp_path / "hub", "test_vit", state)
    encoder = image_encoder("test_vit", pretrained=True, hub_cache=str(cache))
    torch.testing.assert_close(encoder.backbone.patch_embed.proj.weight, state["patch_embed.proj.weight"])


def test_a_cold_hub_cache_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"encoder.pretrained=true: timm could not load the pretrained weights of "
                                          r"test_convnext \(timm/test_convnext.r160_in1k\).*HF_HUB_OFFLINE=1 is set.*"
                                          r"timm.create_model\('test_convnext', pretrained=True\).*encoder.weights=PATH"):
        image_encoder("test_convnext", pretrained=True, hub_cache=str(tmp_path / "empty"))


def test_an_export_of_a_pretrained_model_loads_without_the_file_or_hub(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(random_weights("test_convnext"), str(path))
    cfg = compose_config(["recipe=captioning/quickstart", "encoder=timm_test_convnext_32px", "encoder.pretrained=true",
                          f"encoder.weights={path}", "decoder.d_model=32", "decoder.num_heads=2"], output_dir=tmp_path)
    tokenizers = Tokenizers(Tokenizer.train(["a red square", "two blue circles"] * 10, vocab_size=30))
    model = build_model(cfg, tokenizers)
    export_model(tmp_path / "model.pt", model, tokenizers, cfg)
    path.unlink()  # another machine: no weights file, no hub
    loaded, _, config = load_for_inference(tmp_path / "model.pt", backend="eager")
    assert config.encoder.pretrained and config.encoder.weights == str(path)  # the record of how it was trained
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
