"""The image_timm encoder plugin: token shapes per architecture, training through it, freezing, local
weights, preprocessing, and bad image files."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from mmxattn import registry
from mmxattn.data.datamodule import Collater, Seq2SeqDataset
from mmxattn.data.samples import Sample
from mmxattn.decoder import TransformerDecoder
from mmxattn.errors import ConfigError, DataError
from mmxattn.model import EncoderDecoder
from mmxattn.tokenizer import BOS, EOS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

# (config, context tokens, width): a ViT (patch tokens; its class token dropped), a ResNet and a ConvNeXt
# (H×W feature maps), all tiny so that the whole file runs in seconds on a CPU.
ARCHS = {
    "vit": ({"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "depth": 2}}, 4, 192),
    "resnet": ({"model_name": "resnet10t", "data_config": {"input_size": [3, 64, 64]}}, 4, 512),
    "convnext": ({"model_name": "convnext_atto", "data_config": {"input_size": [3, 64, 64]}}, 4, 320),
}


def image_cfg(base: dict, **extra) -> dict:
    cfg = {"name": "image_timm", "weights": None, "freeze": "none", "prefix_tokens": "drop",
           "data_config": {"crop_pct": 1.0, "crop_mode": "squash"}, "augment": False}
    cfg.update(base)
    cfg["data_config"] = {**cfg["data_config"], **base.get("data_config", {})}
    cfg.update(extra)
    return cfg


def build(cfg: dict, train: bool = False):
    plugin = registry.get_plugin("image_timm")
    return registry.build_encoder("image_timm", cfg), plugin.build_processor(cfg, train=train)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four small RGB images with different content, as files."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0)]):
        image = Image.new("RGB", (48, 40), (230, 230, 230))
        image.paste(Image.new("RGB", (20, 16), colour), ((i % 2) * 24, (i // 2) * 20))
        path = root / f"img{i}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def test_registered_as_a_path_plugin():
    assert "image_timm" in registry.available()
    plugin = registry.get_plugin("image_timm")
    assert plugin.input_kind == "path"
    assert {".jpg", ".jpeg", ".png"} <= set(plugin.file_extensions)


@pytest.mark.parametrize("arch", ARCHS)
def test_context_shape_mask_and_width(arch, images):
    base, tokens, width = ARCHS[arch]
    encoder, processor = build(image_cfg(base))
    assert encoder.output_dim == width
    assert all(processor.length(p) == tokens for p in images)
    batch = processor.collate([processor(p) for p in images[:3]])
    assert batch["images"].shape[:2] == (3, 3)
    context = encoder(batch)
    assert context.states.shape == (3, tokens, width)
    assert context.mask.shape == (3, tokens) and context.mask.dtype == torch.bool and context.mask.all()
    assert batch["mask"].shape == (3, tokens)


def test_vit_can_keep_its_prefix_tokens(images):
    base, tokens, width = ARCHS["vit"]
    encoder, processor = build(image_cfg(base, prefix_tokens="keep"))
    context = encoder(processor.collate([processor(images[0])]))
    assert context.states.shape == (1, tokens + 1, width)  # + the class token
    assert processor.length(images[0]) == tokens + 1


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_trains_on_the_image_context(arch, images):
    torch.manual_seed(0)
    base, _, _ = ARCHS[arch]
    encoder, processor = build(image_cfg(base))
    decoder = TransformerDecoder(vocab_size=12, d_model=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0)
    model = EncoderDecoder({"src": encoder}, decoder)
    inputs = {"src": processor.collate([processor(p) for p in images])}
    targets = torch.tensor([[4, 5, 6], [7, 8, 9], [10, 11, 4], [5, 7, 9]])  # one "caption" per image
    target_in = torch.cat([torch.full((4, 1), BOS), targets], 1)
    target_out = torch.cat([targets, torch.full((4, 1), EOS)], 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        logits = model(inputs, target_in)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), target_out.flatten())
        optimizer.zero_grad()
        loss.backward()
        if not losses:  # the gradient reaches the backbone through the bridge and cross-attention
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.backbone.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def _step(encoder, processor, images):
    """One optimizer step on everything that requires grad; returns the backbone weights before it."""
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    encoder.train()
    context = encoder(processor.collate([processor(p) for p in images]))
    head = torch.nn.Linear(encoder.output_dim, 1)
    loss = head(context.states).pow(2).mean()
    trainable = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    loss.backward()
    optimizer.step()
    return before, context


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_fully_frozen_backbone_builds_no_graph_and_does_not_change(arch, images):
    base, _, _ = ARCHS[arch]
    encoder, processor = build(image_cfg(base, freeze="all"))
    assert not any(p.requires_grad for p in encoder.parameters())
    before, context = _step(encoder, processor, images)
    assert not context.states.requires_grad  # ran under no_grad: no activations kept for backward
    assert not encoder.backbone.training  # eval mode even after .train(): BatchNorm statistics stay put
    after = encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats unchanged


def test_train_only_the_last_blocks(images):
    base, _, _ = ARCHS["resnet"]  # resnet10t blocks: layer1..layer4 after the stem
    encoder, processor = build(image_cfg(base, freeze=1))
    trainable = {n for n, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("layer4.") for n in trainable)
    before, _ = _step(encoder, processor, images)
    after = encoder.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("layer4.") and k.endswith("weight") for k in changed)
    assert not any(k.startswith(("conv1", "bn1", "layer1.", "layer2.", "layer3.")) for k in changed), changed
    assert not encoder.backbone.layer1[0].bn1.training and encoder.backbone.layer4[0].bn1.training


def test_last_n_blocks_of_a_vit_include_its_final_norm():
    encoder, _ = build(image_cfg(ARCHS["vit"][0], freeze=1))
    trainable = {n for n, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in encoder.backbone.named_parameters() if n.startswith(("blocks.1.", "norm."))}
    with pytest.raises(ConfigError, match="has 2 blocks"):
        build(image_cfg(ARCHS["vit"][0], freeze=3))
    with pytest.raises(ConfigError, match="encoder.freeze"):
        build(image_cfg(ARCHS["vit"][0], freeze="some"))


def test_weights_from_a_local_file(tmp_path):
    base = ARCHS["vit"][0]
    source = timm.create_model(base["model_name"], pretrained=False, num_classes=10, **base["model_kwargs"])
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # with its classifier head: dropped on load
    encoder, _ = build(image_cfg(base, weights=str(path)))
    loaded = encoder.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items() if k in loaded)

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    encoder, _ = build(image_cfg(base, weights=str(tmp_path / "vit.safetensors")))
    assert torch.equal(encoder.backbone.pos_embed, source.pos_embed)


def test_weights_missing_unreadable_or_for_another_model(tmp_path):
    base = ARCHS["vit"][0]
    with pytest.raises(ConfigError, match=r"encoder.weights=.*nope.pt: file not found"):
        build(image_cfg(base, weights=str(tmp_path / "nope.pt")))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        build(image_cfg(base, weights=str(tmp_path / "junk.pt")))
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(ConfigError, match="does not fit.*missing.*unexpected"):
        build(image_cfg(base, weights=str(tmp_path / "resnet.pt")))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="encoder.model_name='resnet_nonexistent'"):
        build(image_cfg({"model_name": "resnet_nonexistent"}))
    with pytest.raises(ConfigError, match="input_size"):  # a ViT built for 32 px cannot take 48 px
        build(image_cfg(ARCHS["vit"][0], data_config={"input_size": [3, 48, 48]}))
    with pytest.raises(ConfigError, match="encoder.model_kwargs.num_classes"):
        build(image_cfg({"model_name": "resnet10t", "model_kwargs": {"num_classes": 5}}))


def test_preprocessing_follows_timm_and_augmentation_is_opt_in(images):
    base = {"model_name": "resnet10t", "data_config": {"input_size": [3, 40, 40]}}
    _, processor = build(image_cfg(base))
    x = processor(images[0])
    assert x.shape == (3, 40, 40)
    # timm's ImageNet mean/std for resnet10t: the light-grey background normalizes to about +1.6
    assert x[:, -1, -1].tolist() == pytest.approx([(230 / 255 - m) / s for m, s in
                                                   [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]], abs=0.05)
    _, train_processor = build(image_cfg(base, augment=True, augmentation={"scale": [0.3, 1.0], "hflip": 0.5}), train=True)
    torch.manual_seed(0)
    views = [train_processor(images[0]) for _ in range(4)]
    assert all(v.shape == (3, 40, 40) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crops
    assert torch.equal(processor(images[0]), x)  # evaluation preprocessing is deterministic


@pytest.fixture
def odd_images(tmp_path):
    """Images in other modes and broken files, by name."""
    files = {}
    Image.new("L", (30, 30), 128).save(files.setdefault("gray", tmp_path / "gray.jpg"))
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))  # fully transparent red: should become white
    rgba.paste((0, 0, 255, 255), (0, 0, 15, 30))
    rgba.save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.new("I;16", (30, 30), 40000).save(files.setdefault("gray16", tmp_path / "gray16.png"))
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([0, 255, 0] * 256)
    palette.save(files.setdefault("palette", tmp_path / "palette.gif"))
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(files.setdefault("cmyk", tmp_path / "cmyk.jpg"))
    good = tmp_path / "good.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good, quality=95)
    data = good.read_bytes()
    (files.setdefault("truncated", tmp_path / "truncated.jpg")).write_bytes(data[: len(data) // 2])
    (files.setdefault("text", tmp_path / "notes.jpg")).write_text("this is not an image\n")
    (files.setdefault("empty", tmp_path / "empty.png")).write_bytes(b"")
    files["missing"] = tmp_path / "missing.jpg"
    return files


def test_grayscale_rgba_16bit_palette_and_cmyk_become_rgb(odd_images):
    from mmxattn_encoders.image_timm import load_image

    for name in ("gray", "rgba", "gray16", "palette", "cmyk"):
        image = load_image(odd_images[name])
        assert image.mode == "RGB" and image.size == (30, 30), name
    rgba = load_image(odd_images["rgba"])
    assert rgba.getpixel((25, 5)) == (255, 255, 255)  # transparent -> white background, not its hidden red
    assert rgba.getpixel((5, 5)) == (0, 0, 255)
    _, processor = build(image_cfg(ARCHS["resnet"][0]))
    assert processor(str(odd_images["gray"])).shape == (3, 64, 64)


@pytest.mark.parametrize("name,message", [
    ("missing", "image file not found"), ("truncated", "cannot be decoded"), ("text", "not an image file"),
    ("empty", "not an image file"),
])
def test_bad_image_files_raise_data_errors_naming_the_file(odd_images, name, message):
    _, processor = build(image_cfg(ARCHS["resnet"][0]))
    with pytest.raises(DataError, match=message) as error:
        processor(str(odd_images[name]))
    assert str(odd_images[name]) in str(error.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_of_only_bad_images_does_not_crash_the_loader(odd_images, images, workers):
    _, processor = build(image_cfg(ARCHS["resnet"][0]))
    paths = [odd_images["missing"], odd_images["truncated"], odd_images["text"], images[0], images[1]]
    samples = [Sample({"src": str(p)}, "caption", f"row {i}") for i, p in enumerate(paths)]
    dataset = Seq2SeqDataset(samples, [[4, 5]] * len(samples), [4] * len(samples), {"src": processor}, skip_invalid=True)
    loader = DataLoader(dataset, batch_sampler=[[0, 1, 2], [3, 4]], collate_fn=Collater({"src": processor}),
                        num_workers=workers)
    first, second = list(loader)
    assert first == {"skipped": 3}  # nothing left to train on: the task skips this batch
    assert second["skipped"] == 0 and second["inputs"]["src"]["images"].shape[0] == 2

    strict = Seq2SeqDataset(samples, [[4, 5]] * len(samples), [4] * len(samples), {"src": processor})
    with pytest.raises(DataError, match="row 1: .*truncated.jpg"):
        strict[1]
