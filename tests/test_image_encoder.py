"""The image_timm encoder plugin: token shapes per architecture, training through it, freezing, local
weights, preprocessing, images of any shape (aspect-preserving resizing, padded batches, their masks, the
same context alone and in a batch, attention-map grids), and bad image files."""

from __future__ import annotations

import random

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
from mmxattn_encoders.image_timm import Geometry, real_cells

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
    assert not encoder.backbone.training  # as built: Lightning keeps a model's modes and never calls .train()
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


# ----------------------------------------------------------------------------------------------------
# Images of any shape: aspect-preserving resizing, padded batches and their masks

SHORTER = {"resnet": {"model_name": "resnet10t", "data_config": {"input_size": [3, 64, 64]}, "resize": "shorter"},
           # a ViT at 32 px with patches of 16: the same 2 × ... grids as the ResNet's stride 32 at 64 px
           "vit": {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "depth": 2},
                   "data_config": {"input_size": [3, 32, 32]}, "resize": "shorter"}}
# (width, height, PIL mode) -> the real cells (rows, cols) at the short side of 64 px (ResNet) / 32 px (ViT)
SHAPES = {"wide": ((200, 40, "RGB"), (2, 10)), "tall": ((50, 150, "RGB"), (6, 2)),
          "gray": ((120, 30, "L"), (2, 8)), "rgba": ((90, 60, "RGBA"), (2, 3))}


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """Images of each shape in SHAPES, with random pixels (so every position differs), as PNG files."""
    import numpy as np

    root, rng = tmp_path_factory.mktemp("shaped"), np.random.default_rng(0)
    paths = {}
    for name, ((width, height, mode), _) in SHAPES.items():
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / f"{name}.png")
        paths[name] = str(root / f"{name}.png")
    return paths


def expected_mask(cells: tuple[int, int], grid: tuple[int, int], prefix: int = 0) -> torch.Tensor:
    """[prefix + rows·cols] bool: the real cells at the top left of the grid, row by row."""
    real = torch.zeros(grid, dtype=torch.bool)
    real[: cells[0], : cells[1]] = True
    return torch.cat([torch.ones(prefix, dtype=torch.bool), real.flatten()])


def test_geometry_keeps_the_aspect_ratio_and_caps_it():
    shorter = Geometry("shorter", (64, 64), 32, (2, 2), max_aspect=8)
    assert shorter.resized(40, 200) == (64, 320) and shorter.resized(150, 50) == (192, 64)
    assert shorter.resized(10, 1000) == (5, 512)  # 1:100 is capped at 1:8 by scaling it down: the long side is 512
    assert shorter.padded([(64, 320), (192, 64)]) == (192, 320) and shorter.padded([(64, 300)]) == (64, 320)
    assert shorter.positions(40, 200) == 20 and shorter.positions(40, 190) == 20  # 64 × 304, padded to 320
    pad = Geometry("pad", (64, 64), 32, (2, 2))
    assert pad.resized(40, 200) == (13, 64) and pad.padded([(13, 64)]) == (64, 64) and pad.positions(40, 200) == 4
    assert Geometry("squash", (64, 64), 32, (2, 2)).resized(40, 200) == (64, 64)
    # a cell is real when it tiles at least one real pixel: 33 rows of 64 reach into the second of 2 cells
    cells = real_cells(torch.tensor([[33, 64], [32, 1], [64, 64]]), (64, 64), (2, 2))
    assert cells.tolist() == [[2, 2], [1, 1], [2, 2]]


