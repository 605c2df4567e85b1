"""Audio encoder plugin: waveform -> log-mel filterbanks -> 4x convolutional subsampler -> Transformer encoder.

The features follow fairseq's speech-to-text recipes, so that its prepared data and statistics fit:
80 Kaldi-compatible log-mel filterbanks (25 ms windows every 10 ms) of the waveform at int16 scale,
then utterance (or global) mean/variance normalisation, then SpecAugment in training only (and, if
configured, speed perturbation before the filterbanks). Every file is resampled to `sample_rate`, so that a
bin means one frequency band whatever the file's rate; bins above an upsampled file's Nyquist frequency
(8 kHz telephone speech read at 16 kHz) are set to the normalised mean, 0, rather than left to CMVN, which
would scale the resampler's leakage there up to the loudness of speech. The model is
fairseq's `s2t_transformer`: two stride-2 Conv1d + GLU layers (4x fewer frames: 30 s = 3000 frames ->
750 positions) followed by a pre-norm Transformer encoder.

A raw sample is a path. Besides plain audio files (anything libsndfile reads: wav, flac, ogg, mp3), it
may be one of fairseq's manifest forms: `audio.wav:START:FRAMES` (a slice of a long file, in samples),
`feats.npy` (precomputed features [T, bins]), or `fbank80.zip:OFFSET:BYTES` (an .npy or audio file stored
uncompressed inside a zip, as fairseq's prep scripts write them).
"""

from __future__ import annotations

import io
import math
from collections import Counter
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
import torchaudio.transforms as AT
from torch import nn

from mmxattn.context import Context
from mmxattn.data.samples import check_not_folder
from mmxattn.data.speech import FRAME_LENGTH_S, FRAME_SHIFT_S, fbank_frames, split_fairseq_path
from mmxattn.data.summary import describe_counts, describe_values, read_headers, unreadable_lines
from mmxattn.errors import ConfigError, DataError
from mmxattn.layers import TransformerEncoder, sinusoidal_positions
from mmxattn.registry import EncoderPlugin, Processor

from .views import SpectrogramView

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
NPY_MAGIC = b"\x93NUMPY"
# Sample rates a real recording has. Outside them the header is corrupt, and resampling from it would take
# hours of audio out of a second (1 Hz) or ask torch for terabytes (2**31 Hz) instead of naming the file.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768000


# ---------------------------------------------------------------------------------------------------
# Reading: path -> waveform or precomputed features


