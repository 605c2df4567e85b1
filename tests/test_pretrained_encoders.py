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


# ---------------------------------------------------------------------------------------------------
# torchaudio self-supervised speech encoders (encoders/ssl_speech.py)

# a small model of the bundles' kind, for tests that train: 2 CNN layers, 2 transformer layers of width 32
SMALL_ARCH = {"extractor_conv_layer_config": [[16, 10, 5], [16, 8, 4]], "encoder_embed_dim": 32,
              "encoder_num_heads": 2, "encoder_num_layers": 2, "encoder_ff_interm_features": 64,
              "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "encoder_layer_drop": 0.0}


def hydra_dict(values: dict) -> str:
    """{a: 1, b: [[2, 3]]} in Hydra's override grammar (keys unquoted)."""
    return "{" + ",".join(f"{k}:{str(v).replace(' ', '')}" for k, v in values.items()) + "}"


def ssl_encoder(**cfg):
    return registry.build_encoder("ssl_speech", {"name": "ssl_speech", "pretrained": False, **cfg})


def saved_bundle_model(tmp_path: Path, bundle: str, arch: dict | None = None, seed: int = 0) -> Path:
    """A randomly initialised torchaudio model of the bundle's architecture, saved as a state dict."""
    import torchaudio

    from mmxattn_encoders.ssl_speech import build_architecture

    torch.manual_seed(seed)
    path = tmp_path / f"{bundle}.pt"
    torch.save(build_architecture(getattr(torchaudio.pipelines, bundle), arch).state_dict(), path)
    return path


def test_ssl_encoder_loads_a_full_size_wav2vec2_and_stays_frozen(tmp_path):
    path = saved_bundle_model(tmp_path, "WAV2VEC2_BASE")
    encoder = ssl_encoder(bundle="WAV2VEC2_BASE", weights=str(path), train_layers=0)
    assert not encoder.model.training  # as built: Lightning keeps a model's modes and never calls .train()
    encoder.train()
    saved = torch.load(path, weights_only=True)
    for key, value in encoder.model.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
    assert not any(p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training
    batch = {"waveform": torch.randn(2, 16000), "lengths": torch.tensor([16000, 8000])}
    batch["mask"] = torch.arange(16000)[None] < batch["lengths"][:, None]
    context = encoder(batch)
    assert context.states.shape == (2, 25, 256)  # 1 s: 49 frames of 20 ms, halved by downsample=2
    assert context.mask.sum(1).tolist() == [25, 12]


@pytest.mark.parametrize("bundle", ["HUBERT_BASE", "WAVLM_BASE_PLUS", "WAV2VEC2_XLSR_300M"])
def test_ssl_encoder_fine_tunes_only_its_last_layers(bundle, tmp_path):
    path = saved_bundle_model(tmp_path, bundle, SMALL_ARCH)
    encoder = ssl_encoder(bundle=bundle, weights=str(path), arch=SMALL_ARCH, train_layers=1, d_model=16).train()
    batch = {"waveform": torch.randn(2, 4000), "lengths": torch.tensor([4000, 3000])}
    encoder(batch).states.sum().backward()
    layers = encoder.model.encoder.transformer.layers
    assert all(p.grad is not None for p in layers[-1].parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in layers[0].parameters())
    assert all(p.grad is None for p in encoder.model.feature_extractor.parameters())
    assert encoder.layer_logits.grad is not None  # the SUPERB layer weights learn
    assert layers[-1].training and not layers[0].training


def test_ssl_encoder_bad_config_and_offline_download_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"encoder.bundle='WAV2VEC3' is not a torchaudio.pipelines speech model"):
        ssl_encoder(bundle="WAV2VEC3")
    with pytest.raises(ConfigError, match=r"encoder.weights=.*does not fit the HUBERT_BASE model"):
        ssl_encoder(bundle="HUBERT_BASE", weights=str(saved_bundle_model(tmp_path, "HUBERT_BASE", SMALL_ARCH)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"WAV2VEC2_BASE are not in the torch hub cache .*HF_HUB_OFFLINE=1.*"
                                          r"torchaudio.pipelines.WAV2VEC2_BASE.get_model\(\).*encoder.weights=PATH"):
        registry.build_encoder("ssl_speech", {"name": "ssl_speech", "bundle": "WAV2VEC2_BASE", "pretrained": True})


def test_covost_xlsr_recipe_trains_a_few_steps(tmp_path):
    from mmxattn.quickstart.speech import write_speech_corpus
    from mmxattn.train import train

    from .test_speech_data import SHORT_RUN, fairseq_covost

    corpus = write_speech_corpus(tmp_path / "speech", train=12, valid=4, test=4, seed=3)
    root = fairseq_covost(corpus, tmp_path / "covost")
    weights = saved_bundle_model(tmp_path, "WAV2VEC2_XLSR_300M", SMALL_ARCH)
    short = [o for o in SHORT_RUN if not o.startswith("encoder.")]
    cfg = compose_config(["recipe=speech_translation/covost_xlsr", f"data.root={root}", f"encoder.weights={weights}",
                          f"encoder.arch={hydra_dict(SMALL_ARCH)}", "encoder.train_layers=1",
                          "encoder.d_model=32", "decoder.d_model=32", "decoder.num_heads=2", "decoder.num_layers=1",
                          "decoder.ffn_dim=64", "tokenizer.vocab_size=40", *short], output_dir=tmp_path / "run")
    results = train(cfg)
    assert "test_bleu" in results and (tmp_path / "run" / "model.pt").is_file()