@pytest.mark.parametrize("arch", SHORTER)
def test_wide_tall_grayscale_and_rgba_images_padded_in_one_batch_have_exact_masks(arch, shaped):
    encoder, processor = build(image_cfg(SHORTER[arch]))
    names = list(SHAPES)
    batch = processor.collate([processor(shaped[name]) for name in names])
    scale = 1 if arch == "vit" else 2  # pixels: the ResNet's short side is 64, the ViT's 32
    assert batch["images"].shape == (4, 3, 96 * scale, 160 * scale)  # the tallest (tall) and widest (wide)
    assert batch["sizes"].tolist() == [[s * scale for s in size] for size in
                                       ([32, 160], [96, 32], [32, 128], [32, 48])]
    with torch.no_grad():
        context = encoder.eval()(batch)
    assert context.states.shape[:2] == (4, 6 * 10)  # the batch's grid: 6 rows (tall) × 10 columns (wide)
    for row, name in enumerate(names):
        cells = SHAPES[name][1]
        assert torch.equal(context.mask[row], expected_mask(cells, (6, 10))), name
        assert processor.length(shaped[name]) == cells[0] * cells[1]  # what a batch of its own holds
    assert torch.equal(batch["mask"], context.mask)  # the processor's mask is the encoder's


@pytest.mark.parametrize("arch", SHORTER)
def test_an_image_alone_and_padded_in_a_batch_gives_the_same_context(arch, shaped):
    """Up to float rounding (rtol 1e-4): the same convolutions and attention over the same values, only on
    differently sized tensors. Not so without the padding handling (checked too: about 1% for the ResNet)."""
    torch.manual_seed(0)
    encoder, processor = build(image_cfg(SHORTER[arch], prefix_tokens="keep", positions=True, norm=True))
    # a ViT has position embeddings and a final norm of its own
    assert (encoder.positions is not None) == (encoder.norm is not None) == (arch == "resnet")
    encoder.eval()
    items = [processor(shaped[name]) for name in SHAPES]
    batch = processor.collate(items)
    with torch.no_grad():
        together = encoder(batch)
        plain = _to_plain_tokens(encoder, batch["images"])  # the backbone's own forward, padding unhandled
        for row, item in enumerate(items):
            alone = encoder(processor.collate([item]))
            assert alone.mask.all()  # padded only to the stride: every cell holds pixels of the image
            real = together.states[row][together.mask[row]]  # [n, C]
            torch.testing.assert_close(real, alone.states[0], rtol=1e-4, atol=1e-5)
            assert not torch.allclose(plain[row][together.mask[row]], alone.states[0], rtol=1e-3, atol=1e-3)


def _to_plain_tokens(encoder, images):
    """[B, S, C] from timm's forward_features alone (prefix kept), as a backbone without mmxattn's padding
    handling would give them."""
    features = encoder.backbone.forward_features(images)
    return features if features.dim() == 3 else features.flatten(2).transpose(1, 2)


def test_vit_gets_a_dynamic_size_under_resize_shorter_and_a_fixed_one_under_pad(shaped):
    encoder, _ = build(image_cfg(SHORTER["vit"]))
    assert encoder.backbone.dynamic_img_size
    vit_64 = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 64, "depth": 2},
              "data_config": {"input_size": [3, 64, 64]}, "resize": "pad"}
    encoder, processor = build(image_cfg(vit_64))
    assert not encoder.backbone.dynamic_img_size
    items = [processor(shaped[name]) for name in ("wide", "tall")]  # 13 × 64 and 64 × 21 in a 64 × 64 canvas
    batch = processor.collate(items)
    assert batch["images"].shape[-2:] == (64, 64) and batch["sizes"].tolist() == [[13, 64], [64, 21]]
    with torch.no_grad():
        together = encoder.eval()(batch)
        plain = _to_plain_tokens(encoder, batch["images"])[:, 1:]  # timm's forward: padded patches attended to
    assert torch.equal(together.mask[0], expected_mask((1, 4), (4, 4)))
    assert torch.equal(together.mask[1], expected_mask((4, 2), (4, 4)))
    for row in range(2):  # the padded patches are kept out of self-attention
        assert not torch.allclose(together.states[row][together.mask[row]], plain[row][together.mask[row]], atol=1e-3)


def test_a_model_without_variable_input_size_asks_for_resize_pad():
    fixed = {**SHORTER["vit"], "model_kwargs": {**SHORTER["vit"]["model_kwargs"], "dynamic_img_size": False}}
    with pytest.raises(ConfigError, match="does not accept input_size=.*use encoder.resize=pad"):
        build(image_cfg(fixed))


