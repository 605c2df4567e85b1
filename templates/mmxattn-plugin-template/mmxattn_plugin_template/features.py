"""`npy_features`: an encoder for features you computed yourself, one `.npy` file [T, F] per sample.

A whole modality in one file, the way a plugin brings one to mmxattn:
- `FeatureProcessor`: a raw sample is a path to a `.npy` file holding a float array [frames T, features F]
  (your own precomputed features: sensor readings, embeddings of video frames, MFCCs...). It loads and
  checks the array (a bad file is a `DataError` naming the file and the problem), optionally averages every
  `subsample` frames into one, and pads a batch to [B, T, F] with a [B, T] mask.
- `FeatureEncoder`: Linear F -> d_model, sinusoidal positions, a small pre-norm Transformer
  (`mmxattn.plugin.TransformerEncoder`), returning `Context(states, mask)`.
- `FeatureView`: what `mmx-attend` draws: the attention heatmap above the feature matrix, on one time axis.
- `plugin`: the object the `mmxattn.encoders` entry point `npy_features` names (`input_kind = "path"`,
  `file_extensions = (".npy",)`, so `mmx-generate` takes .npy files and folders of them).

The data format that lists such files in TSV manifests is `npy_manifest` (npy_manifest.py), and the recipe
that puts both together is conf/recipe/npy_features_base.yaml.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mmxattn.plugin import (ConfigError, Context, ContextView, DataError, EncoderPlugin, Processor,
                            TransformerEncoder, clamp, colorbar, describe_counts, describe_values, heatmap,
                            read_headers, sinusoidal_positions, ticks, unreadable_lines)

FEATURE_EXTENSIONS = (".npy",)


# ---------------------------------------------------------------------------------------------------
# Reading: path -> checked array [T, F]


def npy_shape(path: str | Path) -> tuple[int, ...] | None:
    """The shape stored in an .npy file's header, without reading its data; None if it is no readable .npy."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            shape, _, _ = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        return tuple(shape)
    except Exception:  # noqa: BLE001 - the processor names the problem when it loads the file
        return None


def load_features(raw: str | Path, feature_dim: int) -> np.ndarray:
    """The float32 array [T, feature_dim] of one sample's .npy file, or a DataError saying what is wrong."""
    path = Path(raw)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, but a .npy file of features [frames, {feature_dim}] is expected")
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - truncated, not .npy, an object array needing pickle, ...
        raise DataError(f"{path}: cannot be read as a NumPy .npy array ({type(e).__name__}: {e}); write it with "
                        "numpy.save(path, array) where array is float [frames, features]") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: holds a {type(array).__name__}, not one array; write it with numpy.save")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: holds {array.dtype} values; features must be numbers (float32 preferred)")
    if array.ndim != 2:
        raise DataError(f"{path}: holds an array of shape {tuple(array.shape)} ({array.ndim}-D); expected 2-D "
                        f"[frames, features] with {feature_dim} features per frame")
    if array.shape[1] != feature_dim:
        raise DataError(f"{path}: has {array.shape[1]} features per frame (shape {tuple(array.shape)}), but "
                        f"encoder.feature_dim={feature_dim}; set encoder.feature_dim={array.shape[1]} if all your "
                        "files have that many, or fix this file")
    if array.shape[0] == 0:
        raise DataError(f"{path}: has no frames (shape {tuple(array.shape)}); there is nothing to encode")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        frame, feature = np.argwhere(~finite)[0]
        value = array[frame, feature]
        raise DataError(f"{path}: holds {int((~finite).sum())} non-finite value(s), the first {value} at frame "
                        f"{frame}, feature {feature}; replace NaN/inf before training")
    return array


def average_frames(array: np.ndarray, k: int) -> np.ndarray:
    """Every k frames averaged into one: [T, F] -> [ceil(T / k), F] (the last group may be shorter)."""
    if k == 1:
        return array
    groups = math.ceil(len(array) / k)
    sums = np.add.reduceat(array, np.arange(0, len(array), k), axis=0)  # [groups, F]
    counts = np.minimum(k, len(array) - np.arange(groups) * k)[:, None]
    return (sums / counts).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# The processor