def _read_bytes(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise DataError(f"{path}: asked for {size} bytes at offset {offset} but the file ends first; "
                        "the manifest does not match this zip (re-run the data preparation)")
    return data


def _wav_declared_frames(f) -> int | None:
    """Samples per channel that a RIFF/WAVE header's data chunk declares; None when `f` (a binary file at
    offset 0) is not a plain WAV or the size is a streaming placeholder (0 or 0xFFFFFFFF).

    libsndfile quietly shortens a WAV whose data chunk runs past the end of the file to what is there, so a
    file cut in half would read as a shorter recording that no longer matches its transcript.
    """
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    endian = "<" if head[:4] == b"RIFF" else ">"
    block_align = None
    while len(chunk := f.read(8)) == 8:
        name, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
        if name == b"data":
            return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
        if name == b"fmt ":
            body = f.read(size + (size & 1))  # chunks are padded to an even size
            block_align = struct.unpack(endian + "H", body[12:14])[0] if len(body) >= 14 else None
        else:
            f.seek(size + (size & 1), io.SEEK_CUR)
    return None


def _declared_frames(source) -> int | None:
    """The frame count a file's header declares (see `_wav_declared_frames`); None for non-WAV files, whose
    truncation libsndfile reports itself (FLAC: "lost sync")."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
        return _wav_declared_frames(source)
    with open(source, "rb") as f:
        return _wav_declared_frames(f)


def _decode_audio(source, name: str, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """[samples, channels] float32 and the file's sample rate; `source` is a path or a file-like object."""
    try:
        data, rate = sf.read(source, start=start, frames=frames, dtype="float32", always_2d=True)
        declared = _declared_frames(source) if frames < 0 and start == 0 else None
    except Exception as e:  # libsndfile's errors, and anything a damaged file provokes: all the file's fault
        raise DataError(f"{name}: cannot be read as audio ({type(e).__name__}: {e}); "
                        "is it a complete wav/flac/ogg/mp3 file?") from e
    if declared is not None and data.shape[0] < declared:
        raise DataError(f"{name}: truncated: the header says {declared} samples, the file holds {data.shape[0]}; "
                        "copy or export it again, or set data.skip_invalid=true to skip it")
    if frames > 0 and data.shape[0] < frames:
        raise DataError(f"{name}: the slice asks for {frames} samples from sample {start}, but the file holds only "
                        f"{data.shape[0]} from there; the file is truncated or the manifest does not match it")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise DataError(f"{name}: sample rate {rate} Hz in the file header, where recordings have {MIN_SAMPLE_RATE}-"
                        f"{MAX_SAMPLE_RATE} Hz; the header is damaged or this is not a recording")
    return data, rate


def load_source(raw: str) -> tuple[str, torch.Tensor, int | None]:
    """("waveform", [samples, channels], rate) or ("features", [T, bins], None) for one raw sample."""
    path, offset, size = split_fairseq_path(str(raw))
    path = Path(path)
    check_not_folder(path, "an audio file")
    if not path.is_file():
        raise DataError(f"{path}: audio file not found. Check the path (relative paths in a manifest resolve "
                        "against data.audio_root, else the manifest's folder).")
    name = str(raw)
    if path.suffix == ".npy":
        return "features", _load_npy(path, name), None
    if path.suffix == ".zip":  # fairseq: an entry stored uncompressed at OFFSET, BYTES long
        if offset is None:
            raise DataError(f"{name}: a zip needs fairseq's `file.zip:OFFSET:BYTES` form to address one entry")
        data = _read_bytes(path, offset, size)
        if data.startswith(NPY_MAGIC):
            return "features", _load_npy(io.BytesIO(data), name), None
        wave, rate = _decode_audio(io.BytesIO(data), name)
        return "waveform", torch.from_numpy(wave), rate
    # an audio file, or fairseq's slice of one: START and FRAMES in samples
    wave, rate = _decode_audio(path, name, start=offset or 0, frames=size if size is not None else -1)
    return "waveform", torch.from_numpy(wave), rate


def _load_npy(source, name: str) -> torch.Tensor:
    """Precomputed features from an .npy file or bytes; a damaged one is named, whatever numpy raises."""
    try:
        return torch.from_numpy(np.asarray(np.load(source), dtype=np.float32))
    except Exception as e:
        raise DataError(f"{name}: cannot be read as an .npy feature file ({type(e).__name__}: {e})") from e


def header_frames(raw: str, sample_rate: int) -> int:
    """10 ms feature frames of an audio file (or fairseq slice) at `sample_rate`, from its header only; 1 when
    the header cannot be read (loading the file then names the problem)."""
    path, _, size = split_fairseq_path(str(raw))
    try:
        info = sf.info(path)
    except Exception:
        return 1
    samples = size if size is not None else info.frames
    return fbank_frames(math.ceil(samples * sample_rate / info.samplerate), sample_rate)


def to_mono(wave: torch.Tensor) -> torch.Tensor:
    """[samples, channels] -> [samples]: stereo and multichannel audio is averaged down."""
    return wave.mean(dim=1)


def log_mel_fbank(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int) -> torch.Tensor:
    """[samples] mono float in [-1, 1] -> [frames, num_mel_bins] Kaldi-compatible log-mel filterbanks.

    The waveform is scaled to int16 range first, exactly as fairseq's `_get_kaldi_fbank` does, so that
    these features match fbank80.zip files and global CMVN statistics prepared by fairseq.
    """
    return kaldi.fbank(waveform[None] * 32768.0, num_mel_bins=num_mel_bins, sample_frequency=sample_rate)


def mel_centres(sample_rate: int, num_mel_bins: int) -> torch.Tensor:
    """Centre frequency in Hz of each Kaldi mel filter [bins] at this rate (25 ms windows, FFT padded to a power
    of two, 20 Hz to Nyquist, as `log_mel_fbank` computes them).

    A ConfigError if a filter covers no FFT bin (more bins than the rate's frequency resolution allows: that
    feature would be constant, and utterance CMVN would make it zero for every file).
    """
    window = int(sample_rate * FRAME_LENGTH_S)
    padded = 1 << (window - 1).bit_length()
    banks, centres = kaldi.get_mel_banks(num_mel_bins, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    empty = int((banks.sum(dim=1) == 0).sum())  # banks [bins, padded / 2]
    if empty:
        usable = next(n for n in range(num_mel_bins, 0, -1)
                      if not bool((kaldi.get_mel_banks(n, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0,
                                                       1.0)[0].sum(dim=1) == 0).any()))
        raise ConfigError(f"encoder.num_mel_bins={num_mel_bins} at encoder.sample_rate={sample_rate}: {empty} mel filters "
                          f"cover no FFT bin and would always be empty; use at most {usable} bins at this rate")
    return centres.flatten()  # [bins]


def utterance_cmvn(feats: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per bin over the utterance's frames (fairseq's UtteranceCMVN)."""
    centred = feats - feats.mean(dim=0)
    var = (centred**2).mean(dim=0)  # centred first: E[x²] - E[x]² loses precision in float32
    return centred / var.clamp_min(1e-10).sqrt()


def speed_perturb(wave: torch.Tensor, rate: int, factor: float) -> torch.Tensor:
    """[samples] played `factor` times faster (Ko et al. 2015): shorter or longer, pitch and formants shifted
    with it, as a new speaker with a shorter or longer vocal tract would say it. Resampling from rate x factor
    to rate; factors are rounded so that the two rates share a large divisor (fast resampling)."""
    if factor == 1.0:
        return wave
    step = 100 if rate % 100 == 0 else 1
    return AF.resample(wave, int(round(rate * factor / step)) * step, rate)


class SpecAugment:
    """Frequency and time masking (Park et al. 2019) with torchaudio, applied in training only.

    Defaults are fairseq's s2t "LB" policy: one frequency mask of up to 27 bins, one time mask of up to
    100 frames and at most `time_mask_ratio` of the utterance. Masked values become 0, the mean after CMVN.
    """

    def __init__(self, *, freq_mask_param: int = 27, freq_masks: int = 1, time_mask_param: int = 100,
                 time_masks: int = 1, time_mask_ratio: float = 1.0):
        self.freq = [AT.FrequencyMasking(freq_mask_param) for _ in range(freq_masks)]
        self.time = [AT.TimeMasking(time_mask_param, p=time_mask_ratio) for _ in range(time_masks)]

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        spec = feats.T[None].clone()  # [1, bins, frames], the layout torchaudio's maskers expect
        for mask in self.freq + self.time:
            spec = mask(spec)
        return spec[0].T.contiguous()


# ---------------------------------------------------------------------------------------------------
# The processor (runs in DataLoader workers)


class AudioProcessor(Processor):
    """path -> normalised features [frames, bins] (float32); collate pads them and builds the mask."""

    length_unit = "frames (10 ms)"  # what `length` counts, for messages about data.max_len
    unit_seconds = FRAME_SHIFT_S

    def __init__(self, *, sample_rate: int = 16000, num_mel_bins: int = 80, cmvn: str = "utterance",
                 global_cmvn: str | None = None, specaugment: Mapping[str, Any] | None = None,
                 speed_perturb: Sequence[float] | None = None, train: bool = False):
        if cmvn not in ("utterance", "global", "none"):
            raise ConfigError(f"encoder.cmvn={cmvn!r}; expected utterance, global or none")
        self.sample_rate, self.num_mel_bins, self.cmvn = int(sample_rate), int(num_mel_bins), cmvn
        self.centres = mel_centres(self.sample_rate, self.num_mel_bins)  # [bins] Hz; checks that none is empty
        self.global_stats = self._load_global_cmvn(global_cmvn) if cmvn == "global" else None
        # SpecAugment only ever exists in a training processor: validation, test and inference never mask.
        self.specaugment = SpecAugment(**specaugment) if (train and specaugment) else None
        # so does speed perturbation: each training utterance is played at one of these speeds, drawn anew
        self.speeds = [float(f) for f in speed_perturb] if (train and speed_perturb) else None
        if self.speeds and not all(0.5 <= f <= 2.0 for f in self.speeds):
            raise ConfigError(f"encoder.speed_perturb={list(speed_perturb)}: speeds must be within 0.5-2.0, e.g. [0.9, 1.0, 1.1]")

    def _load_global_cmvn(self, path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not path:
            raise ConfigError("encoder.cmvn=global needs encoder.global_cmvn=PATH (an .npz with `mean` and `std`, "
                              "e.g. fairseq's gcmvn.npz); or use encoder.cmvn=utterance")
        try:
            stats = np.load(path)
            mean, std = (torch.as_tensor(stats[k], dtype=torch.float32) for k in ("mean", "std"))
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(f"encoder.global_cmvn={path}: cannot read `mean` and `std` from it ({e})") from e
        if mean.shape != (self.num_mel_bins,) or std.shape != (self.num_mel_bins,):
            raise ConfigError(f"encoder.global_cmvn={path}: statistics of shape {tuple(mean.shape)}, but "
                              f"encoder.num_mel_bins={self.num_mel_bins}")
        return mean, std.clamp_min(1e-8)

    def features(self, raw: str) -> torch.Tensor:
        """Raw log-mel filterbanks [frames, bins] before normalisation."""
        return self._features_and_rate(raw)[0]

    def _features_and_rate(self, raw: str) -> tuple[torch.Tensor, int | None]:
        """Raw log-mel filterbanks [frames, bins] and the file's sample rate (None for precomputed features)."""
        kind, data, rate = load_source(raw)
        if kind == "features":
            if data.dim() != 2 or data.shape[1] != self.num_mel_bins:
                raise DataError(f"{raw}: precomputed features of shape {tuple(data.shape)}; expected "
                                f"[frames, {self.num_mel_bins}] (encoder.num_mel_bins)")
            feats = data
        else:
            if data.shape[0] == 0:
                raise DataError(f"{raw}: the audio has no samples (an empty recording); remove it from the data "
                                "or set data.skip_invalid=true")
            wave = to_mono(data)  # [samples]
            if not bool(torch.isfinite(wave).all()):  # float WAVs can hold them; the features would be NaN
                raise DataError(f"{raw}: the audio holds NaN or infinite sample values (a damaged float WAV?); "
                                "remove it from the data or set data.skip_invalid=true")
            if self.speeds:
                wave = speed_perturb(wave, rate, self.speeds[int(torch.randint(len(self.speeds), ()))])
            if rate != self.sample_rate:
                wave = AF.resample(wave, rate, self.sample_rate)
            if wave.shape[0] < int(self.sample_rate * FRAME_LENGTH_S):
                raise DataError(f"{raw}: only {wave.shape[0]} samples at {self.sample_rate} Hz, shorter than one "
                                f"{FRAME_LENGTH_S * 1000:.0f} ms analysis window")
            feats = log_mel_fbank(wave, self.sample_rate, self.num_mel_bins)
        if feats.shape[0] == 0 or not bool(torch.isfinite(feats).all()):
            raise DataError(f"{raw}: {'no feature frames' if feats.shape[0] == 0 else 'NaN or infinite features'}")
        return feats, rate

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        if self.cmvn == "utterance":
            return utterance_cmvn(feats)
        if self.cmvn == "global":
            mean, std = self.global_stats
            return (feats - mean) / std
        return feats

    def __call__(self, raw: str) -> torch.Tensor:
        feats, rate = self._features_and_rate(raw)
        feats = self.normalize(feats)
        if rate is not None and rate < self.sample_rate and self.cmvn != "none":
            # Upsampled (8 kHz telephone speech at 16 kHz): the bins above the file's Nyquist frequency hold only
            # the resampler's leakage, which utterance CMVN would blow up to the loudness of speech. They are set
            # to the normalised mean, 0: "unknown", as a SpecAugment frequency mask writes it.
            feats[:, self.centres > rate / 2] = 0.0
        if self.specaugment is not None:
            feats = self.specaugment(feats)
        return feats  # [frames, bins]

    def length(self, raw: str) -> int:
        """Feature frames (10 ms each), for bucketing and the `data.max_tokens` budget.

        A manifest's `n_frames` is used when the reader attached it (in 10 ms frames: the reader converts a
        raw-audio manifest's sample counts); otherwise the file header is read, which is cheap but touches the disk.
        """
        n_frames = getattr(raw, "n_frames", None)
        if n_frames is not None:
            return int(n_frames)
        if Path(split_fairseq_path(str(raw))[0]).suffix in (".npy", ".zip"):
            try:
                return int(self.features(raw).shape[0])
            except DataError:  # the processor names the problem when it loads the file
                return 1
        return header_frames(raw, self.sample_rate)

    def describe_context(self, raw: str, n_positions: int) -> SpectrogramView:
        """The log-mel spectrogram (before normalisation) that the context positions cover evenly in time."""
        return SpectrogramView(spectrogram=self.features(raw).numpy(), seconds_per_frame=FRAME_SHIFT_S)

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([item.shape[0] for item in items])
        feats = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])  # [B, T, bins]
        for row, item in enumerate(items):
            feats[row, : item.shape[0]] = item
        return {"features": feats, "mask": torch.arange(feats.shape[1])[None] < lengths[:, None]}  # mask [B, T]


