"""Inference backends: transforms applied to a model loaded for inference (frozen, in eval mode).

The core model is plain PyTorch, the same in training and inference. What makes decoding fast on a
given device (weight layouts made for products of few rows, a decode step with fewer Python calls,
torch.compile) is applied here, once, to a model that will not train again, so nothing can make it stale:

    backend   what it does
    eager     nothing: the core modules as they are (any device)
    cpu       every nn.Linear becomes a `PackedLinear` (oneDNN-packed weights, row blocks for a single row)
              and the decoder gets a flattened one-token step (`FastDecoder`); CPU, fp32
    compile   the flattened step under torch.compile (dynamic shapes), plain weights
    int8      every nn.Linear with int8 weights and dynamically quantized activations (PyTorch's
              quantize_dynamic) and the flattened step; CPU only, not chosen by auto (a small loss of
              accuracy, measured in benchmarks/README.md)

`prepare(model, backend)` applies one; "auto" picks cpu on a CPU and eager elsewhere.
`mmx-generate`, `mmx-eval`, `mmx-attend` (`--backend`) and `load_for_inference(..., backend=...)` use it.
benchmarks/README.md has the measured speed of each.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "cpu", "compile", "int8")


def default_backend(device: torch.device | str) -> str:
    return "cpu" if torch.device(device).type == "cpu" else "eager"


def prepare(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Freeze `model` (eval mode, no gradients) and apply `backend` to it, in place; returns the model.

    `model` is an `EncoderDecoder`; do this after anything that reads or saves its state dict (the
    backends reshape the decoder for decoding and are not meant to be trained or exported).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    device = next(model.parameters()).device
    if backend == "auto":
        backend = default_backend(device)
    model.eval().requires_grad_(False)
    if backend == "cpu":
        from .cpu import apply_cpu

        apply_cpu(model)
    elif backend == "compile":
        from .compiled import apply_compile

        apply_compile(model)
    elif backend == "int8":
        from .int8 import apply_int8

        apply_int8(model)
    model.backend = backend
    return model
