"""Encoders + bridges + the shared decoder.

One or more named encoder plugins turn their inputs into contexts; each context is bridged to the
decoder width and, with several sources, tagged with a learned source embedding; the contexts are
concatenated along S (their masks with them) and read by the decoder's cross-attention: one joint
cross-attention (`fusion.mode=concat`) or one gated cross-attention per source (`gated`, see fusion.py).

Inputs are {source name: that encoder's collated batch}. A source may be missing:
- for the whole batch: leave its name out of the inputs;
- for some samples: its batch holds only the samples that have it, plus `present` [B] bool saying which
  rows of the full batch they are (the Collater writes this when a sample lacks a source).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torch import nn

from . import ctc, registry
from .context import Bridge, Context
from .decoder import TransformerDecoder
from .errors import ConfigError
from .fusion import FUSION_MODES, GatedCrossAttention, SourcesContext
from .generation import GenerationConfig, Hypothesis, generate
from .sources import CONTEXT, PRESENT, encoder_configs

log = logging.getLogger(__name__)



class EncoderDecoder(nn.Module):
    def __init__(self, encoders: Mapping[str, nn.Module], decoder: TransformerDecoder, *,
                 ctc_vocab_size: int | None = None, ctc_target: str = "target"):
        super().__init__()
        if not encoders:
            raise ConfigError("a model needs at least one encoder (config key `encoder`)")
        self.encoders = nn.ModuleDict(encoders)
        self.bridges = nn.ModuleDict(
            {name: Bridge(enc.output_dim, decoder.d_model, source=name) for name, enc in encoders.items()}
        )
        self.source_embed = nn.Parameter(torch.zeros(len(encoders), decoder.d_model)) if len(encoders) > 1 else None
        self.decoder = decoder
        # auxiliary CTC (loss.ctc_weight > 0): reads the context the decoder reads, at the decoder's width
        self.ctc_head = ctc.CTCHead(decoder.d_model, ctc_vocab_size) if ctc_vocab_size else None
        self.ctc_target = ctc_target  # what the head spells: the decoder's targets, or the source transcripts
        self._warned_no_scorer = False

    def _batch_size(self, inputs: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
        sizes = {name: len(batch[PRESENT]) if PRESENT in batch else len(batch["mask"])
                 for name, batch in inputs.items() if name in self.encoders}
        if not sizes:
            raise ConfigError(f"no input for any source of this model ({', '.join(self.encoders)}); got {sorted(inputs)}")
        if len(set(sizes.values())) > 1:
            raise ConfigError(f"the sources' batches have different sizes {sizes}; each needs one row per sample "
                              f"(`{PRESENT}` [B] marks the rows of a source that some samples lack)")
        return next(iter(sizes.values()))

    def _run_encoder(self, name: str, features: Mapping[str, torch.Tensor], rows: int) -> Context:
        """The encoder's context of `rows` samples, or the context a cache read for them (`CONTEXT`: the
        encoder is frozen and ran before training, mmxattn/context_cache.py)."""
        if CONTEXT in features:
            return Context(features[CONTEXT], features["mask"])
        return registry.check_context(name, self.encoders[name](features), rows)

    def _encode_source(self, name: str, batch: Mapping[str, torch.Tensor] | None, batch_size: int) -> Context:
        """One source's bridged context [B, S, D]; rows lacking the source are all padding."""
        present = None if batch is None else batch.get(PRESENT)
        if batch is not None and present is None:
            return self.bridges[name](self._run_encoder(name, batch, batch_size))
        rows = None if present is None else present.nonzero().squeeze(1)  # [b] rows that have this source
        if rows is None or rows.numel() == 0:  # no sample of this batch has the source: no positions
            weight = self.decoder.embed.weight
            return Context(weight.new_zeros(batch_size, 0, self.decoder.d_model),
                           torch.zeros(batch_size, 0, dtype=torch.bool, device=weight.device))
        features = {key: value for key, value in batch.items() if key != PRESENT}
        context = self.bridges[name](self._run_encoder(name, features, rows.numel()))
        states = context.states.new_zeros(batch_size, *context.states.shape[1:]).index_copy(0, rows, context.states)
        mask = context.mask.new_zeros(batch_size, context.mask.shape[1]).index_copy(0, rows, context.mask)
        return Context(states, mask)  # [B, S, D], [B, S]

    def encode(self, inputs: Mapping[str, Mapping[str, torch.Tensor]]) -> Context:
        """inputs: {source name: that encoder's collated batch} -> one Context [B, ΣS, D]."""
        batch_size = self._batch_size(inputs)
        contexts, spans, start = [], [], 0
        for i, name in enumerate(self.encoders):
            ctx = self._encode_source(name, inputs.get(name), batch_size)
            if self.source_embed is not None:
                ctx = Context(ctx.states + self.source_embed[i], ctx.mask)
            contexts.append(ctx)
            spans.append((name, start, start + ctx.states.shape[1]))
            start += ctx.states.shape[1]
        if len(contexts) == 1 and inputs.get(spans[0][0], {}).get(PRESENT) is None:
            return contexts[0]  # one encoder, every sample has it: the plain single-source path
        states, mask = torch.cat([c.states for c in contexts], 1), torch.cat([c.mask for c in contexts], 1)
        return SourcesContext(states, mask, tuple(spans))

    def forward(self, inputs, target_in: torch.Tensor, *, with_ctc: bool = False):
        """Teacher-forced logits [B, T, V] for BOS-prefixed targets [B, T].

        with_ctc: (logits, the CTC head's logits [B, S, V_ctc] over the context, the context mask [B, S]).
        """
        context = self.encode(inputs)
        logits = self.decoder(target_in, context)[0]
        if not with_ctc:
            return logits
        if self.ctc_head is None:
            raise ConfigError("this model has no CTC head: it is built when loss.ctc_weight > 0")
        return logits, self.ctc_head(context.states), context.mask

    @torch.no_grad()
    def generate(self, inputs: Mapping[str, Mapping[str, torch.Tensor]], config: GenerationConfig | None = None,
                 prompt: Sequence[int] = ()) -> list[list[Hypothesis]]:
        """The one way to decode: encode `inputs` ({source: collated batch}) once, then search with `config`
        (greedy, beam, sampling, or the CTC head's best path); per sample its hypotheses, best first.
        `prompt`: the task's tag ids for a multitask model (`batch["prompt"]` of its loaders), read by the
        decoder after BOS."""
        config = config or GenerationConfig()
        scorer = self.ctc_head if self.ctc_target == "target" else None
        if config.ctc_weight and config.strategy == "beam" and scorer is None and not self._warned_no_scorer:
            self._warned_no_scorer = True  # a recipe's default must not stop a model trained otherwise from decoding
            log.warning("generation.ctc_weight=%s is ignored: it rescores with a CTC head over the target vocabulary, "
                        "and this model has none (trained with loss.ctc_weight=0 or loss.ctc_target=source)",
                        config.ctc_weight)
        return generate(self.decoder, self.encode(inputs), config, ctc_head=scorer, prompt=prompt)


