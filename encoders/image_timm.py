"""Image encoder plugin: any timm model by name -> a sequence of feature tokens for cross-attention.

    encoder=image_timm encoder.model_name=convnext_atto

The context is what the backbone's `forward_features` returns, before any pooling or classifier:
- ViT-like models ([B, N, C]): the patch tokens, with the class/register/distillation ("prefix") tokens
  dropped or kept (`prefix_tokens`);
- CNNs and hierarchical models ([B, C, H, W], or [B, H, W, C] for e.g. Swin): the H×W feature map
  flattened into H·W tokens of width C.
Every image of a batch gives the same number of tokens, so the mask is all True.

Preprocessing comes from timm's own data config for the model (input size, mean/std, interpolation),
overridable under `data_config`; training-time augmentation (timm's train transform) is opt-in.
Weights come from a local file (`weights=PATH`: a state dict saved with torch.save, or .safetensors);
nothing is downloaded. `freeze` trains all, none, or only the last N blocks of the backbone.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from mmxattn.context import Context, ContextView, patch_grid
from mmxattn.errors import ConfigError, DataError
from mmxattn.registry import EncoderPlugin, Processor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
AUGMENT_KEYS = ("scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "re_prob", "train_crop_mode")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (timm and json want those)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def _model_kwargs(cfg: Mapping[str, Any]) -> dict:
    kwargs = dict(_plain(cfg.get("model_kwargs")) or {})
    for key in ("pretrained", "num_classes"):
        if key in kwargs:
            raise ConfigError(
                f"encoder.model_kwargs.{key} is set by the plugin (pretrained=False, num_classes=0); "
                "load weights with encoder.weights=PATH instead"
            )
    return kwargs


def _create(model_name: str, kwargs: dict) -> nn.Module:
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:10]
        raise ConfigError(
            f"encoder.model_name={model_name!r} is not a timm model. Similar names: {', '.join(close) or 'none'}; "
            "`python -c 'import timm; print(timm.list_models())'` lists them all"
        )
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as e:
        raise ConfigError(f"encoder.model_kwargs={kwargs} not accepted by timm model {model_name}: {e}") from e


def _channels_last(model: nn.Module) -> bool:
    """Whether forward_features returns [B, H, W, C] (Swin, some MaxViT variants) instead of [B, C, H, W]."""
    return str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")


@functools.lru_cache(maxsize=16)
def _probe(model_name: str, kwargs_json: str, overrides_json: str) -> tuple[dict, int, int, int]:
    """(timm data config, tokens incl. prefix, token width, prefix tokens) for a model, without real weights.

    The model is built on the meta device and run on a meta tensor: shapes only, no memory, no compute,
    so a DataLoader worker or a ViT-L pays nothing for it.
    """
    kwargs, overrides = json.loads(kwargs_json), json.loads(overrides_json)
    with torch.device("meta"):
        model = _create(model_name, kwargs).eval()  # eval: BatchNorm accepts a 1×1 map of one image
    # timm's pretrained config keeps the default input size when img_size is overridden (a ViT built
    # with img_size=384 would otherwise be fed 224-pixel images), so follow the model's own img_size.
    args = {}
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        args["input_size"] = (3, *(size if isinstance(size, (list, tuple)) else (size, size)))
    args.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    data_config = resolve_data_config(args, model=model)
    try:
        with torch.device("meta"):
            features = model.forward_features(torch.zeros(1, *data_config["input_size"]))
    except Exception as e:
        raise ConfigError(
            f"timm model {model_name} does not accept input_size={data_config['input_size']} "
            f"({type(e).__name__}: {e}); change encoder.data_config.input_size or encoder.model_kwargs.img_size"
        ) from e
    tokens = _to_tokens(features, prefix=0, keep_prefix=True, channels_last=_channels_last(model))
    return data_config, int(tokens.shape[1]), int(tokens.shape[2]), int(getattr(model, "num_prefix_tokens", 0))


def probe(cfg: Mapping[str, Any]) -> tuple[dict, int, int]:
    """(timm data config with the config's overrides, context tokens per image, token width)."""
    overrides = {k: v for k, v in (_plain(cfg.get("data_config")) or {}).items() if v is not None}
    unknown = set(overrides) - set(DATA_CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"encoder.data_config: unknown keys {sorted(unknown)}; allowed: {', '.join(DATA_CONFIG_KEYS)}")
    data_config, n_tokens, width, n_prefix = _probe(
        cfg["model_name"], json.dumps(_model_kwargs(cfg), sort_keys=True), json.dumps(overrides, sort_keys=True)
    )
    if cfg.get("prefix_tokens", "drop") == "drop":
        n_tokens -= n_prefix
    return dict(data_config), n_tokens, width


def _to_tokens(features: torch.Tensor, *, prefix: int, keep_prefix: bool, channels_last: bool) -> torch.Tensor:
    """forward_features output -> tokens [B, S, C]."""
    if features.dim() == 4:
        if channels_last:  # [B, H, W, C]
            return features.flatten(1, 2)
        return features.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H·W, C]
    if features.dim() == 3:  # [B, prefix + N, C]
        return features if keep_prefix else features[:, prefix:]
    raise ConfigError(f"forward_features returned shape {tuple(features.shape)}; expected [B, N, C] or [B, C, H, W]")


