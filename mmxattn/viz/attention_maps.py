"""Cross-attention maps: which context positions each generated token read.

    from mmxattn.viz.attention_maps import AttentionMapper
    mapper = AttentionMapper.from_checkpoint("outputs/translation-quickstart/<run>")
    (amap,) = mapper(["Two small dogs chase the red ball near a river."])
    amap.weights            # [layers, heads, target tokens, context positions], each row sums to 1
    print(amap.table())     # one line per target token, e.g. "karo → dogs 99%, m 0%, wo 0%"

How: decode as usual (greedy or beam search, `mmxattn.generation.generate`, which never computes
weights), then run the chosen output once more, teacher-forced, through `decoder(..., need_weights=True)`.
That pass reproduces exactly the attention the decoder used while generating (incremental decoding equals
the full forward), and it is the only place weights are computed: every other path stays on SDPA.

The weights kept per sample cover its real context positions only (padding dropped); with several
encoders the positions are the sources' contexts one after another, and `sources` says which is which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import registry
from ..context import Context, ContextView
from ..data.multitask import task_view
from ..errors import ConfigError, MmxError
from ..generation import GenerationConfig, generate
from ..model import EncoderDecoder
from ..sources import encoder_configs
from ..tokenizer import BOS, EOS, PAD

log = logging.getLogger(__name__)


def display_piece(piece: str) -> str:
    """A SentencePiece piece as a person reads it: '▁the' -> 'the'; a lone '▁' -> '␣'."""
    return piece.replace("▁", " ").strip() or "␣"


# ---------------------------------------------------------------------------------------------------
# The tensor-level pieces


def encode_with_spans(model: EncoderDecoder, inputs: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[Context, list[tuple[str, int, int]]]:
    """`model.encode(inputs)` and, per source, the span [start, end) of the joint context axis it fills.

    The spans come from the encoders' own outputs (a forward hook), so they follow whatever
    `model.encode` does as long as it concatenates the sources along S in its encoders' order.
    """
    lengths: list[tuple[str, int]] = []
    hooks = [
        encoder.register_forward_hook(lambda _m, _args, out, name=name: lengths.append((name, out.states.shape[1])))
        for name, encoder in model.encoders.items()
    ]
    try:
        context = model.encode(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    spans, start = [], 0
    for name, length in lengths:
        spans.append((name, start, start + length))
        start += length
    if start != context.states.shape[1]:
        raise MmxError(
            f"cannot split the context per source: the encoders returned {dict(lengths)} positions, but "
            f"model.encode gave {context.states.shape[1]}; attention_maps expects the sources concatenated along S"
        )
    return context, spans


def cross_attention(model: EncoderDecoder, context: Context, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-attention weights [L, N, H, T, S] for BOS-prefixed tokens [N, T].

    Row t is what the decoder read when it predicted token t+1 (the token after BOS at t = 0).
    Padded context positions get exactly 0; each row sums to 1 over the rest.
    """
    with torch.no_grad():
        _, weights = model.decoder(tokens, context, need_weights=True)
    return torch.stack(weights)  # per layer [N, H, T, S] -> [L, N, H, T, S]


def reduce_weights(weights: torch.Tensor, layer: int | str = "mean", head: int | str = "mean") -> torch.Tensor:
    """[L, H, T, S] -> [T, S]: one layer or the mean over layers, one head or the mean over heads."""
    num_layers, num_heads = weights.shape[:2]
    if layer == "mean":
        weights = weights.mean(0)
    else:
        if not -num_layers <= int(layer) < num_layers:
            raise ConfigError(f"layer={layer}: this decoder has {num_layers} layers (0..{num_layers - 1}, or 'mean')")
        weights = weights[int(layer)]
    if head == "mean":
        return weights.mean(0)
    if not -num_heads <= int(head) < num_heads:
        raise ConfigError(f"head={head}: the decoder has {num_heads} heads (0..{num_heads - 1}, or 'mean')")
    return weights[int(head)]


# ---------------------------------------------------------------------------------------------------
# One sample's map