def build_model(cfg, tokenizers) -> EncoderDecoder:
    """From a run config's model sections: `encoder` (or `encoders`: {source: encoder cfg}), `decoder`,
    `fusion` and the CTC settings of `loss`; the rest of the config is not read."""
    _, target = ctc.settings(cfg)
    return build_encoder_decoder(encoder_configs(cfg), cfg["decoder"], tokenizers, fusion=cfg.get("fusion"),
                                 ctc_vocab_size=ctc_vocab_size(cfg, tokenizers), ctc_target=target)


def build_encoder_decoder(encoders: Mapping[str, Mapping], decoder: Mapping, tokenizers, *, fusion: Mapping | None = None,
                          ctc_vocab_size: int | None = None, ctc_target: str = "target") -> EncoderDecoder:
    """The model from its parts' configs: {source: encoder config (with the plugin `name`)}, the decoder
    config (d_model, num_layers, num_heads, ffn_dim, dropout, tie_embeddings[, attn_dropout,
    tie_source_embeddings]), the fusion config ({mode: concat | gated, gate_init}) and the CTC head's
    vocabulary size (None: no head)."""
    built = {source: registry.build_encoder(enc["name"], enc, tokenizer=tokenizers) for source, enc in encoders.items()}
    if decoder["d_model"] % decoder["num_heads"]:
        raise ConfigError(
            f"decoder.d_model={decoder['d_model']} is not divisible by decoder.num_heads={decoder['num_heads']}; "
            "change one of them (each head gets d_model / num_heads dimensions)"
        )
    options = dict(
        vocab_size=len(tokenizers.target), d_model=decoder["d_model"], num_layers=decoder["num_layers"],
        num_heads=decoder["num_heads"], ffn_dim=decoder["ffn_dim"], dropout=decoder["dropout"],
        attn_dropout=decoder.get("attn_dropout", 0.0), tie_embeddings=decoder["tie_embeddings"],
    )
    fusion = fusion or {}
    mode = fusion.get("mode", "concat")
    if mode not in FUSION_MODES:
        raise ConfigError(f"fusion.mode={mode!r}; expected one of {', '.join(FUSION_MODES)}")
    if mode == "gated":  # each layer's cross-attention: one attention per source, each behind its own gate
        sources, gate_init = list(built), float(fusion.get("gate_init", 0.0))
        options["cross_attention"] = lambda: GatedCrossAttention(
            decoder["d_model"], decoder["num_heads"], sources, dropout=options["attn_dropout"], gate_init=gate_init)
    target_decoder = TransformerDecoder(**options)
    if decoder.get("tie_source_embeddings", False):
        tie_source_embeddings(built, target_decoder, tokenizers)
    return EncoderDecoder(built, target_decoder, ctc_vocab_size=ctc_vocab_size, ctc_target=ctc_target)