class FeatureProcessor(Processor):
    length_unit = "frames"  # what `length` counts, for the data.max_len message

    def __init__(self, *, feature_dim: int, subsample: int):
        self.feature_dim, self.subsample = feature_dim, subsample

    def __call__(self, raw: str) -> torch.Tensor:
        """[T', F] float32 tensor, T' = ceil(T / subsample)."""
        return torch.from_numpy(average_frames(load_features(raw, self.feature_dim), self.subsample))

    def length(self, raw: str) -> int:
        # context positions, from the file's header alone; an unreadable file counts 1 here and is reported
        # (with the manifest's file:line, or skipped with data.skip_invalid=true) when the sample is loaded
        shape = npy_shape(raw)
        frames = shape[0] if shape and len(shape) == 2 and shape[0] > 0 else 1
        return math.ceil(frames / self.subsample)

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([item.shape[0] for item in items])
        features = torch.zeros(len(items), int(lengths.max()), self.feature_dim)  # [B, T, F]
        for row, item in enumerate(items):
            features[row, : item.shape[0]] = item
        return {"features": features, "mask": torch.arange(features.shape[1])[None] < lengths[:, None]}  # [B, T]

    def describe_context(self, raw: str, n_positions: int) -> "FeatureView":
        """For `mmx-attend`: the whole feature matrix, position i covering frames [i·k, (i+1)·k)."""
        return FeatureView(features=load_features(raw, self.feature_dim), frames_per_position=self.subsample)


# ---------------------------------------------------------------------------------------------------
# The encoder


class FeatureEncoder(nn.Module):
    def __init__(self, *, feature_dim: int, d_model: int, num_layers: int, num_heads: int, ffn_dim: int,
                 dropout: float):
        super().__init__()
        self.output_dim = d_model  # the contract: the width of the context states
        self.project = nn.Linear(feature_dim, d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = TransformerEncoder(d_model, num_layers, num_heads, ffn_dim, dropout)
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Context:
        features, mask = batch["features"], batch["mask"]  # [B, T, F], [B, T]
        length = features.shape[1]
        if length > self.positions.shape[0]:
            self.positions = sinusoidal_positions(2 * length, self.output_dim, device=features.device)
        x = self.drop(self.project(features) + self.positions[:length])  # [B, T, D]
        return Context(self.layers(x, mask), mask)  # self-attention reads real frames only


# ---------------------------------------------------------------------------------------------------
# The picture for mmx-attend


@dataclass
class FeatureView(ContextView):
    """A feature matrix [frames, features] under the context positions: the attention heatmap drawn above
    it, on one frame axis. Position i covers frames [i·frames_per_position, (i+1)·frames_per_position).

    `mmx-attend` asks the processor's `describe_context` for it, sizes the figure with `figure_size`
    (inches) and calls `draw` with the weights [T generated tokens, S positions]; without features it falls
    back to ContextView's plain heatmap. Plain matplotlib on the Figure it is given: no pyplot."""

    kind: str = "features"
    features: Any = None
    frames_per_position: int = 1

    def _empty(self) -> bool:
        return self.features is None or not len(self.features)

    def position_labels(self, n_positions: int) -> list[str]:
        """t0, t1, ... (the first frame of each position; "t4-7" when positions average frames)."""
        if self._empty():
            return super().position_labels(n_positions)
        k = self.frames_per_position
        return [f"t{i * k}" if k == 1 else f"t{i * k}-{min((i + 1) * k, len(self.features)) - 1}"
                for i in range(n_positions)]

    def figure_size(self, n_targets: int, n_positions: int) -> tuple[float, float]:
        if self._empty():
            return super().figure_size(n_targets, n_positions)
        frames, features = np.shape(self.features)
        heatmap_height, matrix_height = self._heights(n_targets, features)
        return clamp(3.0 + 0.12 * frames, 6.0, 24.0), 1.4 + heatmap_height + matrix_height  # + titles and axis labels

    @staticmethod
    def _heights(n_targets: int, n_features: int) -> tuple[float, float]:
        """Inches of the heatmap (one row per generated token) and of the feature matrix."""
        return clamp(0.28 * n_targets, 1.0, 20.0), clamp(0.15 * n_features, 1.0, 6.0)

    def draw(self, fig, weights: np.ndarray, target_labels: list[str], title: str) -> None:
        if self._empty():
            return super().draw(fig, weights, target_labels, title)
        features = np.asarray(self.features)  # [frames, F]
        frames, n_features = features.shape
        covered = weights.shape[1] * self.frames_per_position  # frames the positions span (≥ frames)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=self._heights(len(target_labels), n_features))
        # row t: what generated token t read, each position drawn over the frames it covers
        image = heatmap(top, weights, extent=(0, covered, len(target_labels) - 0.5, -0.5))
        ticks(top, "y", target_labels, max_ticks=60)
        top.set_ylabel("generated")
        top.set_title(title, fontsize=9)
        colorbar(fig, image, top, label="attention")
        shown = bottom.imshow(features.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                              extent=(0, frames, -0.5, n_features - 0.5))
        colorbar(fig, shown, bottom, label="value")
        bottom.set_xlim(0, frames)
        bottom.set_ylabel("feature")
        bottom.set_xlabel("frame")


# ---------------------------------------------------------------------------------------------------
# The plugin object


def _int_at_least(cfg: Mapping[str, Any], key: str, low: int = 1) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"encoder.{key}={value!r} must be an integer ≥ {low}")
    return value


