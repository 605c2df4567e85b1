"""Self-supervised speech encoder plugin: a torchaudio.pipelines bundle (wav2vec 2.0, HuBERT, WavLM, XLS-R) over
the raw waveform.

    encoder=ssl_speech encoder.bundle=WAV2VEC2_XLSR_300M encoder.train_layers=4

A raw sample is an audio path (as for the filterbank `audio` encoder: files, fairseq slices); the waveform
is read as mono, resampled to the bundle's rate (16 kHz for all of them) and, for the bundles trained that
way (the large and XLS-R ones), normalised per utterance. The model's transformer layers give 50 positions
per second; the context is either the last layer or a learned softmax-weighted sum of all of them (the
SUPERB recipe, `layer_weights`), then an optional strided convolution (`downsample`) shortens it for the
decoder (2: 25 per second).

Weights: the bundle's own (`pretrained: true`: torchaudio downloads them once into the torch hub cache;
offline, HF_HUB_OFFLINE=1, only that cache is read), or a local state dict of the same architecture
(`weights=PATH`), or random. `train_layers`: 0 keeps the whole model frozen (run without gradients, in
eval mode), N fine-tunes its last N transformer layers, `all` everything including the CNN feature extractor.
`arch` overrides the bundle's architecture parameters (tests, and small models trained from scratch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.functional as AF
from torch import nn

from mmxattn.context import Context
from mmxattn.errors import ConfigError, DataError
from mmxattn.registry import Processor

from .audio import AudioPlugin, header_frames, load_source, log_mel_fbank, to_mono
from .views import SpectrogramView

SPEECH_MODELS = ("Wav2Vec2", "HuBERT", "WavLM")  # bundle model types that are self-supervised speech encoders


def get_bundle(name: str):
    bundle = getattr(torchaudio.pipelines, str(name), None)
    if bundle is None or getattr(bundle, "_model_type", None) not in SPEECH_MODELS:
        known = sorted(n for n in dir(torchaudio.pipelines)
                       if getattr(getattr(torchaudio.pipelines, n), "_model_type", None) in SPEECH_MODELS)
        raise ConfigError(f"encoder.bundle={name!r} is not a torchaudio.pipelines speech model; choose one of "
                          f"{', '.join(known)}")
    return bundle


def build_architecture(bundle, arch: Mapping[str, Any] | None = None) -> nn.Module:
    """The bundle's model with random weights (torchaudio.models.wav2vec2_model / wavlm_model), `arch` changing
    its parameters (e.g. encoder_num_layers)."""
    params = {**bundle._params, **dict(arch or {})}
    unknown = set(arch or {}) - set(bundle._params)
    if unknown:
        raise ConfigError(f"encoder.arch: unknown keys {sorted(unknown)}; the bundle's parameters are "
                          f"{', '.join(sorted(bundle._params))}")
    make = torchaudio.models.wavlm_model if bundle._model_type == "WavLM" else torchaudio.models.wav2vec2_model
    return make(**params)


def load_state(model: nn.Module, path: str, bundle_name: str) -> None:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"encoder.weights={path}: file not found. Save it where a hub is reachable: "
                          f"torch.save(torchaudio.pipelines.{bundle_name}.get_model().state_dict(), PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (RuntimeError, OSError, AttributeError) as e:
        raise ConfigError(f"encoder.weights={path} does not fit the {bundle_name} model "
                          f"({type(e).__name__}: {str(e)[:300]}); check encoder.bundle and encoder.arch") from e


def download(bundle, name: str) -> dict[str, torch.Tensor]:
    """The bundle's pretrained state dict through torchaudio (the torch hub cache: downloaded once)."""
    url = f"https://download.pytorch.org/torchaudio/models/{bundle._path}"  # where torchaudio fetches it from
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(bundle._path).name
    if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(
            f"encoder.pretrained=true: the weights of torchaudio.pipelines.{name} are not in the torch hub cache "
            f"({cached}) and HF_HUB_OFFLINE=1 forbids downloading them. On a machine with internet access run "
            f"`python -c \"import torchaudio; torchaudio.pipelines.{name}.get_model()\"` and copy that file here, "
            "or save the model's state_dict() to a file and pass encoder.weights=PATH")
    try:
        return bundle._get_state_dict(None)
    except Exception as e:  # no network, a proxy, a damaged cached file
        raise ConfigError(f"encoder.pretrained=true: torchaudio could not get the weights of {name} from {url} "
                          f"({type(e).__name__}: {str(e)[:200]}); fetch them where the internet is reachable (see "
                          "encoders/ssl_speech.py) or pass encoder.weights=PATH") from e