# ---------------------------------------------------------------------------------------------------
# The encoder


class ConvSubsampler(nn.Module):
    """fairseq's Conv1dSubsampler: per layer a stride-2 Conv1d then GLU over channels, halving the frames.

    Positions beyond each row's length are zeroed after every layer, so a padded row encodes exactly as it
    would alone (padding never leaks into real frames through the kernel's reach).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 5)):
        super().__init__()
        n = len(kernel_sizes)
        self.convs = nn.ModuleList(
            nn.Conv1d(in_channels if i == 0 else mid_channels // 2, mid_channels if i < n - 1 else out_channels * 2,
                      k, stride=2, padding=k // 2)
            for i, k in enumerate(kernel_sizes)
        )

    @staticmethod
    def _conv_length(conv: nn.Conv1d, lengths: torch.Tensor) -> torch.Tensor:
        k, p = conv.kernel_size[0], conv.padding[0]
        return torch.div(lengths + 2 * p - k, 2, rounding_mode="floor") + 1  # floor((L + 2p - k) / 2) + 1

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames after subsampling, for input lengths [B]: ceil(L / 2) per layer with the default kernels."""
        for conv in self.convs:
            lengths = self._conv_length(conv, lengths)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x [B, T, F], lengths [B] -> [B, T / 2^layers, D], lengths after subsampling
        x = x.transpose(1, 2)  # [B, F, T]
        for conv in self.convs:
            x = nn.functional.glu(conv(x), dim=1)
            lengths = self._conv_length(conv, lengths)
            x = x * (torch.arange(x.shape[2], device=x.device) < lengths[:, None])[:, None, :].to(x.dtype)
        return x.transpose(1, 2), lengths