class FeaturePlugin(EncoderPlugin):
    input_kind = "path"  # raw samples are file paths: mmx-generate takes files and folders
    file_extensions = FEATURE_EXTENSIONS  # what mmx-generate picks up in a folder

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> FeatureEncoder:
        d_model, heads = _int_at_least(cfg, "d_model"), _int_at_least(cfg, "num_heads")
        if d_model % heads:
            raise ConfigError(f"encoder.d_model={d_model} must be divisible by encoder.num_heads={heads}")
        return FeatureEncoder(
            feature_dim=_int_at_least(cfg, "feature_dim"), d_model=d_model, num_heads=heads,
            num_layers=_int_at_least(cfg, "num_layers", 0), ffn_dim=_int_at_least(cfg, "ffn_dim"),
            dropout=cfg.get("dropout", 0.1),
        )

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> FeatureProcessor:
        return FeatureProcessor(feature_dim=_int_at_least(cfg, "feature_dim"),
                                subsample=_int_at_least(cfg, "subsample") if "subsample" in cfg else 1)

    def summarize_files(self, files: Sequence[str], cfg: Mapping[str, Any], *, sampled: str) -> list[str]:
        """`mmx-data`: frames and feature sizes from the .npy headers (mmap_mode reads no frames)."""
        shapes, unreadable = read_headers(files, lambda f: np.load(f, mmap_mode="r").shape)
        lines = []
        if shapes:
            lines.append(f"    .npy features ({sampled}): frames {describe_values([s[0] for s in shapes])}")
            sizes = [s[-1] if len(s) == 2 else f"shape {s}" for s in shapes]
            lines.append(f"      features per frame: {describe_counts(Counter(sizes))}")
            wrong = sum(1 for size in sizes if size != cfg.get("feature_dim"))
            if wrong:
                lines.append(f"      {wrong:,} of {len(shapes):,} read do not have encoder.feature_dim={cfg.get('feature_dim')} "
                             "features per frame: training stops at the first (set encoder.feature_dim to theirs)")
        return lines + unreadable_lines(unreadable, len(files))


plugin = FeaturePlugin()
