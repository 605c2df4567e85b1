"""What every mmxattn command shares: logging setup and turning user errors into clean messages, and what
the commands that read a trained model (mmx-generate, mmx-eval) share: their parser's head, decoding
options and loading the model."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from ..config_checks import STRATEGIES
from ..errors import MmxError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="[%(asctime)s %(levelname)s %(name)s] %(message)s", datefmt="%H:%M:%S")


def user_errors_exit(fn):
    """Print an MmxError as one message (no traceback) and exit with its code (2 for a user's mistake);
    MMX_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MmxError as e:
            if os.environ.get("MMX_DEBUG"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    return wrapper


def checkpoint_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of a command that reads a trained model: its examples (`epilog`) printed as written, and
    the model as the first positional argument."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model.pt, a .ckpt file, or a run folder")
    return parser


def load_model(args: argparse.Namespace):
    """(model, tokenizers, cfg) of `args.checkpoint` on `args.device` with `args.backend`, after the setup a
    command needs first: logging, and keeping freed memory in the process (mmxattn.cpu_allocator)."""
    from ..checkpoint import load_for_inference
    from ..cpu_allocator import keep_freed_memory

    setup_logging()
    keep_freed_memory()
    return load_for_inference(args.checkpoint, args.device, args.backend)


def add_generation_args(parser) -> None:
    """Decoding options shared by mmx-generate and mmx-eval; unset ones keep the checkpoint's `generation`."""
    g = parser.add_argument_group("decoding (defaults: the `generation` section of the model's config)")
    g.add_argument("--strategy", choices=STRATEGIES, help="ctc: the CTC head's best path, no decoder (models trained with CTC)")
    g.add_argument("--beam-size", type=int, help="beams per input (beam search)")
    g.add_argument("--nbest", type=int, help="hypotheses to print per input (beam search)")
    g.add_argument("--max-len", type=int, help="most tokens to generate")
    g.add_argument("--min-len", type=int, help="fewest tokens to generate")
    g.add_argument("--length-penalty", type=float, help="beam score = logprob / length**penalty")
    g.add_argument("--temperature", type=float, help="sampling temperature")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass (1.0 = off)")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--ctc-weight", type=float, help="beam search: rescore with the model's CTC head, joint "
                   "CTC/attention (0 = attention only; the model needs loss.ctc_weight > 0 on its targets)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs decoded together (default 32)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--backend", default="auto", choices=["auto", "eager", "cpu", "compile", "int8"],
                        help="inference backend (mmxattn.inference): auto = cpu on a CPU, eager elsewhere; "
                             "int8 = int8 weights on CPU (faster, slightly less exact)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_with_generation_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`argv` parsed by `parser` with the decoding options (`add_generation_args`) added last, so that
    --help lists the command's own options before them. Intermixed: inputs may follow options
    (`mmx-generate RUN --task translate input.txt`), which plain parse_args refuses after a `*` positional."""
    add_generation_args(parser)
    return parser.parse_intermixed_args(argv)


def generation_config(defaults, args):
    """GenerationConfig from the model's `generation` config with command-line options on top."""
    from omegaconf import OmegaConf

    from ..generation import GenerationConfig

    values = dict(OmegaConf.to_container(defaults, resolve=True)) if defaults is not None else {}
    for key in GenerationConfig.__dataclass_fields__:
        arg = getattr(args, key, None)
        if arg is not None:
            values[key] = arg
    return GenerationConfig(**values)