class ConformerLayers(nn.Module):
    """torchaudio's Conformer (Gulati et al. 2020, as ESPnet and NeMo use for speech): x [B, S, D] + mask [B, S]."""

    def __init__(self, d_model: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float, kernel_size: int):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"encoder.conformer_kernel_size={kernel_size} must be odd (31 in the Conformer paper)")
        self.conformer = torchaudio.models.Conformer(input_dim=d_model, num_heads=num_heads, ffn_dim=ffn_dim,
                                                     num_layers=num_layers, depthwise_conv_kernel_size=kernel_size,
                                                     dropout=dropout)
        # torchaudio's convolution module has no padding mask: its depthwise convolution would carry padded
        # frames into real ones, so a row's output would depend on its batch. Zero them at that convolution's
        # input, as a sequence's own edges are padded with zeros (BatchNorm's batch statistics in training
        # still see them; in evaluation a row comes out the same alone and in any batch).
        self._padding: torch.Tensor | None = None  # [B, S] True = padding, for the current forward
        for layer in self.conformer.conformer_layers:
            layer.conv_module.sequential[2].register_forward_pre_hook(self._zero_padding)

    def _zero_padding(self, module, args):
        (x,) = args  # [B, C, S]
        return (x.masked_fill(self._padding[:, None, :], 0.0),)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self._padding = ~mask
        try:
            out, _ = self.conformer(x, mask.sum(1))
        finally:
            self._padding = None
        return out