class SSLSpeechEncoder(nn.Module):
    """waveform [B, T] + lengths [B] -> Context(states [B, S, d_model], mask [B, S]), S ≈ T / (320 × downsample)."""

    def __init__(self, *, bundle: str = "WAV2VEC2_BASE", pretrained: bool = False, weights: str | None = None,
                 arch: Mapping[str, Any] | None = None, train_layers: Any = 0, layer_weights: bool = True,
                 downsample: int = 2, d_model: int = 256, dropout: float = 0.1):
        super().__init__()
        spec = get_bundle(bundle)
        self.model = build_architecture(spec, arch)
        if weights:
            load_state(self.model, weights, bundle)
        elif pretrained:
            self.model.load_state_dict(download(spec, bundle))
        self.normalize_waveform = bool(getattr(spec, "_normalize_waveform", False))
        self.wavlm = spec._model_type == "WavLM"
        layers = self.model.encoder.transformer.layers
        self.train_layers = len(layers) if train_layers == "all" else int(train_layers)
        if not 0 <= self.train_layers <= len(layers):
            raise ConfigError(f"encoder.train_layers={train_layers!r}: 0 (frozen), 1-{len(layers)} or all")
        self.trainable = [] if self.train_layers == 0 else (
            [self.model] if train_layers == "all" else list(layers[len(layers) - self.train_layers:]))
        for p in self.model.parameters():
            p.requires_grad = False
        for module in self.trainable:
            for p in module.parameters():
                p.requires_grad = True
        width = self.model.encoder.feature_projection.projection.out_features
        self.layer_logits = nn.Parameter(torch.zeros(len(layers))) if layer_weights else None  # softmax: mean at start
        if downsample < 1:
            raise ConfigError(f"encoder.downsample={downsample}: 1 (none) or a stride ≥ 2")
        self.downsample = int(downsample)
        self.reduce = (nn.Conv1d(width, d_model, kernel_size=self.downsample, stride=self.downsample)
                       if self.downsample > 1 else nn.Linear(width, d_model))
        self.drop = nn.Dropout(dropout)
        self.output_dim = d_model
        self.train(self.training)  # frozen parts in eval mode from the start (Lightning keeps the modes it is given)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # the frozen part never trains (no dropout, no layer drop) ...
        for module in self.trainable:  # ... and the fine-tuned layers do in training
            module.train(mode)
        return self

    def _layers(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.normalize_waveform:  # per utterance over its real samples, as the bundle's training did
            real = torch.arange(waveform.shape[1], device=waveform.device)[None] < lengths[:, None]
            n = lengths[:, None].clamp(min=1)
            mean = (waveform * real).sum(1, keepdim=True) / n
            var = (((waveform - mean) * real) ** 2).sum(1, keepdim=True) / n
            waveform = ((waveform - mean) / (var + 1e-5).sqrt()) * real
        # What Wav2Vec2Model.extract_features does, with the padding mask in the form each model type takes:
        # torchaudio's WavLM layers refuse its additive attention mask (an assertion) and read key_padding_mask.
        features, lengths = self.model.feature_extractor(waveform, lengths)  # [B, S, C], [B]
        x, attention_mask = self.model.encoder._preprocess(features, lengths)  # padding zeroed; [B, 1, S, S]
        padding = torch.arange(x.shape[1], device=x.device)[None] >= lengths[:, None]  # [B, S] True = padding
        transformer = self.model.encoder.transformer
        x, bias, outputs = transformer._preprocess(x), None, []
        for layer in transformer.layers:
            if self.wavlm:
                x, bias = layer(x, None, position_bias=bias, key_padding_mask=padding)
            else:
                x, bias = layer(x, attention_mask, position_bias=bias)
            outputs.append(x)  # [B, S, W]
        return outputs, lengths

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Context:
        waveform, lengths = batch["waveform"], batch["lengths"]  # [B, T], [B]
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.trainable)):
            layers, out_lengths = self._layers(waveform, lengths)
        if self.layer_logits is not None:
            weights = self.layer_logits.softmax(0)  # [L]
            x = sum(w * layer for w, layer in zip(weights, layers))  # [B, S, W]
        else:
            x = layers[-1]
        if self.downsample > 1:
            x = F.pad(x, (0, 0, 0, -x.shape[1] % self.downsample))  # whole strides
            x = self.reduce(x.transpose(1, 2)).transpose(1, 2)  # [B, S / k, d_model]
            out_lengths = torch.div(out_lengths + self.downsample - 1, self.downsample, rounding_mode="floor")
        else:
            x = self.reduce(x)
        mask = torch.arange(x.shape[1], device=x.device)[None] < out_lengths[:, None]  # [B, S]
        return Context(self.drop(x), mask)


