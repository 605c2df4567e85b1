"""Image encoder plugin: any timm model by name -> a sequence of feature tokens for cross-attention.

    encoder=image_timm encoder.model_name=convnext_atto

The context is what the backbone's `forward_features` returns, before any pooling or classifier:
- ViT-like models ([B, N, C]): the patch tokens, with the class/register/distillation ("prefix") tokens
  dropped or kept (`prefix_tokens`);
- CNNs and hierarchical models ([B, C, H, W], or [B, H, W, C] for e.g. Swin): the H×W feature map
  flattened row by row into H·W tokens of width C.

Images of any shape (`resize`, see `Geometry`): by default the aspect ratio is kept, the shorter side is
scaled to the model's input size and a batch is padded to its largest image, so a text line or a
panorama is not squashed into a square. Images sit at the top left of the padded area; a feature position
is real when the pixels it tiles hold any of the image (`real_cells`), and the context mask is False for
the others. While a padded batch runs, the padding is zeroed before every layer that mixes neighbouring
positions (`PaddingMask`), and a ViT's padded patches are kept out of self-attention, so an image's
context is the same alone and in a padded batch (in eval mode; what still differs: `TimmImageEncoder`).

Preprocessing comes from timm's own data config for the model (mean/std, interpolation, input size),
overridable under `data_config`; training-time augmentation is opt-in. Weights come from timm's hub
(`pretrained=true`, its cache and offline mode honoured) or a local file (`weights=PATH`: a state dict saved
with torch.save, or .safetensors); without either the weights are random and nothing is downloaded.
`freeze` trains all, none, or only the last N blocks of the backbone.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import sys
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import str_to_pil_interp
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision import transforms

from mmxattn.context import Context
from mmxattn.data.summary import describe_counts, describe_values, read_headers, unreadable_lines
from mmxattn.errors import ConfigError, DataError
from mmxattn.layers import sinusoidal_positions
from mmxattn.registry import EncoderPlugin, Processor

from .views import ImageView, patch_grid

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
AUGMENT_KEYS = ("scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "re_prob", "train_crop_mode")
ASPECT_AUGMENT_KEYS = ("scale", "ratio", "hflip", "vflip", "color_jitter")  # what resize=shorter|pad can do
RESIZE_MODES = ("shorter", "pad", "squash")
# A config without `resize` (a model exported before it existed) was trained on squashed images.
LEGACY_RESIZE = "squash"


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
    """The user's timm.create_model arguments, plus dynamic_img_size for ViTs under resize=shorter."""
    kwargs = dict(_plain(cfg.get("model_kwargs")) or {})
    for key in ("pretrained", "num_classes"):
        if key in kwargs:
            raise ConfigError(
                f"encoder.model_kwargs.{key} is set by the plugin (num_classes=0); load pretrained weights with "
                "encoder.pretrained=true (timm's hub) or encoder.weights=PATH (a local file) instead"
            )
    # Images of varying size need a ViT that resamples its position embeddings to each input's grid.
    if _resize(cfg) == "shorter" and "dynamic_img_size" not in kwargs and _has_dynamic_size(cfg["model_name"]):
        kwargs["dynamic_img_size"] = True
    return kwargs


def _resize(cfg: Mapping[str, Any]) -> str:
    resize = str(cfg.get("resize") or LEGACY_RESIZE)
    if resize not in RESIZE_MODES:
        raise ConfigError(f"encoder.resize={resize!r}; expected one of {', '.join(RESIZE_MODES)}")
    return resize


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


