"""Decoding: greedy, batched beam search, and sampling over one `TransformerDecoder`; CTC best path over the
model's CTC head.

All strategies project the context into cross-attention K/V once (`decoder.start`) and keep it for the
whole decode; beams of a source share that one copy. Rows (and sources) that finish are dropped from
the batch, so they stop costing compute. `decoder` is anything with the decoder's `start` / `step`: a
`TransformerDecoder`, or what an inference backend made of one (`mmxattn.inference`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from . import ctc
from .config_checks import STRATEGIES
from .context import Context
from .decoder import TransformerDecoder
from .errors import ConfigError
from .tokenizer import BOS, EOS, PAD


@dataclass
class GenerationConfig:
    strategy: str = "beam"  # greedy | beam | sample | ctc (best path of the CTC head; no decoder)
    beam_size: int = 5
    nbest: int = 1
    max_len: int = 128  # generated tokens, EOS included
    min_len: int = 0  # EOS is forbidden before this many tokens
    length_penalty: float = 1.0  # beam score = log-prob / length ** length_penalty
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None
    ctc_weight: float = 0.0  # beam: rescore finished hypotheses with the model's CTC head, joint CTC/attention

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"generation.strategy={self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if self.beam_size < 1 or self.nbest < 1 or (self.strategy == "beam" and self.nbest > self.beam_size):
            raise ConfigError(
                f"generation.beam_size={self.beam_size}, nbest={self.nbest}: need 1 ≤ nbest ≤ beam_size"
            )
        if self.max_len < 1 or self.min_len >= self.max_len:
            raise ConfigError(f"generation.max_len={self.max_len} must exceed min_len={self.min_len} and be ≥ 1")
        if not 0 <= self.ctc_weight <= 1:
            raise ConfigError(f"generation.ctc_weight={self.ctc_weight} must be in [0, 1] (0 = attention scores only)")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("generation: need temperature > 0, 0 < top_p ≤ 1, top_k ≥ 0")


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float  # log-probability (beam: divided by length ** length_penalty)


@torch.no_grad()
def generate(decoder: TransformerDecoder, context: Context, cfg: GenerationConfig,
             ctc_head: torch.nn.Module | None = None, prompt: Sequence[int] = ()) -> list[list[Hypothesis]]:
    """For each of the B sources in `context`, its hypotheses (best first; nbest of them for beam).

    ctc_head: a CTC head over the target vocabulary (`EncoderDecoder.ctc_head`); with cfg.ctc_weight > 0 a beam
    search's finished hypotheses are rescored with it (`rescore_with_ctc`); strategy "ctc" decodes with it alone.
    prompt: token ids the decoder reads after BOS before it writes (a multitask model's task tags); they are
    given, not chosen: not scored, not counted in max_len or the length penalty, not in the hypotheses.
    """
    if cfg.strategy == "ctc":
        return [[h] for h in ctc_best_path(context, ctc_head, cfg, prompt)]
    if cfg.strategy == "beam":
        if cfg.ctc_weight and ctc_head is not None:
            return rescore_with_ctc(beam_search(decoder, context, replace(cfg, nbest=cfg.beam_size), prompt),
                                    context, ctc_head, cfg)
        return beam_search(decoder, context, cfg, prompt)
    generator = None
    if cfg.strategy == "sample" and cfg.seed is not None:
        generator = torch.Generator(device=context.states.device).manual_seed(cfg.seed)
    return [[h] for h in _decode_one_per_row(decoder, context, cfg, generator, prompt)]


def ctc_best_path(context: Context, ctc_head: torch.nn.Module | None, cfg: GenerationConfig,
                  prompt: Sequence[int] = ()) -> list[Hypothesis]:
    """Greedy CTC decoding: the most likely label at each context position, repeats merged, blanks dropped.

    No decoder runs, so there is no language model and no reordering: for monotonic tasks (recognition, digit
    strings) where the CTC head can beat an attention decoder that has not learnt where to look; translation
    needs the decoder. Score: the best path's log-probability.
    """
    if ctc_head is None:
        raise ConfigError("generation.strategy=ctc decodes with the model's CTC head over the target vocabulary, and "
                          "this model has none: train with loss.ctc_weight > 0 and loss.ctc_target=target, or "
                          "choose greedy or beam")
    if prompt:
        raise ConfigError("generation.strategy=ctc cannot follow a task prompt (the CTC head reads no tags): "
                          "use greedy or beam for a multitask model")
    paths = ctc.best_paths(ctc_head(context.states), context.mask)
    return [Hypothesis(tokens[: cfg.max_len - 1], score) for tokens, score in paths]


def _read_prompt(decoder, state, rows: int, prompt: Sequence[int], device) -> torch.Tensor:
    """The first decoder input [rows, 1]: BOS, or with a prompt its last tag, once BOS and the tags before it
    have been read one step each (their predictions are not used: the prompt is given)."""
    prefix = [BOS, *prompt]
    for token in prefix[:-1]:
        decoder.step(torch.full((rows, 1), token, dtype=torch.long, device=device), state)
    return torch.full((rows, 1), prefix[-1], dtype=torch.long, device=device)


def _constrain(logp: torch.Tensor, step: int, cfg: GenerationConfig) -> torch.Tensor:
    # logp [n, V]: never PAD or BOS; forbid EOS before min_len, force it at max_len
    logp[:, PAD] = float("-inf")
    logp[:, BOS] = float("-inf")
    if step < cfg.min_len:
        logp[:, EOS] = float("-inf")
    if step == cfg.max_len - 1:
        eos = logp[:, EOS].clone()
        logp.fill_(float("-inf"))
        logp[:, EOS] = eos
    return logp


def _filter_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, top-k and nucleus (top-p) filtering of logits [n, V]."""
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def _decode_one_per_row(decoder, context, cfg, generator, prompt: Sequence[int] = ()) -> list[Hypothesis]:
    """Greedy or sampling: one hypothesis per source; finished rows leave the batch."""
    b = context.states.shape[0]
    device = context.states.device
    state = decoder.start(context, capacity=min(cfg.max_len, 64) + len(prompt))
    out = torch.full((b, cfg.max_len), EOS, dtype=torch.long, device=device)
    scores = torch.zeros(b, device=device)
    lengths = torch.full((b,), cfg.max_len, dtype=torch.long, device=device)
    active = torch.arange(b, device=device)  # original row of each live row
    tokens = _read_prompt(decoder, state, b, prompt, device)
    for step in range(cfg.max_len):
        logits = decoder.step(tokens, state)[0][:, -1].float()  # [n, V]
        logp = _constrain(logits.log_softmax(-1), step, cfg)
        if cfg.strategy == "sample":
            probs = _filter_logits(logp, cfg).softmax(-1)
            next_tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_tok = logp.argmax(-1)
        out[active, step] = next_tok
        scores[active] += logp.gather(1, next_tok[:, None]).squeeze(1)
        done = next_tok == EOS
        if bool(done.any()):
            lengths[active[done]] = step
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active, next_tok = active[keep], next_tok[keep]
            state.select_rows(keep)
            state.select_sources(keep)
        tokens = next_tok[:, None]
    return [Hypothesis(out[i, : lengths[i]].tolist(), float(scores[i])) for i in range(b)]


def beam_search(decoder: TransformerDecoder, context: Context, cfg: GenerationConfig,
                prompt: Sequence[int] = ()) -> list[list[Hypothesis]]:
    """Batched beam search (fairseq-style): a source is done once it has `beam_size` finished hypotheses."""
    b, k = context.states.shape[0], cfg.beam_size
    device = context.states.device
    # K/V per source, shared by its beams
    state = decoder.start(context, capacity=min(cfg.max_len, 64) + len(prompt), rows=b * k)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    n_finished = torch.zeros(b, dtype=torch.long, device=device)
    active = torch.arange(b, device=device)  # original source of each live source
    # Beams start identical: only beam 0 may expand at the first step.
    beam_scores = torch.full((b, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0
    beam_scores = beam_scores.view(-1)  # [n = b*k]
    given = 1 + len(prompt)  # BOS and the prompt: the first `given` tokens of every sequence
    seqs = torch.tensor([BOS, *prompt], dtype=torch.long, device=device).repeat(b * k, 1)  # [n, t]
    _read_prompt(decoder, state, b * k, prompt, device)
    for step in range(cfg.max_len):
        logits = decoder.step(seqs[:, -1:], state)[0][:, -1].float()  # [n, V]
        logp = _constrain(logits.log_softmax(-1), step, cfg)
        vocab = logp.shape[-1]
        n_src = len(active)
        cand = (beam_scores[:, None] + logp).view(n_src, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1)  # [b, 2k]: at most k end in EOS, so k others remain
        parent, token = top_idx // vocab, top_idx % vocab
        is_eos = token == EOS

        # EOS among the best k candidates finishes a hypothesis (python loop over finish events only).
        eos_events = (is_eos[:, :k] & (top_scores[:, :k] > float("-inf"))).nonzero().tolist()
        for src_row, c in eos_events:
            src = int(active[src_row])
            if len(finished[src]) < k:
                row = src_row * k + int(parent[src_row, c])
                length = step + 1  # generated tokens, EOS included
                finished[src].append(
                    Hypothesis(seqs[row, given:].tolist(), float(top_scores[src_row, c]) / length**cfg.length_penalty)
                )
                n_finished[src] += 1

        # The next beams: the best k candidates that did not end in EOS.
        next_scores, pos = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        rows = (torch.arange(n_src, device=device)[:, None] * k + parent.gather(1, pos)).view(-1)
        next_tokens = token.gather(1, pos).view(-1)

        live = n_finished[active] < k  # [b]
        if not bool(live.any()):
            break
        if not bool(live.all()):  # drop finished sources: their rows and their context K/V
            keep_src = live.nonzero().squeeze(1)
            state.select_sources(keep_src)
            active = active[keep_src]
            keep_rows = (keep_src[:, None] * k + torch.arange(k, device=device)).view(-1)
            rows, next_tokens = rows[keep_rows], next_tokens[keep_rows]
            next_scores = next_scores[keep_src]
        state.select_rows(rows)
        seqs = torch.cat([seqs[rows], next_tokens[:, None]], dim=1)
        beam_scores = next_scores.view(-1)

    for hyps in finished:
        hyps.sort(key=lambda h: h.score, reverse=True)
    return [hyps[: cfg.nbest] for hyps in finished]


def rescore_with_ctc(hypotheses: list[list[Hypothesis]], context: Context, ctc_head: torch.nn.Module,
                     cfg: GenerationConfig) -> list[list[Hypothesis]]:
    """Joint CTC/attention scoring (Watanabe et al. 2017) of each source's finished beam hypotheses:
    ((1 - λ) log p_att(y|x) + λ log p_ctc(y|x)) / length ** length_penalty, λ = cfg.ctc_weight; best nbest kept.

    CTC scores a whole hypothesis against the audio's frames in order, so it penalises what attention alone
    lets through: words dropped or said twice, endings cut short, sequences longer than the input can hold.
    Applied to the beam's finished hypotheses (N-best rescoring) rather than inside the search: no per-step
    prefix scores, and the same search as without it.
    """
    rows = [b for b, hyps in enumerate(hypotheses) for _ in hyps]
    flat = [h for hyps in hypotheses for h in hyps]
    if flat:
        index = torch.tensor(rows, device=context.states.device)
        ctc_scores = ctc.sequence_log_likelihoods(ctc_head(context.states.index_select(0, index)),
                                                  context.mask.index_select(0, index), [h.tokens for h in flat])
        for hyp, ctc_score in zip(flat, ctc_scores.tolist()):
            norm = (len(hyp.tokens) + 1) ** cfg.length_penalty  # generated tokens, EOS included, as beam_search
            attention = hyp.score * norm
            joint = cfg.ctc_weight * ctc_score if cfg.ctc_weight else 0.0  # 0 x -inf would be NaN
            hyp.score = ((1 - cfg.ctc_weight) * attention + joint) / norm
    for hyps in hypotheses:
        hyps.sort(key=lambda h: h.score, reverse=True)
    return [hyps[: cfg.nbest] for hyps in hypotheses]