# ----------------------------------------------------------------------------------------------------
# Weights from a local file


def load_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a timm state dict (torch.save'd .pt/.pth/.bin, or .safetensors) into `backbone`.

    Accepts a bare state dict or one wrapped under "state_dict"/"model"; drops the classifier head (the
    backbone is built without one) and applies the model family's own checkpoint filter, which e.g.
    resizes a ViT's position embeddings to a different img_size.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"encoder.weights={path}: file not found. Save weights on a machine with internet access, e.g. "
            f"`torch.save(timm.create_model(NAME, pretrained=True).state_dict(), PATH)`, copy the file here, "
            "and pass its path (or encoder.weights=null for random weights)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"encoder.weights={path}: cannot be read as weights ({type(e).__name__}: {e}). Expected a state dict "
            "saved with torch.save(model.state_dict(), PATH), or a .safetensors file"
        ) from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"encoder.weights={path}: holds a {type(state).__name__}, not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    filter_fn = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, backbone)
        except Exception as e:  # a filter written for another layout: load the file as it is
            log.debug("timm checkpoint_filter_fn skipped for %s: %s", path, e)
    own = backbone.state_dict()
    heads = backbone.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {k: v for k, v in state.items() if k in own or not any(k.startswith(h + ".") for h in heads)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        def few(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [f"{name}: {few(items)}" for name, items in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)) if items]
        raise ConfigError(
            f"encoder.weights={path} does not fit timm model {backbone.pretrained_cfg.get('architecture', '?')} "
            f"with the configured model_kwargs: {'; '.join(problems)}. Check encoder.model_name and "
            "encoder.model_kwargs match the model the weights were saved from"
        )
    backbone.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------
# Freezing


def parse_freeze(value: Any) -> str | int:
    """`freeze`: "none" (train all), "all" (train nothing), or N (train only the last N blocks)."""
    if value is None or value is False or str(value).lower() == "none":
        return "none"
    if value is True or str(value).lower() == "all":
        return "all"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or str(value).strip() != str(n):
        raise ConfigError(f"encoder.freeze={value!r}; expected none, all, or a number N ≥ 0 of last blocks to train")
    return n


def block_groups(backbone: nn.Module) -> list[list[str]]:
    """The backbone's parameter names in blocks, input to output, from timm's own `group_matcher`.

    The first group is the stem (patch embedding, position embedding, first convs); then one group per
    block (ViT block, ConvNeXt block, ResNet stage, ...). A trailing group of only norm parameters (the
    final LayerNorm) is merged into the last block, so "the last N blocks" includes it.
    """
    if not callable(getattr(backbone, "group_matcher", None)):
        raise ConfigError(
            f"timm model {type(backbone).__name__} has no group_matcher, so its blocks are unknown; "
            "use encoder.freeze=all or none"
        )
    from timm.models import group_parameters

    grouped = group_parameters(backbone, backbone.group_matcher(coarse=False))
    groups = [list(names) for _, names in sorted(grouped.items())]
    params = dict(backbone.named_parameters())
    while len(groups) > 2 and all(params[n].ndim < 2 for n in groups[-1]):
        groups[-2] += groups.pop()
    return groups


# ----------------------------------------------------------------------------------------------------
# The encoder