def _create_pretrained(model_name: str, kwargs: dict, weights: str | None, cache_dir: str | None) -> nn.Module:
    """timm.create_model(pretrained=True) as timm loads it: from its hub cache (HF_HUB_OFFLINE=1 honoured), or
    from a local file through timm's own `pretrained_cfg_overlay=dict(file=...)`, with its checkpoint filter
    and the classifier dropped (num_classes=0)."""
    if not timm.is_model(model_name):
        _create(model_name, {})  # raises the unknown-name message
    overlay = {"file": str(Path(weights).expanduser())} if weights else None
    if overlay and not Path(overlay["file"]).is_file():
        raise ConfigError(f"encoder.weights={weights}: file not found (with encoder.pretrained=true timm loads it as "
                          "the pretrained file); give an existing .pth/.safetensors file, or encoder.weights=null to "
                          "load timm's hub weights")
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay,
                                 cache_dir=cache_dir, **kwargs)
    except Exception as e:  # the hub's many error types (offline, cold cache, no network, no such tag)
        if overlay:
            raise ConfigError(f"encoder.weights={weights}: timm cannot load it as pretrained weights of {model_name} "
                              f"({type(e).__name__}: {str(e)[:300]})") from e
        source = timm.models.get_pretrained_cfg(model_name)
        where = getattr(source, "hf_hub_id", None) or getattr(source, "url", None) or model_name
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise ConfigError(
            f"encoder.pretrained=true: timm could not load the pretrained weights of {model_name} ({where}): "
            f"{type(e).__name__}: {str(e)[:300]}. "
            + ("HF_HUB_OFFLINE=1 is set, and they are not in the hub cache. " if offline else "")
            + "On a machine with internet access, fill the cache with "
            f"`python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"` (and copy "
            "~/.cache/huggingface here, or point encoder.hub_cache at the copy), or save the weights to a file "
            "and pass encoder.weights=PATH"
        ) from e


@functools.lru_cache(maxsize=16)
def _has_dynamic_size(model_name: str) -> bool:
    """Whether the model has timm's `dynamic_img_size` switch (ViTs and their kin), built on the meta device."""
    with torch.device("meta"):
        return hasattr(_create(model_name, {}), "dynamic_img_size")


def _channels_last(model: nn.Module) -> bool:
    """Whether forward_features returns [B, H, W, C] (Swin, some MaxViT variants) instead of [B, C, H, W]."""
    return str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")


def _stride(model: nn.Module) -> int | None:
    """Pixels per step of the final feature grid (timm's `reduction`: 32 for a ResNet, the patch size of a ViT)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and "reduction" in info[-1]:
        return int(info[-1]["reduction"])
    return None


def _grid(features: torch.Tensor, model: nn.Module, size: Sequence[int], stride: int | None) -> tuple[int, int]:
    """The feature grid of an input of `size` (H, W) pixels: a feature map's (rows, cols), or a ViT's patches."""
    if features.dim() == 4:  # [B, C, H, W], or [B, H, W, C]
        return tuple(features.shape[1:3]) if _channels_last(model) else tuple(features.shape[2:])
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    grid = (size[0] // stride, size[1] // stride) if stride else (0, 0)
    if grid[0] * grid[1] != features.shape[1] - prefix:
        raise ConfigError(f"timm model {type(model).__name__} returns {features.shape[1]} tokens for {tuple(size)} pixels, "
                          "which mmxattn cannot map to a patch grid of the image; use a CNN or a timm VisionTransformer")
    return grid


@dataclass(frozen=True)
class Probe:
    """What the plugin needs to know about a model before building it."""

    data_config: dict            # timm's, with the config's overrides
    width: int                   # token width
    stride: int                  # pixels per feature-grid step
    canvas_grid: tuple[int, int]  # the feature grid at data_config's input_size
    prefix: int                  # class/register tokens before the grid (0 for CNNs)
    feature_map: bool            # a CNN-like [B, C, H, W] map (True) or tokens [B, N, C] (a ViT)


@functools.lru_cache(maxsize=16)
def _probe(model_name: str, kwargs_json: str, overrides_json: str, resize: str) -> Probe:
    """Run the model on the meta device: shapes only, no memory, no compute, so that a DataLoader worker or
    a ViT-L pays nothing for it."""
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
    canvas = tuple(data_config["input_size"][1:])
    features = _meta_features(model, model_name, canvas)
    grid = _grid(features, model, canvas, _stride(model))
    stride = _stride(model) or max(1, canvas[0] // grid[0])
    if resize == "shorter":  # the model must take other sizes than its canvas: try a wide one
        wide = (2 * stride, 5 * stride)
        if _grid(_meta_features(model, model_name, wide, resize), model, wide, stride) != (2, 5):
            raise ConfigError(f"timm model {model_name} does not map a {wide[0]}×{wide[1]} image to a 2×5 feature grid; "
                              "use encoder.resize=pad (a fixed input size)")
    prefix = int(getattr(model, "num_prefix_tokens", 0)) if features.dim() == 3 else 0
    width = int(features.shape[1 if features.dim() == 4 and not _channels_last(model) else -1])
    return Probe(data_config, width, stride, grid, prefix, features.dim() == 4)


def _meta_features(model: nn.Module, model_name: str, size: tuple[int, int], resize: str | None = None) -> torch.Tensor:
    try:
        with torch.device("meta"):
            return model.forward_features(torch.zeros(1, 3, *size))
    except Exception as e:
        fix = ("use encoder.resize=pad (a fixed input size)" if resize == "shorter" else
               "change encoder.data_config.input_size or encoder.model_kwargs.img_size")
        raise ConfigError(f"timm model {model_name} does not accept input_size={[3, *size]} "
                          f"({type(e).__name__}: {e}); {fix}") from e


def probe(cfg: Mapping[str, Any]) -> tuple[Probe, "Geometry"]:
    """The model's probe and the image geometry the config asks for."""
    overrides = {k: v for k, v in (_plain(cfg.get("data_config")) or {}).items() if v is not None}
    unknown = set(overrides) - set(DATA_CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"encoder.data_config: unknown keys {sorted(unknown)}; allowed: {', '.join(DATA_CONFIG_KEYS)}")
    resize = _resize(cfg)
    max_aspect = float(cfg.get("max_aspect") or 16)
    if max_aspect < 1:
        raise ConfigError(f"encoder.max_aspect={max_aspect}; expected ≥ 1 (longer side ÷ shorter side)")
    found = _probe(cfg["model_name"], json.dumps(_model_kwargs(cfg), sort_keys=True),
                   json.dumps(overrides, sort_keys=True), resize)
    keep = cfg.get("prefix_tokens", "drop") == "keep"
    geometry = Geometry(resize, tuple(found.data_config["input_size"][1:]), found.stride, found.canvas_grid,
                        found.prefix if keep else 0, max_aspect)
    return found, geometry


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
# Geometry: images of any shape -> padded batches -> which feature positions are real


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def real_cells(sizes: torch.Tensor, padded: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Rows and columns [B, 2] of a feature grid that hold real pixels.

    sizes: [B, 2] (height, width) of each image's pixels, at the top left of a padded batch of `padded`
    (H, W) pixels. Position (i, j) of a gh × gw grid tiles the pixels [i·H/gh, (i+1)·H/gh) ×
    [j·W/gw, (j+1)·W/gw), and is real when its tile holds at least one pixel of the image:
    i < ceil(h·gh/H). With H a multiple of the stride s (gh = H/s) that is ceil(h/s) rows: the feature
    map the image has on its own, padded to the stride. Positions whose tile is only padding are masked.
    """
    grid = torch.tensor(tuple(grid), device=sizes.device)
    padded = torch.tensor(tuple(padded), device=sizes.device)
    return (sizes * grid + padded - 1) // padded  # [B, 2]


def grid_mask(cells: torch.Tensor, grid: Sequence[int], prefix: int = 0) -> torch.Tensor:
    """[B, prefix + gh·gw] bool, row by row like the flattened grid: True for the prefix (class/register)
    tokens and the real cells (`cells` [B, 2] rows and columns, from real_cells)."""
    rows = torch.arange(grid[0], device=cells.device) < cells[:, :1]  # [B, gh]
    cols = torch.arange(grid[1], device=cells.device) < cells[:, 1:]  # [B, gw]
    real = (rows[:, :, None] & cols[:, None, :]).flatten(1)  # [B, gh·gw]
    return torch.cat([real.new_ones(len(cells), prefix), real], 1)


@dataclass(frozen=True)
class Geometry:
    """How an image of any shape becomes the model's pixels, and how many context positions it gets.

    resize:
    - "shorter": keep the aspect ratio; the shorter side becomes the smaller side of `canvas` (timm's
      input_size), the longer side follows up to `max_aspect` times that (a longer image is scaled down
      to fit). A batch is padded to its tallest and widest image, rounded up to the stride. For CNNs, and
      ViTs through timm's dynamic_img_size. Text lines, panoramas and tall documents keep their detail.
    - "pad": keep the aspect ratio; fit the whole image into `canvas` and pad the rest. A fixed input
      size, so it suits every model (a ViT without dynamic_img_size).
    - "squash": stretch the image to `canvas` (timm's own transform; the aspect ratio is lost).
    """

    resize: str
    canvas: tuple[int, int]       # (H, W) of timm's input_size
    stride: int                   # pixels per feature-grid step
    canvas_grid: tuple[int, int]  # the feature grid at `canvas`
    prefix: int = 0               # context positions before the grid (class/register tokens, when kept)
    max_aspect: float = 16.0

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to, before padding."""
        if self.resize == "squash":
            return self.canvas
        if self.resize == "pad":
            scale = min(self.canvas[0] / height, self.canvas[1] / width)
        else:
            short = min(self.canvas)
            scale = min(short / min(height, width), short * self.max_aspect / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def padded(self, sizes: Sequence[Sequence[int]]) -> tuple[int, int]:
        """(H, W) of a batch of images of these (resized) sizes."""
        if self.resize != "shorter":
            return self.canvas
        return round_up(max(h for h, _ in sizes), self.stride), round_up(max(w for _, w in sizes), self.stride)

    def grid(self, padded: Sequence[int]) -> tuple[int, int]:
        """The feature grid of a batch of `padded` (H, W) pixels."""
        if self.resize != "shorter":
            return self.canvas_grid
        return padded[0] // self.stride, padded[1] // self.stride

    def positions(self, height: int, width: int) -> int:
        """Context positions of an image of this original size in a batch of its own."""
        return self.prefix + math.prod(self.grid(self.padded([self.resized(height, width)])))


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
# Padded batches inside the backbone


def _mixes_positions(module: nn.Module) -> bool:
    """Layers through which a position reads its neighbours: convolutions wider than 1×1, and pooling."""
    if isinstance(module, nn.Conv2d):
        return tuple(module.kernel_size) != (1, 1)
    return isinstance(module, (nn.MaxPool2d, nn.AvgPool2d))


def _zero_padding(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: zero the padding of the input [B, C, h, w] while `module._mmx_padding` is set."""
    padding = getattr(module, "_mmx_padding", None)
    if padding is None:
        return None
    sizes, padded = padding
    x = args[0]  # [B, C, h, w]
    grid = tuple(x.shape[-2:])
    keep = grid_mask(real_cells(sizes, padded, grid), grid).view(-1, 1, *grid)  # [B, 1, h, w]
    return (x * keep.to(x.dtype), *args[1:])


class PaddingMask:
    """Makes a padded batch compute, at the real positions, what each image computes alone.

    Alone, an image's border sees a convolution's zero padding. In a padded batch, the first convolution
    writes values computed from the image's border pixels into the padding next to it (and biases and
    normalisation shifts make the rest of the padding non-zero), and every later convolution reads them
    back into real positions: in a ResNet stem, 1-3% of the final features. So while a padded batch runs,
    the input of every layer that mixes neighbouring positions is zeroed outside the image's real cells
    (at that layer's own resolution, by `real_cells`). The state lives on the hooked modules themselves,
    so a deep copy of the encoder carries working hooks.
    """

    def __init__(self, backbone: nn.Module):
        self.layers = [m for m in backbone.modules() if _mixes_positions(m)]
        for layer in self.layers:
            layer.register_forward_pre_hook(_zero_padding)

    @contextmanager
    def active(self, sizes: torch.Tensor, padded: Sequence[int]):
        for layer in self.layers:
            layer._mmx_padding = (sizes, tuple(padded))
        try:
            yield
        finally:
            for layer in self.layers:
                layer._mmx_padding = None


def _own_position_embeddings(vit: VisionTransformer, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """`vit._pos_embed` of patches x [B, gh, gw, C] -> [B, prefix + gh·gw, C], with each image's position
    embeddings resampled to its own grid of real cells (`cells` [B, 2]).

    timm's dynamic_img_size resamples them to the whole input, so a patch's embedding would depend on how
    far its batch is padded; here it depends on the image alone.
    """
    _, gh, gw, _ = x.shape
    out = vit._pos_embed(x)  # right for the images that fill the grid
    prefix = out.shape[1] - gh * gw
    for h, w in {tuple(c) for c in cells.tolist()} - {(gh, gw)}:
        rows = ((cells[:, 0] == h) & (cells[:, 1] == w)).nonzero().squeeze(1)
        own = vit._pos_embed(x[rows, :h, :w].contiguous())  # [b, prefix + h·w, C]
        patches = F.pad(own[:, prefix:].unflatten(1, (h, w)), (0, 0, 0, gw - w, 0, gh - h))  # [b, gh, gw, C]
        out = out.index_copy(0, rows, torch.cat([own[:, :prefix], patches.flatten(1, 2)], 1))
    return out


def _vit_features(vit: VisionTransformer, images: torch.Tensor, sizes: torch.Tensor, stride: int) -> torch.Tensor:
    """`vit.forward_features` of a padded batch: padded patches take no part in self-attention, and each
    image has its own position embeddings (with dynamic_img_size)."""
    padded = images.shape[-2:]
    grid = (padded[0] // stride, padded[1] // stride)
    cells = real_cells(sizes, padded, grid)  # [B, 2]
    x = vit.patch_embed(images)  # [B, gh, gw, C] with dynamic_img_size, else [B, gh·gw, C]
    x = _own_position_embeddings(vit, x, cells) if x.dim() == 4 else vit._pos_embed(x)
    x = vit.norm_pre(vit.patch_drop(x))  # [B, prefix + gh·gw, C]
    keys = grid_mask(cells, grid, vit.num_prefix_tokens)[:, None, None, :]  # [B, 1, 1, S]: who may be attended
    for block in vit.blocks:
        x = block(x, attn_mask=keys)
    return vit.norm(x)


class GridPositions(nn.Module):
    """Tells the decoder where each token of a feature map sits: a learned linear map of a 2-D sine-cosine
    code of its cell (the row in half the channels, the column in the other half), added to the token.

    A CNN's feature map carries position only implicitly, through the zero padding at its borders, which
    a model trained from scratch learns slowly; reading a text line or a stack of shapes in order needs
    it. (ViT tokens have position embeddings of their own.) The code numbers cells from the top left, so
    it is the same alone and in a padded batch. The map starts random (nn.Linear's init), not at zero:
    a from-scratch CNN's tokens start nearly alike, so cross-attention over them is uniform, and through
    uniform attention a zero map gets the same gradient at every cell and learns only the average code.
    """

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        width, device = tokens.shape[-1], tokens.device  # tokens [B, gh·gw, C]
        rows = sinusoidal_positions(grid[0], width // 2, device=device)[:, None].expand(-1, grid[1], -1)  # [gh, gw, C/2]
        cols = sinusoidal_positions(grid[1], width - width // 2, device=device)[None].expand(grid[0], -1, -1)
        code = torch.cat([rows, cols], -1).flatten(0, 1)  # [gh·gw, C]
        return tokens + self.proj(code.to(tokens.dtype))


# ----------------------------------------------------------------------------------------------------
# The encoder


class TimmImageEncoder(nn.Module):
    """images [B, 3, H, W] (+ sizes [B, 2] of their real pixels) -> Context(states [B, S, C], mask [B, S]).

    An image's real positions come out the same alone (a batch of one, padded to the stride) and in a
    padded batch, up to float rounding (≤ 1e-4 relative), for CNNs built from convolutions, pooling and
    per-position layers (ResNet, ConvNeXt, RegNet, ...) and for timm VisionTransformers, in eval mode.
    What still sees the padding, and so differs by how much a batch is padded: BatchNorm's batch
    statistics in training mode, layers that pool over the whole map (squeeze-excitation in SE-ResNet or
    EfficientNet) or attend over it (other token models than timm's VisionTransformer).
    """

    def __init__(self, *, model_name: str, model_kwargs: dict | None = None, weights: str | None = None,
                 pretrained: bool = False, hub_cache: str | None = None, freeze: Any = "none",
                 prefix_tokens: str = "drop", stride: int | None = None, positions: bool = False, norm: bool = False):
        super().__init__()
        if prefix_tokens not in ("drop", "keep"):
            raise ConfigError(f"encoder.prefix_tokens={prefix_tokens!r}; expected drop or keep")
        if pretrained:
            self.backbone = _create_pretrained(model_name, dict(model_kwargs or {}), weights, hub_cache)
        else:
            self.backbone = _create(model_name, dict(model_kwargs or {}))
            if weights:
                load_weights(self.backbone, weights)
        # Convolutions run 1.4-1.6× faster channels-last on a CPU (oneDNN; measured: resnet10t training
        # steps on 64 × 256 strips), and on tensor cores; the weights' values and names do not change.
        self.backbone.to(memory_format=torch.channels_last)
        self.keep_prefix = prefix_tokens == "keep"
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        self.channels_last = _channels_last(self.backbone)
        self.stride = stride or _stride(self.backbone)
        self.padding = PaddingMask(self.backbone)
        self.output_dim = int(self.backbone.num_features)
        # For feature maps (see the plugin): where each token sits, and a LayerNorm over each token. A CNN's
        # features (post-ReLU, of whatever scale training gives them) end without one, unlike a ViT's tokens
        # or mmxattn's text and audio encoders; from scratch they start about 0.07 in size and nearly alike,
        # and cross-attention over them learns slowly (the digit strips of recipes/captioning/other_tasks.py:
        # three runs without the norm still repeated one word after 3-4 epochs, one with it read digits after 3).
        self.positions = GridPositions(self.output_dim) if positions else None
        self.norm = nn.LayerNorm(self.output_dim) if norm else None
        self.freeze = parse_freeze(freeze)
        self._apply_freeze()
        # frozen parts in eval mode from the start: Lightning (2.2+) keeps the modes a model is built with and
        # never calls train() at fit start, so BatchNorm would otherwise update the "frozen" statistics
        self.train(self.training)
        if self.freeze != "none" and not (weights or pretrained):
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
        padded = tuple(images.shape[-2:])
        sizes = batch.get("sizes")  # [B, 2] (height, width) of each image's real pixels; absent: all of them
        if sizes is not None and bool((sizes == sizes.new_tensor(padded)).all()):
            sizes = None  # nothing is padded: the plain forward
        with torch.no_grad() if self.frozen else nullcontext():
            features = self._features(images, sizes)
        tokens = _to_tokens(features, prefix=self.num_prefix_tokens, keep_prefix=self.keep_prefix,
                            channels_last=self.channels_last)  # [B, S, C]
        grid = _grid(features, self.backbone, padded, self.stride)
        if self.positions is not None:
            tokens = self.positions(tokens, grid)
        if self.norm is not None:
            tokens = self.norm(tokens)
        if sizes is None:
            return Context(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        prefix = self.num_prefix_tokens if self.keep_prefix and features.dim() == 3 else 0
        mask = grid_mask(real_cells(sizes.to(tokens.device), padded, grid), grid, prefix)  # [B, S]
        return Context(tokens, mask)

    def _features(self, images: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        images = images.contiguous(memory_format=torch.channels_last)  # [B, 3, H, W], stored [B, H, W, 3]
        if sizes is None:
            return self.backbone.forward_features(images)
        with self.padding.active(sizes.to(images.device), images.shape[-2:]):
            if isinstance(self.backbone, VisionTransformer):
                return _vit_features(self.backbone, images, sizes.to(images.device), self.stride)
            return self.backbone.forward_features(images)


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


class AspectAugment:
    """Training-time augmentation that keeps an image's own shape (resize=shorter|pad).

    A random crop of `scale` of the area whose aspect ratio is the image's own times a factor from
    `ratio` (timm's random-resized crop takes the ratio as absolute, which would cut a square out of a
    text line), then optional flips and colour jitter.
    """

    def __init__(self, scale=(0.5, 1.0), ratio=(0.75, 1.3333), hflip=0.0, vflip=0.0, color_jitter=0.0):
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip, self.vflip = float(hflip), float(vflip)
        jitter = color_jitter if isinstance(color_jitter, (list, tuple)) else (color_jitter,) * 3
        self.jitter = transforms.ColorJitter(*jitter[:4]) if any(jitter) else None

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        area = random.uniform(*self.scale)
        stretch = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        w = min(width, max(1, round(width * math.sqrt(area * stretch))))
        h = min(height, max(1, round(height * math.sqrt(area / stretch))))
        left, top = random.randint(0, width - w), random.randint(0, height - h)
        image = image.crop((left, top, left + w, top + h))
        if random.random() < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if random.random() < self.vflip:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        return self.jitter(image) if self.jitter is not None else image


class AspectResize:
    """PIL image -> the size `Geometry.resized` gives it (aspect ratio kept)."""

    def __init__(self, geometry: "Geometry", interpolation: str):
        self.geometry, self.resample = geometry, str_to_pil_interp(interpolation)

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.geometry.resized(image.height, image.width)
        return image.resize((width, height), self.resample)


def build_transform(data_config: dict, geometry: "Geometry", augment: dict | None) -> transforms.Compose:
    """PIL RGB image -> normalised tensor [3, h, w]: timm's own transform for resize=squash, else
    (optional AspectAugment) + AspectResize + timm's mean/std."""
    if geometry.resize == "squash":
        return create_transform(**data_config, is_training=augment is not None, **(augment or {}))
    squash_only = sorted(k for k, v in (augment or {}).items() if k not in ASPECT_AUGMENT_KEYS and v)
    if squash_only:
        raise ConfigError(f"encoder.augmentation.{squash_only[0]} works with encoder.resize=squash only (timm's train "
                          f"transform); with resize={geometry.resize} use {', '.join(ASPECT_AUGMENT_KEYS)}")
    steps = [AspectAugment(**{k: v for k, v in augment.items() if k in ASPECT_AUGMENT_KEYS})] if augment is not None else []
    steps += [AspectResize(geometry, data_config["interpolation"]), transforms.ToTensor(),
              transforms.Normalize(data_config["mean"], data_config["std"])]
    return transforms.Compose(steps)


def _image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) from the file's header (nothing decoded), or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # the image loader names the file when it is really read
        return None


class ImageProcessor(Processor):
    """A path -> a normalised image tensor [3, h, w] at its resized size; collate pads a batch of them
    (zeros: the mean colour after normalisation, what a convolution pads with) and masks the padding."""

    length_unit = "image positions"  # what `length` counts, for messages about data.max_len

    def __init__(self, transform, geometry: Geometry, mean: Sequence[float], std: Sequence[float]):
        self.transform, self.geometry = transform, geometry
        self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]  # [3, 1, 1]
        self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, raw: str | Path) -> torch.Tensor:
        image = load_image(raw)
        try:
            return self.transform(image)
        except Exception as e:  # e.g. a zero-sized image
            raise DataError(f"{raw}: image transform failed ({type(e).__name__}: {e})") from e

    def length(self, raw: str | Path) -> int:
        """Context positions, which is what a batch pays for an image (with shorter: from its size)."""
        if self.geometry.resize != "shorter":
            return self.geometry.prefix + math.prod(self.geometry.canvas_grid)
        size = _image_size(raw) or self.geometry.canvas
        return self.geometry.positions(*size)

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        sizes = [tuple(item.shape[-2:]) for item in items]
        padded = self.geometry.padded(sizes)
        images = items[0].new_zeros(len(items), items[0].shape[0], *padded)  # [B, 3, H, W]
        for image, item, (h, w) in zip(images, items, sizes):
            image[:, :h, :w] = item
        sizes = torch.tensor(sizes, dtype=torch.long)  # [B, 2] real (height, width), top left
        grid = self.geometry.grid(padded)
        mask = grid_mask(real_cells(sizes, padded, grid), grid, self.geometry.prefix)  # [B, S]
        return {"images": images, "sizes": sizes, "mask": mask}

    def describe_context(self, raw: str | Path, n_positions: int) -> ImageView:
        """The image as the model saw it (resized, padded to its cells; normalisation undone) and the grid
        of its real positions, which the attention maps list row by row."""
        batch = self.collate([self(raw)])
        pixels = batch["images"][0] * self.std + self.mean  # [3, H, W]
        padded = tuple(pixels.shape[-2:])
        grid = self.geometry.grid(padded)
        rows, cols = real_cells(batch["sizes"], padded, grid)[0].tolist()
        if self.geometry.prefix + rows * cols == n_positions:  # crop to the pixels the real cells tile
            pixels = pixels[:, : round(rows * padded[0] / grid[0]), : round(cols * padded[1] / grid[1])]
            return ImageView(image=_to_uint8(pixels), grid=(rows, cols), prefix=self.geometry.prefix)
        image = _to_uint8(pixels)
        found = patch_grid(n_positions, image.shape[0], image.shape[1])
        if found is None:
            return ImageView(image=image)
        return ImageView(image=image, grid=found[0], prefix=found[1])


def _to_uint8(pixels: torch.Tensor):
    """[3, H, W] in [0, 1] -> numpy [H, W, 3] uint8."""
    return (pixels.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


class ImageTimmPlugin(EncoderPlugin):
    input_kind = "path"
    file_extensions = IMAGE_EXTENSIONS

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> TimmImageEncoder:
        found, _ = probe(cfg)  # checks model name, kwargs and input size before allocating weights
        encoder = TimmImageEncoder(
            model_name=cfg["model_name"], model_kwargs=_model_kwargs(cfg), weights=cfg.get("weights"),
            pretrained=bool(cfg.get("pretrained", False)), hub_cache=cfg.get("hub_cache"),
            freeze=cfg.get("freeze", "none"), prefix_tokens=cfg.get("prefix_tokens", "drop"), stride=found.stride,
            # a config without `positions` or `norm` (a model exported before they existed) has neither
            positions=bool(cfg.get("positions", False)) and found.feature_map,
            norm=bool(cfg.get("norm", False)) and found.feature_map,
        )
        encoder.output_dim = found.width  # the width forward_features really returns
        return encoder

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> ImageProcessor:
        found, geometry = probe(cfg)
        augment = None
        if train and cfg.get("augment", False):
            augment = {k: v for k, v in (_plain(cfg.get("augmentation")) or {}).items() if v is not None}
            unknown = set(augment) - set(AUGMENT_KEYS)
            if unknown:
                raise ConfigError(f"encoder.augmentation: unknown keys {sorted(unknown)}; allowed: {', '.join(AUGMENT_KEYS)}")
            augment = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}
        data_config = found.data_config
        return ImageProcessor(build_transform(data_config, geometry, augment), geometry, data_config["mean"],
                              data_config["std"])

    def summarize_files(self, files: Sequence[str], cfg: Mapping[str, Any], *, sampled: str) -> list[str]:
        """Sizes, aspect ratios, modes and formats from the image headers (PIL reads only them here)."""
        def header(file: str) -> tuple[int, int, str, str]:
            with Image.open(file) as image:
                return image.size[0], image.size[1], image.mode, str(image.format)

        images, unreadable = read_headers(files, header)
        lines = []
        if images:
            sizes = Counter(f"{w}×{h}" for w, h, _, _ in images)
            lines.append(f"    images ({sampled}): width {describe_values([i[0] for i in images])}")
            lines.append(f"      height {describe_values([i[1] for i in images])}")
            lines.append(f"      aspect ratio (w/h) {describe_values([i[0] / max(1, i[1]) for i in images], 2)}")
            lines.append(f"      sizes: {describe_counts(sizes, 4)}; modes: {describe_counts(Counter(i[2] for i in images))}; "
                         f"formats: {describe_counts(Counter(i[3] for i in images))}")
        return lines + unreadable_lines(unreadable, len(files))


plugin = ImageTimmPlugin()