class AudioEncoder(nn.Module):
    """features [B, T, bins] + mask [B, T] -> Context(states [B, T/4, d_model], mask [B, T/4]).

    block: transformer (fairseq's s2t_transformer: pre-norm self-attention layers) or conformer (torchaudio's
    Conformer: feed-forward, self-attention, depthwise convolution, feed-forward per layer)."""

    def __init__(self, *, num_mel_bins: int = 80, conv_channels: int = 1024, conv_kernel_sizes: Sequence[int] = (5, 5),
                 d_model: int = 256, num_layers: int = 12, num_heads: int = 4, ffn_dim: int = 2048,
                 dropout: float = 0.1, scale_input: bool = True, block: str = "transformer",
                 conformer_kernel_size: int = 31):
        super().__init__()
        self.output_dim = d_model
        self.subsample = ConvSubsampler(num_mel_bins, conv_channels, d_model, conv_kernel_sizes)
        # fairseq multiplies the subsampler output by sqrt(d_model) before adding positions
        # (--no-scale-embedding turns that off, which makes the positions relatively stronger)
        self.scale = math.sqrt(d_model) if scale_input else 1.0
        self.drop = nn.Dropout(dropout)
        if block == "transformer":
            self.encoder = TransformerEncoder(d_model, num_layers, num_heads, ffn_dim, dropout)
        elif block == "conformer":
            self.encoder = ConformerLayers(d_model, num_layers, num_heads, ffn_dim, dropout, conformer_kernel_size)
        else:
            raise ConfigError(f"encoder.block={block!r}; expected transformer or conformer")
        self.register_buffer("positions", sinusoidal_positions(1024, d_model), persistent=False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Context:
        feats, mask = batch["features"], batch["mask"]  # [B, T, F], [B, T]
        feats = feats * mask[..., None].to(feats.dtype)
        x, lengths = self.subsample(feats, mask.sum(dim=1))  # [B, S, D], [B]
        length = x.shape[1]
        if length > self.positions.shape[0]:
            self.positions = sinusoidal_positions(2 * length, self.output_dim, device=x.device)
        x = self.drop(x * self.scale + self.positions[:length].to(x.dtype))
        mask = torch.arange(length, device=x.device)[None] < lengths[:, None]  # [B, S]
        return Context(self.encoder(x, mask), mask)


class AudioPlugin(EncoderPlugin):
    input_kind = "path"
    file_extensions = AUDIO_EXTENSIONS

    def build_encoder(self, cfg: Mapping[str, Any], *, tokenizer=None) -> AudioEncoder:
        return AudioEncoder(
            num_mel_bins=cfg.get("num_mel_bins", 80), conv_channels=cfg.get("conv_channels", 1024),
            conv_kernel_sizes=tuple(cfg.get("conv_kernel_sizes", (5, 5))), d_model=cfg.get("d_model", 256),
            num_layers=cfg.get("num_layers", 12), num_heads=cfg.get("num_heads", 4), ffn_dim=cfg.get("ffn_dim", 2048),
            dropout=cfg.get("dropout", 0.1), scale_input=cfg.get("scale_input", True),
            block=cfg.get("block", "transformer"), conformer_kernel_size=int(cfg.get("conformer_kernel_size", 31)),
        )

    def build_processor(self, cfg: Mapping[str, Any], *, tokenizer=None, train: bool = False) -> AudioProcessor:
        specaugment = cfg.get("specaugment")
        return AudioProcessor(
            sample_rate=cfg.get("sample_rate", 16000), num_mel_bins=cfg.get("num_mel_bins", 80),
            cmvn=cfg.get("cmvn", "utterance"), global_cmvn=cfg.get("global_cmvn"),
            specaugment=dict(specaugment) if specaugment else None, speed_perturb=cfg.get("speed_perturb"), train=train,
        )

    def summarize_files(self, files: Sequence[str], cfg: Mapping[str, Any], *, sampled: str) -> list[str]:
        """Durations, sample rates, channels and encodings from the audio headers (soundfile reads only them)."""
        features = [f for f in files if Path(split_fairseq_path(f)[0]).suffix.lower() in (".npy", ".zip")]
        audio = [f for f in files if f not in set(features)]

        def header(raw: str) -> tuple[int, float, int, str]:
            file, _, length = split_fairseq_path(raw)
            info = sf.info(file)
            frames = length if length is not None else info.frames
            return info.samplerate, frames / info.samplerate, info.channels, f"{info.format} {info.subtype}"

        facts, unreadable = read_headers(audio, header)
        lines = []
        if facts:
            rates = Counter(f[0] for f in facts)
            lines.append(f"    audio ({sampled}): duration in s {describe_values([f[1] for f in facts], 2)}")
            lines.append(f"    sample rates: {describe_counts(Counter(f'{r} Hz' for r in rates.elements()))}; channels: "
                         f"{describe_counts(Counter(f[2] for f in facts))}; {describe_counts(Counter(f[3] for f in facts), 3)}")
            wanted = cfg.get("sample_rate")
            if wanted and set(rates) - {int(wanted)}:
                other = sum(n for r, n in rates.items() if r != int(wanted))
                lines.append(f"    {other:,} of {len(facts):,} read are not at encoder.sample_rate={wanted}: resampled "
                             "when loaded (costs time in every epoch; resample the files once to save it)")
        if features:
            lines.append(f"    precomputed features (.npy / .zip entries: no audio header): {len(features):,} of those sampled")
        return lines + unreadable_lines(unreadable, len(files))


plugin = AudioPlugin()
