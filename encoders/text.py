"""Text encoder plugin: SentencePiece ids -> embeddings + sinusoidal positions -> Transformer encoder."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mmxattn.context import Context, ContextView
from mmxattn.errors import ConfigError
from mmxattn.layers import TransformerEncoder, sinusoidal_positions
from mmxattn.registry import EncoderPlugin, Processor
from mmxattn.tokenizer import PAD


class TextEncoder(nn.Module):
    def __init__(self, *, vocab_size: int, d_model: int, num_layers: int, num_heads: int, ffn_dim: int,
                 dropout: float = 0.1):
        super().__init__()
        self.output_dim = d_model
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)
        self.encoder = TransformerEncoder(d_model, num_layers, num_heads, ffn_dim, dropout)
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)

    @property
    def token_embedding(self) -> nn.Embedding:
        """What decoder.tie_source_embeddings=true shares with the decoder (mmxattn.model.tie_source_embeddings)."""
        return self.embed

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Context:
        tokens, mask = batch["tokens"], batch["mask"]  # [B, S], [B, S]
        if tokens.shape[1] > self.positions.shape[0]:
            self.positions = sinusoidal_positions(2 * tokens.shape[1], self.output_dim, device=tokens.device)
        x = self.drop(self.embed(tokens) * self.scale + self.positions[: tokens.shape[1]])
        return Context(self.encoder(x, mask), mask)


class TextProcessor(Processor):
    length_unit = "tokens"  # what `length` counts, for messages about data.max_len

    def __init__(self, tokenizer, append_eos: bool = True):
        self.tokenizer, self.append_eos = tokenizer, append_eos

    def __call__(self, raw: str) -> list[int]:
        ids = self.tokenizer.encode(raw)
        return ids + [self.tokenizer.eos_id] if self.append_eos else ids

    def length(self, raw: str) -> int:
        return len(self(raw))

    def describe_context(self, raw: str, n_positions: int) -> ContextView:
        """The source pieces (EOS included), one per context position."""
        return ContextView(kind="tokens", labels=self.tokenizer.pieces(self(raw)))

    def collate(self, items: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids in items)
        tokens = torch.full((len(items), width), PAD, dtype=torch.long)
        for row, ids in enumerate(items):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"tokens": tokens, "mask": tokens != PAD}


class TextPlugin(EncoderPlugin):
    input_kind = "text"

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> TextEncoder:
        if cfg["d_model"] % cfg["num_heads"]:
            raise ConfigError(
                f"encoder.d_model={cfg['d_model']} is not divisible by encoder.num_heads={cfg['num_heads']}; "
                "change one of them"
            )
        return TextEncoder(
            vocab_size=len(tokenizer.source), d_model=cfg["d_model"], num_layers=cfg["num_layers"],
            num_heads=cfg["num_heads"], ffn_dim=cfg["ffn_dim"], dropout=cfg.get("dropout", 0.1),
        )

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> TextProcessor:
        return TextProcessor(tokenizer.source)


plugin = TextPlugin()