def test_configs_without_resize_squash_as_models_exported_before_it_did(shaped):
    _, processor = build(image_cfg(ARCHS["resnet"][0]))  # no `resize` key: an older exported config
    assert processor(shaped["wide"]).shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="encoder.resize='crop'"):
        build(image_cfg(ARCHS["resnet"][0], resize="crop"))


def test_augmentation_keeps_the_images_own_shape(shaped):
    options = {"scale": [0.6, 1.0], "ratio": [0.9, 1.1], "hflip": 0.5}
    _, processor = build(image_cfg(SHORTER["resnet"], augment=True, augmentation=options), train=True)
    random.seed(0)
    views = [processor(shaped["wide"]) for _ in range(6)]
    assert all(v.shape[1] == 64 and 4 * 64 <= v.shape[2] <= 6 * 64 for v in views)  # still a wide line (1:5)
    assert len({tuple(v.shape) for v in views}) > 1 or any(not torch.equal(views[0], v) for v in views)
    with pytest.raises(ConfigError, match="auto_augment works with encoder.resize=squash only"):
        build(image_cfg(SHORTER["resnet"], augment=True, augmentation={"auto_augment": "rand-m9"}), train=True)


def test_attention_maps_describe_each_images_own_grid(shaped, tmp_path):
    """mmx-attend's mapper on a wide and a tall image in one padded batch: each map keeps its image's real
    positions only, and its ContextView shows that image (resized, padded to its cells) tiled by its grid."""
    from omegaconf import OmegaConf

    from mmxattn.viz.attention_maps import AttentionMapper
    from mmxattn.model import build_model
    from mmxattn.tokenizer import Tokenizer, Tokenizers

    tokenizers = Tokenizers(Tokenizer.train(["a wide line of text", "a tall stack of shapes"] * 8, vocab_size=30))
    cfg = OmegaConf.create({"encoder": image_cfg(SHORTER["resnet"]), "generation": {"strategy": "greedy", "max_len": 4},
                            "decoder": {"d_model": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32, "dropout": 0.0,
                                        "tie_embeddings": True}})
    torch.manual_seed(0)
    mapper = AttentionMapper(build_model(cfg, tokenizers).eval(), tokenizers, cfg)
    wide, tall = mapper([shaped["wide"], shaped["tall"]])
    for amap, cells, pixels in ((wide, (2, 10), (64, 320)), (tall, (6, 2), (192, 64))):
        (span,) = amap.sources
        assert amap.weights.shape[-1] == cells[0] * cells[1]  # the padded positions are gone
        torch.testing.assert_close(amap.weights.sum(-1), torch.ones(amap.weights.shape[:-1]))  # none went to padding
        assert span.view.kind == "image" and span.view.grid == cells and span.view.image.shape == (*pixels, 3)
        assert span.view.position_labels(amap.weights.shape[-1])[cells[1]] == "r1c0"  # row by row


def test_feature_map_tokens_tell_where_they_sit(shaped):
    """GridPositions: cells of equal content differ from the start (so cross-attention can tell them apart
    before the backbone has learned anything), and by cell, not by how far the batch is padded."""
    encoder, _ = build(image_cfg(SHORTER["resnet"], positions=True))
    flat = torch.zeros(1, 3, 64, 320)  # every cell alike, but for the borders: a uniform image
    with torch.no_grad():
        states = encoder.eval()({"images": flat}).states  # [1, 20, 512]
    plain = _to_plain_tokens(encoder, flat)[0]
    assert len({tuple(row.round(decimals=4).tolist()) for row in plain}) < 20  # interior cells coincide
    assert len({tuple(row.round(decimals=4).tolist()) for row in states[0]}) == 20  # 2 × 10 different cells
    legacy = build(image_cfg(ARCHS["resnet"][0]))[0]  # a config without the keys, as exported before them
    assert legacy.positions is None and legacy.norm is None
