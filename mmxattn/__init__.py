"""mmxattn: pluggable encoders (text, image, audio) feeding one shared cross-attention Transformer decoder."""

from .context import Bridge, Context
from .decoder import DecoderState, TransformerDecoder
from .errors import ConfigError, DataError, MmxError, PluginError
from .generation import GenerationConfig, Hypothesis, generate
from .model import EncoderDecoder, build_encoder_decoder, build_model
from .registry import EncoderPlugin, Processor

__version__ = "0.1.0"