class TimmImageEncoder(nn.Module):
    """images [B, 3, H, W] -> Context(states [B, S, C], mask [B, S] all True)."""

    def __init__(self, *, model_name: str, model_kwargs: dict | None = None, weights: str | None = None,
                 freeze: Any = "none", prefix_tokens: str = "drop"):
        super().__init__()
        if prefix_tokens not in ("drop", "keep"):
            raise ConfigError(f"encoder.prefix_tokens={prefix_tokens!r}; expected drop or keep")
        self.backbone = _create(model_name, dict(model_kwargs or {}))
        if weights:
            load_weights(self.backbone, weights)
        self.keep_prefix = prefix_tokens == "keep"
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        self.channels_last = _channels_last(self.backbone)
        self.output_dim = int(self.backbone.num_features)
        self.freeze = parse_freeze(freeze)
        self._apply_freeze()
        if self.freeze != "none" and not weights:
            log.warning("encoder.freeze=%s with random weights (encoder.weights=null): the frozen part never learns",
                        self.freeze)

    def _apply_freeze(self) -> None:
        if self.freeze == "none":
            return
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if self.freeze == "all":
            return
        groups = block_groups(self.backbone)
        blocks = len(groups) - 1  # the first group is the stem
        if self.freeze > blocks:
            raise ConfigError(
                f"encoder.freeze={self.freeze}: {type(self.backbone).__name__} has {blocks} blocks; "
                f"use 0..{blocks}, or none to train the whole backbone"
            )
        trained = {name for group in groups[len(groups) - self.freeze:] for name in group} if self.freeze else set()
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name in trained)

    @property
    def frozen(self) -> bool:
        """True when no backbone parameter trains (the whole forward then runs without autograd)."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> "TimmImageEncoder":
        super().train(mode)
        # Frozen parts stay in eval mode: BatchNorm statistics and dropout belong to the frozen weights.
        if self.frozen:
            self.backbone.eval()
        elif self.freeze != "none":
            for module in self.backbone.modules():
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params) and isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Context:
        images = batch["images"]  # [B, 3, H, W]
        if self.frozen:
            with torch.no_grad():
                features = self.backbone.forward_features(images)
        else:
            features = self.backbone.forward_features(images)
        tokens = _to_tokens(features, prefix=self.num_prefix_tokens, keep_prefix=self.keep_prefix,
                            channels_last=self.channels_last)  # [B, S, C]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # [B, S]
        return Context(tokens, mask)


# ----------------------------------------------------------------------------------------------------
# Reading images


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency composited on white, 16-bit/float grayscale rescaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        array = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB, or raise DataError naming the file.

    `Image.open` only reads the header; the pixels are decoded by `load()`, which is where a truncated
    file fails, so both run inside the try.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, not an image file") from e
    except Image.UnidentifiedImageError as e:
        raise DataError(f"{path}: not an image file (PIL cannot identify it); remove it or replace it") from e
    except Exception as e:  # OSError, SyntaxError, DecompressionBombError, or whatever a format plugin raises
        raise DataError(f"{path}: image cannot be decoded ({type(e).__name__}: {e}); is the file truncated?") from e


class ImageProcessor(Processor):
    """A path -> a normalized image tensor [3, H, W] (timm's transform); collate stacks them."""

    length_unit = "image positions"  # what `length` counts, for messages about data.max_len

    def __init__(self, transform, num_tokens: int):
        self.transform, self.num_tokens = transform, num_tokens

    def __call__(self, raw: str | Path) -> torch.Tensor:
        image = load_image(raw)
        try:
            return self.transform(image)
        except Exception as e:  # e.g. a zero-sized image
            raise DataError(f"{raw}: image transform failed ({type(e).__name__}: {e})") from e

    def length(self, raw: str | Path) -> int:
        return self.num_tokens  # every image gives the same number of context tokens

    def describe_context(self, raw: str | Path, n_positions: int) -> ContextView:
        """The image as the model saw it (resized, cropped; normalisation undone) and the feature grid
        its context positions tile."""
        pixels = self(raw)  # [3, H, W], normalised
        normalize = next((t for t in reversed(getattr(self.transform, "transforms", []))
                          if hasattr(t, "mean") and hasattr(t, "std")), None)
        if normalize is not None:
            pixels = pixels * torch.as_tensor(normalize.std)[:, None, None] + torch.as_tensor(normalize.mean)[:, None, None]
        image = (pixels.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # [H, W, 3]
        found = patch_grid(n_positions, image.shape[0], image.shape[1])
        if found is None:
            return ContextView(kind="image", image=image)
        grid, prefix = found
        return ContextView(kind="image", image=image, grid=grid, prefix=prefix)

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        images = torch.stack(list(items))  # [B, 3, H, W]
        return {"images": images, "mask": torch.ones(len(items), self.num_tokens, dtype=torch.bool)}


class ImageTimmPlugin(EncoderPlugin):
    input_kind = "path"
    file_extensions = IMAGE_EXTENSIONS

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> TimmImageEncoder:
        _, _, width = probe(cfg)  # checks model name, kwargs and input size before allocating weights
        encoder = TimmImageEncoder(
            model_name=cfg["model_name"], model_kwargs=_model_kwargs(cfg), weights=cfg.get("weights"),
            freeze=cfg.get("freeze", "none"), prefix_tokens=cfg.get("prefix_tokens", "drop"),
        )
        encoder.output_dim = width  # the width forward_features really returns
        return encoder

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> ImageProcessor:
        data_config, num_tokens, _ = probe(cfg)
        if train and cfg.get("augment", False):
            options = {k: v for k, v in (_plain(cfg.get("augmentation")) or {}).items() if v is not None}
            unknown = set(options) - set(AUGMENT_KEYS)
            if unknown:
                raise ConfigError(f"encoder.augmentation: unknown keys {sorted(unknown)}; allowed: {', '.join(AUGMENT_KEYS)}")
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
            transform = create_transform(**data_config, is_training=True, **options)
        else:
            transform = create_transform(**data_config, is_training=False)
        return ImageProcessor(transform, num_tokens)


plugin = ImageTimmPlugin()
