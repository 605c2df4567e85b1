"""`byte_cnn`: a text encoder that needs no tokenizer: UTF-8 bytes -> embeddings -> 1-D convolutions.

The three parts every mmxattn encoder plugin has:
- `ByteProcessor`: one raw sample (here a string) -> features, and a list of features -> a padded batch
  with a [B, S] bool `mask` (True = real position). It runs in DataLoader worker processes.
- `ByteCNNEncoder`: an nn.Module with an integer `output_dim`, whose forward(batch) returns a
  `Context(states [B, S, output_dim], mask [B, S])` that the decoder reads through cross-attention.
- `plugin`: the object the entry point names; mmxattn calls its two builders with the encoder's config.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmxattn.context import Context
from mmxattn.errors import ConfigError, DataError
from mmxattn.layers import sinusoidal_positions
from mmxattn.registry import EncoderPlugin, Processor

PAD = 0  # byte value b has id b + 1, so 0 is free for padding
VOCAB = 257


class ByteProcessor(Processor):
    def __init__(self, *, max_bytes: int, downsample: int):
        self.max_bytes, self.downsample = max_bytes, downsample

    def __call__(self, raw: str) -> list[int]:
        data = raw.encode("utf-8")
        if not data:
            raise DataError("empty text: there is nothing to encode")  # mmxattn adds the file and line
        if len(data) > self.max_bytes:
            raise DataError(f"{len(data)} bytes, more than encoder.max_bytes={self.max_bytes}; raise it or shorten the text")
        return [b + 1 for b in data]

    def length(self, raw: str) -> int:
        # context positions after downsampling: what batching by token budget should count
        return math.ceil(len(raw.encode("utf-8")) / self.downsample)

    def collate(self, items: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids in items)
        ids = torch.full((len(items), width), PAD, dtype=torch.long)
        for row, values in enumerate(items):
            ids[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        return {"bytes": ids, "mask": ids != PAD}  # [B, S] each


class ConvBlock(nn.Module):
    """Pre-norm residual gated convolution (GLU) over the sequence."""

    def __init__(self, dim: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, 2 * dim, kernel_size, padding=kernel_size // 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x [B, S, D], mask [B, S]. Zeroing padding first keeps a sample's output independent of how
        # much padding its batch has (the convolution would otherwise read it at the sequence end).
        h = self.norm(x) * mask[..., None]
        h = F.glu(self.conv(h.transpose(1, 2)), dim=1).transpose(1, 2)  # [B, S, D]
        return x + self.drop(h)


class ByteCNNEncoder(nn.Module):
    def __init__(self, *, d_model: int, num_layers: int, kernel_size: int, downsample: int, dropout: float):
        super().__init__()
        self.output_dim = d_model  # the contract: the width of the context states
        self.downsample = downsample
        self.embed = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ConvBlock(d_model, kernel_size, dropout) for _ in range(num_layers))
        self.reduce = nn.Conv1d(d_model, d_model, downsample, stride=downsample) if downsample > 1 else None
        self.norm = nn.LayerNorm(d_model)
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Context:
        ids, mask = batch["bytes"], batch["mask"]  # [B, S], [B, S]
        length = ids.shape[1]
        if length > self.positions.shape[0]:
            self.positions = sinusoidal_positions(2 * length, self.output_dim, device=ids.device)
        x = self.drop(self.embed(ids) * self.scale + self.positions[:length])  # [B, S, D]
        for block in self.blocks:
            x = block(x, mask)
        if self.reduce is not None:
            pad = -length % self.downsample
            x = F.pad(x * mask[..., None], (0, 0, 0, pad))  # [B, S', D], S' a multiple of downsample
            x = self.reduce(x.transpose(1, 2)).transpose(1, 2)  # [B, S'/k, D]
            mask = mask[:, :: self.downsample]  # position i is real iff byte i·k is: ceil(len/k) of them
        return Context(self.norm(x), mask)


class ByteCNNPlugin(EncoderPlugin):
    input_kind = "text"  # mmx-generate feeds it lines of text; "path" plugins get file paths

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> ByteCNNEncoder:
        if cfg["kernel_size"] % 2 == 0:
            raise ConfigError(f"encoder.kernel_size={cfg['kernel_size']} must be odd (the convolution is centred)")
        if cfg["downsample"] < 1:
            raise ConfigError(f"encoder.downsample={cfg['downsample']} must be ≥ 1 (1 = no downsampling)")
        return ByteCNNEncoder(
            d_model=cfg["d_model"], num_layers=cfg["num_layers"], kernel_size=cfg["kernel_size"],
            downsample=cfg["downsample"], dropout=cfg.get("dropout", 0.1),
        )

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> ByteProcessor:
        return ByteProcessor(max_bytes=cfg["max_bytes"], downsample=cfg["downsample"])


plugin = ByteCNNPlugin()
