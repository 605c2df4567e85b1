"""Encoders + bridges + the shared decoder.

One or more named encoder plugins turn their inputs into contexts; each context is bridged to the
decoder width and, with several sources, tagged with a learned source embedding; the contexts are
concatenated along S (their masks with them) and read by the decoder's cross-attention.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from . import registry
from .context import Bridge, Context
from .decoder import TransformerDecoder
from .errors import ConfigError


class EncoderDecoder(nn.Module):
    def __init__(self, encoders: Mapping[str, nn.Module], decoder: TransformerDecoder):
        super().__init__()
        if not encoders:
            raise ConfigError("a model needs at least one encoder (config key `encoder`)")
        self.encoders = nn.ModuleDict(encoders)
        self.bridges = nn.ModuleDict(
            {name: Bridge(enc.output_dim, decoder.d_model, source=name) for name, enc in encoders.items()}
        )
        self.source_embed = nn.Parameter(torch.zeros(len(encoders), decoder.d_model)) if len(encoders) > 1 else None
        self.decoder = decoder

    def encode(self, inputs: Mapping[str, Mapping[str, torch.Tensor]]) -> Context:
        """inputs: {source name: that encoder's collated batch} -> one Context [B, ΣS, D]."""
        contexts = []
        for i, (name, encoder) in enumerate(self.encoders.items()):
            batch = inputs[name]
            ctx = registry.check_context(name, encoder(batch), len(batch["mask"]))
            ctx = self.bridges[name](ctx)
            if self.source_embed is not None:
                ctx = Context(ctx.states + self.source_embed[i], ctx.mask)
            contexts.append(ctx)
        if len(contexts) == 1:
            return contexts[0]
        return Context(torch.cat([c.states for c in contexts], 1), torch.cat([c.mask for c in contexts], 1))

    def forward(self, inputs, target_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] for BOS-prefixed targets [B, T]."""
        return self.decoder(target_in, self.encode(inputs))[0]


def build_model(cfg, tokenizers) -> EncoderDecoder:
    """From the `encoder` (or `encoders`: {source: encoder cfg}) and `decoder` config sections."""
    encoders = {
        source: registry.build_encoder(enc_cfg["name"], enc_cfg, tokenizer=tokenizers)
        for source, enc_cfg in encoder_configs(cfg).items()
    }
    dec = cfg["decoder"]
    if dec["d_model"] % dec["num_heads"]:
        raise ConfigError(
            f"decoder.d_model={dec['d_model']} is not divisible by decoder.num_heads={dec['num_heads']}; "
            "change one of them (each head gets d_model / num_heads dimensions)"
        )
    decoder = TransformerDecoder(
        vocab_size=len(tokenizers.target), d_model=dec["d_model"], num_layers=dec["num_layers"],
        num_heads=dec["num_heads"], ffn_dim=dec["ffn_dim"], dropout=dec["dropout"],
        attn_dropout=dec.get("attn_dropout", 0.0), tie_embeddings=dec["tie_embeddings"],
    )
    return EncoderDecoder(encoders, decoder)


def encoder_configs(cfg) -> dict:
    """{source name: encoder config}; a single `encoder` reads the source called `src`."""
    if cfg.get("encoders"):
        return dict(cfg["encoders"])
    if not cfg.get("encoder") or not cfg["encoder"].get("name"):
        raise ConfigError("config key `encoder.name` is missing: select an encoder with encoder=<name>")
    return {"src": cfg["encoder"]}
