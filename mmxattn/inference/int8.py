"""The int8 backend: every nn.Linear with int8 weights and dynamically quantized int8 activations
(PyTorch's `quantize_dynamic`, fbgemm/x86 kernels using VNNI where the CPU has it), and the decoder's
flattened one-token step. A quarter of the weight bytes of fp32: decoding, which streams every weight
once per step, reads less. Logits differ from fp32 in the last digits, so a search can choose another
token where two were almost tied; tests/test_inference_backends.py states the agreement it holds.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ..errors import ConfigError
from .cpu import FastDecoder

log = logging.getLogger(__name__)


def quantized_engine() -> str | None:
    """The quantized CPU engine this torch build and CPU offer (x86 or fbgemm), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


def apply_int8(model: nn.Module) -> None:
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ConfigError(f"backend=int8 runs on the CPU; the model is on {device}. Use --device cpu, or another "
                          "backend (eager) on this device")
    engine = quantized_engine()
    if engine is None:
        raise ConfigError("backend=int8 needs PyTorch's quantized CPU kernels (x86/fbgemm), which this torch build "
                          f"or CPU lacks (supported engines: {torch.backends.quantized.supported_engines}); use "
                          "--backend cpu")
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization points at torchao; still shipped
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.decoder = FastDecoder.from_decoder(model.decoder)
