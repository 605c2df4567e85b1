"""The `data.max_len` and `data.max_tokens` that `mmx-data` suggests for a training split.

A sample's size is max(each source's length, target tokens + 1), in the processors' units. The suggested
`data.max_len` keeps every sample if a round number close to the longest allows, else 99.9% of them, and
always every validation and test sample (a test sample dropped as overlong would change the score). The
suggested `data.max_tokens` gives at least 100 updates per epoch (as recipe=translation/base aims for),
and a batch always holds the longest sample.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .batching import TokenBudgetBatchSampler, epoch_budget

TARGET_UPDATES = 100  # updates per epoch the suggested budget aims for at least (as recipe=translation/base)
KEEP = 0.999  # the share of training samples the suggested data.max_len keeps


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "es" if word.endswith("ch") else "s")


def nice_up(x: float) -> int:
    """x rounded up to two significant digits (87 -> 87, 123 -> 130, 3456 -> 3500)."""
    x = max(1, math.ceil(x))
    step = 10 ** max(0, len(str(x)) - 2)
    return -(-x // step) * step


def _world(cfg) -> tuple[int, int]:
    """(processes, gradient accumulation) of the trainer config: updates per epoch = batches / both."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif hasattr(devices, "__len__") and not isinstance(devices, str):
        n = len(devices)
    else:
        n = 1
    nodes = trainer.get("num_nodes", 1) or 1
    accumulate = trainer.get("accumulate_grad_batches", 1) or 1
    return n * int(nodes), int(accumulate)


def _batches(sizes: Sequence[int], max_tokens: int, max_sentences: int | None) -> int:
    return len(TokenBudgetBatchSampler(sizes, max_tokens=max_tokens, max_sentences=max_sentences, shuffle=False))


def suggest(cfg, sizes: list[int], skip: bool, eval_longest: int = 0) -> tuple[list[str], list[str]]:
    """(suggested overrides, the lines explaining them) for data.max_len and data.max_tokens.

    sizes: the training samples' sizes; eval_longest: the longest validation / test sample, which the
    suggested data.max_len keeps (a test sample dropped as overlong would change the score)."""
    data = cfg.data
    max_len, max_tokens = int(data.max_len), int(data.max_tokens)
    max_sentences = data.get("max_sentences")
    min_batches = data.get("min_batches_per_epoch")
    world, accumulate = _world(cfg)
    per_update = world * accumulate
    lines = ["batch budget (train; a sample's size = max(each source's length, target tokens + 1), in the units above):"]
    overrides: list[str] = []
    ordered = np.sort(np.asarray(sizes))
    longest = int(ordered[-1])
    # data.max_len: keep every sample if the limit allows, else the smallest round number keeping 99.9%
    if max(longest, eval_longest) <= max_len:
        new_len = max_len
        lines.append(f"  data.max_len={max_len} keeps every sample (the longest is {longest:,}"
                     + (f"; of valid/test {eval_longest:,}" if eval_longest else "") + "): unchanged")
    else:
        keep_at = int(ordered[min(len(ordered) - 1, math.ceil(KEEP * len(ordered)) - 1)])
        new_len = nice_up(longest) if nice_up(longest) <= 1.25 * nice_up(keep_at) else nice_up(keep_at)
        evaluation = ""
        if eval_longest > new_len:
            new_len, evaluation = nice_up(eval_longest), f", and every valid/test sample (the longest is {eval_longest:,})"
        dropped = int((ordered > new_len).sum())
        lines.append(f"  data.max_len={max_len} drops {int((ordered > max_len).sum()):,} training samples; "
                     f"{100 * KEEP:.1f}% are ≤ {keep_at:,}, the longest is {longest:,} -> data.max_len={new_len} keeps "
                     f"{100 * (len(ordered) - dropped) / len(ordered):.2f}%{evaluation}"
                     + (f" (drop the other {dropped:,} with data.skip_invalid=true)" if dropped else ""))
        overrides.append(f"data.max_len={new_len}")
        if dropped and not skip:
            overrides.append("data.skip_invalid=true")
    kept = ordered[ordered <= new_len]
    total, longest = int(kept.sum()), int(kept[-1])
    effective = epoch_budget(kept.tolist(), max_tokens, min_batches)
    batches = _batches(kept.tolist(), effective, max_sentences)
    updates = math.ceil(batches / per_update)
    how = f" ({world} processes × {accumulate} accumulated batches per update)" if per_update > 1 else ""
    lowered = (f" (lowered to {effective:,} by data.min_batches_per_epoch={min_batches}: {total:,} / {min_batches})"
               if effective != max_tokens else "")
    lines.append(f"  {len(kept):,} samples, {total:,} in all. data.max_tokens={max_tokens}{lowered}: {_n(batches, 'batch')} "
                 f"of ~{len(kept) / batches:,.1f} samples per epoch -> {_n(updates, 'update')} per epoch{how}")
    if updates >= TARGET_UPDATES and effective >= longest:
        lines.append(f"  data.max_tokens={max_tokens} is fine: ≥ {TARGET_UPDATES} updates per epoch, and the longest "
                     f"sample ({longest:,}) fits in a batch: unchanged")
    else:
        wanted = total // (TARGET_UPDATES * per_update)
        budget = max(longest, wanted // 8 * 8 if wanted >= 64 else wanted)
        new_batches = _batches(kept.tolist(), budget, max_sentences)
        reason = (f"the longest sample ({longest:,}) does not fit in data.max_tokens={effective}"
                  if effective < longest else f"only {_n(updates, 'update')} per epoch")
        lines.append(f"  {reason}. For ≥ {TARGET_UPDATES} updates per epoch: {total:,} / ({TARGET_UPDATES} × {per_update}) "
                     f"= {wanted:,}" + (f", but a batch must hold the longest sample ({longest:,})" if budget == longest
                                        else "") + f" -> data.max_tokens={budget} ({_n(new_batches, 'batch')} of "
                     f"~{len(kept) / new_batches:,.1f} samples)")
        if budget == longest and new_batches < TARGET_UPDATES * per_update:
            lines.append(f"  ({len(kept):,} samples are too few for {TARGET_UPDATES} updates per epoch even in batches "
                         "of one: count epochs rather than updates, or set trainer.max_steps)")
        overrides.append(f"data.max_tokens={budget}")
        if min_batches:
            overrides.append("data.min_batches_per_epoch=null")
    return overrides, lines