def tie_source_embeddings(encoders: Mapping[str, nn.Module], decoder: TransformerDecoder, tokenizers) -> None:
    """One embedding matrix for source tokens, target tokens and the output projection (fairseq's
    --share-all-embeddings; Press & Wolf 2017): in a small model the embeddings are a large share of the
    parameters, and each piece learns from both sides. Needs one vocabulary (tokenizer.joint=true) and
    encoders that embed token ids: an encoder exposes its nn.Embedding as `token_embedding`."""
    if not tokenizers.joint:
        raise ConfigError("decoder.tie_source_embeddings=true needs one vocabulary for sources and targets: "
                          "set tokenizer.joint=true (or decoder.tie_source_embeddings=false)")
    for source, encoder in encoders.items():
        embedding = getattr(encoder, "token_embedding", None)
        if not isinstance(embedding, nn.Embedding):
            raise ConfigError(f"decoder.tie_source_embeddings=true, but the encoder of source {source!r} "
                              f"({type(encoder).__name__}) has no token embedding to share: it is for text sources; "
                              "set decoder.tie_source_embeddings=false")
        if embedding.weight.shape != decoder.embed.weight.shape:
            raise ConfigError(f"decoder.tie_source_embeddings=true, but source {source!r} embeds into "
                              f"{tuple(embedding.weight.shape)} (vocabulary, width) and the decoder into "
                              f"{tuple(decoder.embed.weight.shape)}: give the encoder and decoder the same d_model")
        embedding.weight = decoder.embed.weight


def ctc_vocab_size(cfg, tokenizers) -> int | None:
    """The CTC head's output size when `loss.ctc_weight` > 0: the vocabulary of the tokenizer its targets
    use (the target's, or the source transcripts' with loss.ctc_target=source); None = no head."""
    weight, target = ctc.settings(cfg)
    if not weight:
        return None
    return len(tokenizers.source if target == "source" else tokenizers.target)