class WaveformProcessor(Processor):
    """path -> mono waveform [samples] at the bundle's rate; collate pads them and gives their lengths."""

    length_unit = "frames (10 ms)"  # as the filterbank encoder's: the speech recipes' budgets carry over
    unit_seconds = 0.01

    def __init__(self, sample_rate: int):
        self.sample_rate = int(sample_rate)

    def __call__(self, raw: str) -> torch.Tensor:
        kind, data, rate = load_source(raw)
        if kind != "waveform":
            raise DataError(f"{raw}: precomputed features, but encoder=ssl_speech reads the raw waveform; point the "
                            "manifest at the audio files, or use encoder=audio for features")
        if data.shape[0] == 0 or not bool(torch.isfinite(data).all()):
            raise DataError(f"{raw}: the audio is empty or holds NaN/infinite samples; remove it or set "
                            "data.skip_invalid=true")
        wave = to_mono(data)
        if rate != self.sample_rate:
            wave = AF.resample(wave, rate, self.sample_rate)
        if wave.shape[0] < 400:  # the feature extractor's first convolution spans 400 samples (25 ms)
            raise DataError(f"{raw}: only {wave.shape[0]} samples at {self.sample_rate} Hz, shorter than 25 ms")
        return wave

    def length(self, raw: str) -> int:
        n_frames = getattr(raw, "n_frames", None)
        return int(n_frames) if n_frames is not None else header_frames(raw, self.sample_rate)

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([item.shape[0] for item in items])
        waveform = torch.zeros(len(items), int(lengths.max()))  # [B, T]
        for row, item in enumerate(items):
            waveform[row, : item.shape[0]] = item
        return {"waveform": waveform, "lengths": lengths, "mask": torch.arange(waveform.shape[1])[None] < lengths[:, None]}

    def describe_context(self, raw: str, n_positions: int) -> SpectrogramView:
        """The log-mel spectrogram of the waveform, which the context positions cover evenly in time."""
        return SpectrogramView(spectrogram=log_mel_fbank(self(raw), self.sample_rate, 80).numpy(),
                               seconds_per_frame=0.01)


class SSLSpeechPlugin(AudioPlugin):
    """Reads what the `audio` plugin reads (and summarises the files alike for mmx-data)."""

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> SSLSpeechEncoder:
        arch = cfg.get("arch")
        return SSLSpeechEncoder(
            bundle=cfg.get("bundle", "WAV2VEC2_BASE"), pretrained=bool(cfg.get("pretrained", False)),
            weights=cfg.get("weights"), arch=dict(arch) if arch else None, train_layers=cfg.get("train_layers", 0),
            layer_weights=bool(cfg.get("layer_weights", True)), downsample=int(cfg.get("downsample", 2)),
            d_model=int(cfg.get("d_model", 256)), dropout=float(cfg.get("dropout", 0.1)),
        )

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> WaveformProcessor:
        return WaveformProcessor(get_bundle(cfg.get("bundle", "WAV2VEC2_BASE")).sample_rate)


plugin = SSLSpeechPlugin()