@dataclass
class SourceSpan:
    """One source's positions [start, end) in a sample's weights, and what they show."""

    name: str
    start: int
    end: int
    view: ContextView

    @property
    def labels(self) -> list[str]:
        return self.view.position_labels(self.end - self.start)


@dataclass
class AttentionMap:
    """The cross-attention of one generated output over its input's context."""

    inputs: dict[str, Any]  # source name -> the raw input (a line of text, a path)
    tokens: list[int]  # generated target ids, EOS last
    target_labels: list[str]  # one per row of `weights`
    text: str  # the decoded output
    score: float
    weights: torch.Tensor  # [L, H, T, S] float32 over the sample's real context positions
    sources: list[SourceSpan]

    def select(self, layer: int | str = "mean", head: int | str = "mean", source: str | None = None) -> torch.Tensor:
        """[T, S] weights of one layer/head (or means), over every position or one source's."""
        weights = reduce_weights(self.weights, layer, head)
        if source is None:
            return weights
        span = self.span(source)
        return weights[:, span.start : span.end]

    def span(self, source: str) -> SourceSpan:
        for span in self.sources:
            if span.name == source:
                return span
        raise ConfigError(f"no source named {source!r}; this model reads {', '.join(s.name for s in self.sources)}")

    @property
    def context_labels(self) -> list[str]:
        """A name per context position; prefixed by the source name when there are several."""
        if len(self.sources) == 1:
            return self.sources[0].labels
        return [f"{span.name}:{label}" for span in self.sources for label in span.labels]

    def top(self, k: int = 3, layer: int | str = "mean", head: int | str = "mean") -> list[list[tuple[str, float]]]:
        """Per target token, its k most-read context positions as (label, weight), heaviest first."""
        weights = self.select(layer, head)
        labels = self.context_labels
        values, index = weights.topk(min(k, weights.shape[1]), dim=1)
        return [[(labels[int(i)], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values, index)]

    def table(self, k: int = 3, layer: int | str = "mean", head: int | str = "mean") -> str:
        """One line per target token, its top k positions in percent (rounded): 'pela → ball 99%, dogs 0%'."""
        return "\n".join(
            f"{target} → " + ", ".join(f"{label} {100 * weight:.0f}%" for label, weight in row)
            for target, row in zip(self.target_labels, self.top(k, layer, head))
        ) + "\n"


# ---------------------------------------------------------------------------------------------------
# From raw inputs to maps


class AttentionMapper:
    """Decodes raw inputs with a trained model and returns the cross-attention of each output."""

    def __init__(self, model: EncoderDecoder, tokenizers, cfg, device: str | torch.device = "cpu",
                 task: str | None = None):
        """task: which task to ask a multitask model for (its encoders and prompt; `task_view`)."""
        self.model, self.tokenizers, self.cfg, self.device = model.to(device).eval(), tokenizers, cfg, device
        self.view = task_view(cfg, tokenizers, task)
        encoders = encoder_configs(cfg)
        self.source_configs = {e: encoders[e] for e in dict.fromkeys(self.view.sources.values())}
        self.plugins = {name: registry.get_plugin(c["name"]) for name, c in self.source_configs.items()}
        self.processors = {
            name: registry.build_processor(c["name"], c, tokenizer=tokenizers, train=False)
            for name, c in self.source_configs.items()
        }

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", backend: str = "auto",
                        task: str | None = None) -> "AttentionMapper":
        from ..checkpoint import load_for_inference

        model, tokenizers, cfg = load_for_inference(path, device, backend)
        return cls(model, tokenizers, cfg, device, task)

    def local_source(self, encoder: str) -> str:
        """The data's name for the source that `encoder` reads (the same name outside multitask models)."""
        return next(local for local, e in self.view.sources.items() if e == encoder)

    def generation_config(self, **overrides) -> GenerationConfig:
        """The model's own `generation` settings with `overrides` on top."""
        from omegaconf import OmegaConf

        defaults = self.cfg.get("generation")
        values = dict(OmegaConf.to_container(defaults, resolve=True)) if defaults is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return GenerationConfig(**values)

    def _as_sources(self, item: Any) -> dict[str, Any]:
        if isinstance(item, Mapping):
            missing = set(self.source_configs) - set(item)
            if missing:
                raise ConfigError(f"input {dict(item)} lacks sources {sorted(missing)}; this model reads {sorted(self.source_configs)}")
            return {name: item[name] for name in self.source_configs}
        if len(self.source_configs) != 1:
            raise ConfigError(f"this model reads {len(self.source_configs)} sources ({', '.join(self.source_configs)}); "
                              "give each input as a dict {source name: raw input}")
        return {next(iter(self.source_configs)): item}

    def __call__(self, items: Sequence[Any], generation: GenerationConfig | None = None, *, rank: int = 0,
                 batch_size: int = 16) -> list[AttentionMap]:
        """Maps for raw inputs (a text line or a path; a dict {source: raw} for several sources).

        generation: greedy or beam (default: the model's own settings); rank picks the n-th best beam
        hypothesis (needs nbest > rank).
        """
        gen = generation or self.generation_config()
        if gen.strategy == "sample":
            raise ConfigError("attention maps decode with strategy greedy or beam (sampling would give a different "
                              "output each run); pass --strategy greedy or beam")
        available = gen.nbest if gen.strategy == "beam" else 1
        if not 0 <= rank < available:
            raise ConfigError(f"rank={rank} but the decoder returns {available} hypotheses per input "
                              f"({gen.strategy}); use beam search with nbest > {rank}")
        sources = [self._as_sources(item) for item in items]
        maps: list[AttentionMap] = []
        for start in range(0, len(sources), batch_size):
            maps += self._batch(sources[start : start + batch_size], gen, rank)
        return maps

    def _batch(self, items: list[dict[str, Any]], gen: GenerationConfig, rank: int) -> list[AttentionMap]:
        inputs = {
            name: {k: v.to(self.device) for k, v in processor.collate([processor(item[name]) for item in items]).items()}
            for name, processor in self.processors.items()
        }
        with torch.no_grad():
            context, spans = encode_with_spans(self.model, inputs)
            prompt = self.view.prompt  # a multitask model's task tags: read after BOS, not drawn
            hyps = [h[min(rank, len(h) - 1)] for h in generate(self.model.decoder, context, gen, prompt=prompt)]
            targets = [h.tokens + [EOS] for h in hyps]
            width = max(len(t) for t in targets) + len(prompt)
            tokens = torch.full((len(items), width), PAD, dtype=torch.long, device=self.device)  # [B, T]
            for row, target in enumerate(targets):
                tokens[row, : len(prompt) + len(target)] = torch.tensor([BOS, *prompt] + target[:-1])
            # [L, B, H, T, S]: the rows that predicted the target tokens (the prompt's rows dropped)
            weights = cross_attention(self.model, context, tokens)[:, :, :, len(prompt):].float().cpu()
        mask = context.mask.cpu()  # [B, S]
        pieces = self.tokenizers.target.pieces
        maps = []
        for row, (item, hyp, target) in enumerate(zip(items, hyps, targets)):
            real = mask[row].nonzero().squeeze(1)  # this sample's real positions, in order
            sample_spans, offset = [], 0
            for name, start, end in spans:
                if name not in item:  # an encoder of another task: no positions in this context
                    continue
                n = int(mask[row, start:end].sum())
                view = self._view(name, item[name], n)
                sample_spans.append(SourceSpan(name, offset, offset + n, view))
                offset += n
            maps.append(AttentionMap(
                inputs=item, tokens=target, target_labels=[display_piece(p) for p in pieces(target)],
                text=self.tokenizers.target.decode(hyp.tokens), score=hyp.score,
                weights=weights[:, row, :, : len(target)].index_select(-1, real).contiguous(), sources=sample_spans,
            ))
        return maps

    def _view(self, source: str, raw: Any, n_positions: int) -> ContextView:
        describe = getattr(self.processors[source], "describe_context", None)
        view = describe(raw, n_positions) if describe is not None else None
        if view is None:
            return ContextView()
        if view.labels is not None:
            if len(view.labels) != n_positions:
                log.warning("encoder '%s' described %s positions for %s, but its context has %d; numbering them",
                            source, len(view.labels), raw, n_positions)
                return ContextView()
            view.labels = [display_piece(p) for p in view.labels]
        return view
