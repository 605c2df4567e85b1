"""Config values checked before anything is read, generated or built.

A typo such as `optim.lr=-1` or `trainer.max_epochs=abc` should cost the user one second and one line
naming the key, not a minute of data loading followed by a traceback from deep inside torch or
Lightning. Sections that a config does not have are not checked; plugins check their own section.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

STRATEGIES = ("greedy", "beam", "sample", "ctc")  # generation.strategy (mmxattn.generation)

_ABSENT = object()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, high: float = float("inf"), *, optional: bool = False):
    def check(value):
        return (optional and value is None) or (_integer(value) and low <= value <= high)

    bound = f"≥ {low}" if high == float("inf") else f"between {low} and {high}"
    return check, f"an integer {bound}{' or null' if optional else ''}"


def number(low: float, high: float = float("inf"), *, low_open: bool = False, high_open: bool = False,
           optional: bool = False):
    def check(value):
        if optional and value is None:
            return True
        return _number(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)

    left, right = "(" if low_open else "[", ")" if high_open else "]"
    span = f"> {low}" if high == float("inf") and low_open else (
        f"≥ {low}" if high == float("inf") else f"in {left}{low}, {high}{right}")
    return check, f"a number {span}{' or null' if optional else ''}"


def one_of(*choices: Any):
    return (lambda value: value in choices), "one of " + ", ".join(str(c) for c in choices)


def _max_time(value: Any) -> bool:
    if value is None or isinstance(value, dict) or OmegaConf.is_dict(value):
        return True
    return isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value) is not None


def _betas(value: Any) -> bool:
    return OmegaConf.is_list(value) and len(value) == 2 and all(_number(b) and 0 <= b < 1 for b in value)


_PRECISIONS = ("64", "32", "16", "bf16", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
               "transformer-engine", "transformer-engine-float16")

# key -> (is the value valid?, what is expected)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": integer(0),
    "optim.lr": number(0, low_open=True),
    "optim.eps": number(0, low_open=True),
    "optim.weight_decay": number(0),
    "optim.betas": (_betas, "two numbers in [0, 1), e.g. [0.9, 0.98]"),
    "optim.warmup_steps": integer(1),
    "optim.warmup_fraction": number(0, 1, low_open=True, high_open=True, optional=True),
    "optim.schedule": one_of("cosine", "linear", "inverse_sqrt"),
    "optim.min_lr_ratio": number(0, 1),
    "loss.label_smoothing": number(0, 1, high_open=True),
    "trainer.max_epochs": integer(-1, optional=True),
    "trainer.max_steps": integer(-1),
    "trainer.max_time": (_max_time, 'null or "DD:HH:MM:SS", e.g. "00:01:30:00"'),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": number(0, optional=True),
    "trainer.log_every_n_steps": integer(1),
    "trainer.check_val_every_n_epoch": integer(1, optional=True),
    "trainer.val_check_interval": number(0, low_open=True),
    "trainer.num_nodes": integer(1),
    "trainer.precision": ((lambda v: str(v) in _PRECISIONS), "one of " + ", ".join(_PRECISIONS)),
    "data.max_tokens": integer(1),
    "data.max_sentences": integer(1, optional=True),
    "data.min_batches_per_epoch": integer(1, optional=True),
    "early_stopping.patience": integer(1, optional=True),
    "early_stopping.min_delta": number(0),
    "data.max_len": integer(1),
    "data.num_workers": integer(0),
    "decoder.d_model": integer(1),
    "decoder.num_layers": integer(1),
    "decoder.num_heads": integer(1),
    "decoder.ffn_dim": integer(1),
    "decoder.dropout": number(0, 1, high_open=True),
    "decoder.attn_dropout": number(0, 1, high_open=True),
    "tokenizer.vocab_size": integer(8),
    "tokenizer.model_type": one_of("unigram", "bpe", "char", "word"),
    "checkpoint.every_n_steps": integer(0),
    "checkpoint.keep_last": integer(0),
    "checkpoint.keep_best": integer(-1),
    "guard.max_nonfinite_in_row": integer(0),
    "guard.check_every_n_steps": integer(1),
    "eval.show_examples": integer(0),
}
for _section in ("generation", "eval.generation"):
    RULES.update({
        f"{_section}.strategy": one_of(*STRATEGIES),
        f"{_section}.beam_size": integer(1),
        f"{_section}.nbest": integer(1),
        f"{_section}.max_len": integer(1),
        f"{_section}.min_len": integer(0),
        f"{_section}.length_penalty": number(float("-inf")),
        f"{_section}.temperature": number(0, low_open=True),
        f"{_section}.top_k": integer(0),
        f"{_section}.top_p": number(0, 1, low_open=True),
    })


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Keys left at ??? (required), found without resolving interpolations (which may need Hydra)."""
    found = []
    for key, value in node.items_ex(resolve=False) if OmegaConf.is_dict(node) else enumerate(node):
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(value) or OmegaConf.is_list(value):
            found += _missing_keys(value, path + ".")
        elif OmegaConf.is_missing(node, key):
            found.append(path)
    return found


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first required value left unset or value out of range, naming its key."""
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(
            f"config key {missing[0]} is required but not set (???); give it on the command line, e.g. "
            f"{missing[0]}=..." + (" (the folder holding your data)" if missing[0] == "data.root" else "")
        )
    for key, (valid, expected) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or valid(value):
            continue
        shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        raise ConfigError(f"{key}={shown!r} is invalid: expected {expected}. Fix it on the command line "
                          f"({key}=...) or in the recipe that sets it.")
    generation = cfg.get("generation") or {}
    if generation.get("strategy") == "beam" and generation.get("nbest", 1) > generation.get("beam_size", 1):
        raise ConfigError(f"generation.nbest={generation['nbest']} is larger than generation.beam_size="
                          f"{generation['beam_size']}; beam search keeps only beam_size hypotheses")
    decoder = cfg.get("decoder") or {}
    if decoder.get("d_model") and decoder.get("num_heads") and decoder["d_model"] % decoder["num_heads"]:
        raise ConfigError(f"decoder.d_model={decoder['d_model']} is not divisible by decoder.num_heads="
                          f"{decoder['num_heads']}; change one of them (each head gets d_model / num_heads dimensions)")
