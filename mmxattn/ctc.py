"""Auxiliary CTC on the context sequence: a loss that reaches the encoder without the decoder's help.

With cross-attention alone, the encoder learns only through attention weights that start uniform: until
the decoder finds where to look, the encoder gets almost no gradient, and small speech data can end
training there (the loss at the prior of the targets). CTC (Graves et al. 2006) scores the target tokens
directly from the context positions, in order, so every encoder position gets a gradient from the first
step; joint CTC/attention training (Kim, Hori & Watanabe 2017) learns faster and aligns better.

Modality-agnostic: the head reads the context the decoder reads (bridged to the decoder width, several
sources concatenated), whatever encoder made it. Targets are token ids of a tokenizer whose id 0 is PAD,
which no text ever encodes to, so 0 serves as the CTC blank and the head's output has the tokenizer's
vocabulary size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .tokenizer import BOS, EOS, PAD

BLANK = PAD  # id 0: never a target token, so it can be CTC's blank


def settings(cfg) -> tuple[float, str]:
    """(loss.ctc_weight, loss.ctc_target) from a run config, checked; weight 0 = no CTC."""
    loss = cfg.get("loss") or {}
    weight, target = float(loss.get("ctc_weight") or 0.0), str(loss.get("ctc_target") or "target")
    if weight < 0:
        raise ConfigError(f"loss.ctc_weight={weight} must be ≥ 0 (0 = no CTC)")
    if target not in ("target", "source"):
        raise ConfigError(f"loss.ctc_target={target!r}; expected target or source")
    return weight, target


class CTCHead(nn.Module):
    """Context states [B, S, D] -> CTC logits [B, S, V] (V = the vocabulary, id 0 = blank)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states)


def strip_targets(tokens: torch.Tensor, *drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows [B, T] -> (the rows with `drop` ids removed and the rest moved left, padded with 0 [B, L];
    lengths [B]). E.g. the decoder's target_out without EOS and the loss's ignore index."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for value in drop:
        keep &= tokens != value
    lengths = keep.sum(1)
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)  # kept tokens first, in order
    width = int(lengths.max()) if lengths.numel() else 0
    packed = tokens.gather(1, order)[:, :width]
    return packed.masked_fill(torch.arange(width, device=tokens.device)[None] >= lengths[:, None], BLANK), lengths


def decoder_targets(target_out: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC targets from the decoder's target_out [B, T] (y1 .. yn EOS IGNORE..): y1 .. yn, and n per row."""
    return strip_targets(target_out, EOS, ignore_index)


def _left_aligned(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real positions first: ctc_loss reads the first `length` positions of each row. A single source is
    padded on the right already; concatenated sources have padding between them."""
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # [B, S]
    return logits.gather(1, order[..., None].expand_as(logits)), mask.sum(1)


def min_positions(targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Context positions CTC needs per row [B]: one per token, plus a blank between equal neighbours."""
    valid = torch.arange(targets.shape[1], device=targets.device)[None] < lengths[:, None]
    repeats = (targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]
    return lengths + repeats.sum(1)


def ctc_loss(logits: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CTC negative log-likelihood summed over the batch, rows too short to hold their targets [B] bool).

    logits [B, S, V], mask [B, S] True = real position; targets [B, L] padded, target_lengths [B].
    A row whose context is shorter than its targets need (4x-subsampled speech of a few frames with a long
    transcript) has no alignment: its loss and gradient are zero (zero_infinity) rather than infinite, and
    it is flagged so that the caller can count and report it. An empty target (L = 0) is all blanks.
    """
    logits, input_lengths = _left_aligned(logits, mask)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [S, B, V], as ctc_loss wants them
    loss = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=BLANK, reduction="sum",
                      zero_infinity=True)
    return loss, input_lengths < min_positions(targets, target_lengths)


def best_paths(logits: torch.Tensor, mask: torch.Tensor) -> list[tuple[list[int], float]]:
    """Greedy CTC decoding of logits [B, S, V] over the real positions of mask [B, S]: per row the most likely
    label at each position, repeats merged, blanks (and BOS/EOS, which no target holds) dropped; with the best
    path's log-probability."""
    logits, lengths = _left_aligned(logits, mask)
    best_logp, best = logits.float().log_softmax(-1).max(-1)  # [B, S] each
    paths = []
    for labels, logp, length in zip(best, best_logp, lengths.tolist()):
        merged = torch.unique_consecutive(labels[:length])
        keep = ~torch.isin(merged, torch.tensor([BLANK, BOS, EOS], device=merged.device))
        paths.append((merged[keep].tolist(), logp[:length].sum().item()))
    return paths


def sequence_log_likelihoods(logits: torch.Tensor, mask: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
    """log p_ctc(sequence | context) per row [N] (-inf where the context is too short to say it).

    logits [N, S, V] and mask [N, S] of each sequence's own context (rows repeated as needed).
    """
    width = max(1, max(map(len, sequences)))
    targets = torch.tensor([list(s) + [BLANK] * (width - len(s)) for s in sequences], device=logits.device)
    lengths = torch.tensor([len(s) for s in sequences], device=logits.device)
    logits, input_lengths = _left_aligned(logits, mask)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [S, N, V]
    return -F.ctc_loss(log_probs, targets, input_lengths, lengths, blank=BLANK, reduction="none", zero_infinity=False)
