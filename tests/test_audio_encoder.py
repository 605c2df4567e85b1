"""The audio plugin: features as torchaudio computes them, fairseq input forms, bad audio, the subsampled
mask, SpecAugment only in training, and a model that learns from it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

from mmxattn import registry
from mmxattn.data.speech import AudioPath
from mmxattn.decoder import TransformerDecoder
from mmxattn.errors import ConfigError, DataError
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import EncoderDecoder
from mmxattn_encoders.audio import AudioEncoder, AudioProcessor, fbank_frames

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

RATE = 16000


def tone(seconds: float, rate: int = RATE, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32)


def write(path, wave, rate=RATE, subtype="FLOAT"):
    sf.write(path, wave, rate, subtype=subtype)
    return str(path)


def direct_fbank(wave: np.ndarray, bins: int = 80) -> torch.Tensor:
    """torchaudio called directly, the fairseq way (int16-scaled waveform)."""
    return kaldi.fbank(torch.from_numpy(wave)[None] * 32768.0, num_mel_bins=bins, sample_frequency=RATE)


def tiny_encoder(bins: int = 80, block: str = "transformer") -> AudioEncoder:
    return AudioEncoder(num_mel_bins=bins, conv_channels=16, d_model=16, num_layers=1, num_heads=2, ffn_dim=32,
                        dropout=0.0, block=block, conformer_kernel_size=7)


# --- plugin contract ------------------------------------------------------------------------------


def test_registered_through_entry_points():
    assert "audio" in registry.available()
    plugin = registry.get_plugin("audio")
    assert plugin.input_kind == "path"
    assert {".wav", ".flac", ".ogg"} <= set(plugin.file_extensions)
    encoder = registry.build_encoder("audio", {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64,
                                               "conv_channels": 32})
    assert encoder.output_dim == 32


# --- features -------------------------------------------------------------------------------------


def test_features_match_torchaudio_called_directly(tmp_path):
    wave = tone(1.0)
    path = write(tmp_path / "a.wav", wave)
    raw = AudioProcessor(cmvn="none")(path)
    torch.testing.assert_close(raw, direct_fbank(wave))
    assert raw.shape == (fbank_frames(len(wave), RATE), 80) == (98, 80)

    expected = direct_fbank(wave)
    expected = (expected - expected.mean(0)) / expected.std(0, unbiased=False)
    torch.testing.assert_close(AudioProcessor(cmvn="utterance")(path), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_other_formats_decode(tmp_path, fmt):
    wave = tone(0.5)
    path = tmp_path / f"a.{fmt}"
    sf.write(path, wave, RATE, format=fmt.upper(), subtype="PCM_16" if fmt == "flac" else "VORBIS")
    feats = AudioProcessor()(str(path))
    assert feats.shape == (48, 80) and torch.isfinite(feats).all()


def test_stereo_is_mixed_down_to_mono(tmp_path):
    left, right = tone(0.5, freq=300), tone(0.5, freq=1200, seed=1)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    torch.testing.assert_close(AudioProcessor(cmvn="none")(path), direct_fbank((left + right) / 2))


def test_other_sample_rates_are_resampled(tmp_path):
    wave8k = tone(1.0, rate=8000)
    path = write(tmp_path / "8k.wav", wave8k, rate=8000)
    resampled = AF.resample(torch.from_numpy(wave8k), 8000, RATE).numpy()
    feats = AudioProcessor(cmvn="none")(path)
    torch.testing.assert_close(feats, direct_fbank(resampled))
    assert feats.shape[0] == 98  # one second at 100 frames/s, as at 16 kHz


def test_global_cmvn(tmp_path):
    wave = tone(0.5)
    path = write(tmp_path / "a.wav", wave)
    mean, std = np.full(80, 3.0, np.float32), np.full(80, 2.0, np.float32)
    np.savez(tmp_path / "gcmvn.npz", mean=mean, std=std)
    feats = AudioProcessor(cmvn="global", global_cmvn=str(tmp_path / "gcmvn.npz"))(path)
    torch.testing.assert_close(feats, (direct_fbank(wave) - 3.0) / 2.0)
    with pytest.raises(ConfigError, match="global_cmvn"):
        AudioProcessor(cmvn="global")
    np.savez(tmp_path / "bad.npz", mean=mean[:40], std=std[:40])
    with pytest.raises(ConfigError, match="num_mel_bins=80"):
        AudioProcessor(cmvn="global", global_cmvn=str(tmp_path / "bad.npz"))


def test_specaugment_masks_in_training_only(tmp_path):
    path = write(tmp_path / "a.wav", tone(2.0))
    policy = {"freq_mask_param": 20, "freq_masks": 2, "time_mask_param": 40, "time_masks": 2}
    plain = AudioProcessor()(path)
    evaluation = AudioProcessor(specaugment=policy, train=False)
    assert evaluation.specaugment is None
    torch.testing.assert_close(evaluation(path), plain)
    torch.testing.assert_close(evaluation(path), plain)  # deterministic: nothing random in eval

    training = AudioProcessor(specaugment=policy, train=True)
    torch.manual_seed(0)
    augmented = [training(path) for _ in range(4)]
    assert any(not torch.equal(a, plain) for a in augmented)
    for a in augmented:  # masking only zeroes values; everything else is untouched
        changed = a != plain
        assert (a[changed] == 0).all()


def test_speed_perturbation_in_training_only(tmp_path):
    """Each training utterance is played at one of the speeds (0.9x lasts 1/0.9 as long); evaluation never."""
    path = write(tmp_path / "a.wav", tone(2.0))
    plain = AudioProcessor()(path)
    assert AudioProcessor(speed_perturb=[0.9, 1.1], train=False)(path).shape == plain.shape == (198, 80)
    training = AudioProcessor(speed_perturb=[0.9, 1.0, 1.1], train=True)
    torch.manual_seed(0)
    assert {training(path).shape[0] for _ in range(12)} == {fbank_frames(n, RATE) for n in (29091, 32000, 35556)}
    with pytest.raises(ConfigError, match="speed_perturb"):
        AudioProcessor(speed_perturb=[0.1], train=True)


# --- fairseq's manifest input forms -----------------------------------------------------------------


def test_slice_npy_and_zip_inputs(tmp_path):
    wave = tone(2.0)
    path = write(tmp_path / "long.wav", wave)
    processor = AudioProcessor(cmvn="none")
    torch.testing.assert_close(processor(f"{path}:8000:16000"), direct_fbank(wave[8000:24000]))

    feats = direct_fbank(wave).numpy()
    np.save(tmp_path / "feats.npy", feats)
    torch.testing.assert_close(processor(str(tmp_path / "feats.npy")), torch.from_numpy(feats))

    # fairseq's fbank80.zip: .npy (or audio) entries stored uncompressed, addressed as zip:OFFSET:BYTES
    npy, flac = io.BytesIO(), io.BytesIO()
    np.save(npy, feats)
    sf.write(flac, wave, RATE, format="FLAC", subtype="PCM_24")
    with zipfile.ZipFile(tmp_path / "fbank80.zip", "w", zipfile.ZIP_STORED) as z:
        z.writestr("utt1.npy", npy.getvalue())
        z.writestr("utt2.flac", flac.getvalue())
    with zipfile.ZipFile(tmp_path / "fbank80.zip") as z:
        where = {i.filename: (i.header_offset + 30 + len(i.filename), i.file_size) for i in z.infolist()}
    zip_path = tmp_path / "fbank80.zip"
    torch.testing.assert_close(processor(f"{zip_path}:%d:%d" % where["utt1.npy"]), torch.from_numpy(feats))
    from_zip = processor(f"{zip_path}:%d:%d" % where["utt2.flac"])
    torch.testing.assert_close(from_zip, direct_fbank(wave), atol=1e-2, rtol=1e-3)  # 24-bit quantisation
    assert processor.length(f"{zip_path}:%d:%d" % where["utt1.npy"]) == feats.shape[0]


def test_length_uses_manifest_frames_or_the_header(tmp_path):
    path = write(tmp_path / "a.wav", tone(3.0, rate=8000), rate=8000)
    processor = AudioProcessor()
    assert processor.length(AudioPath(path, 123)) == 123  # a manifest's n_frames: no file access
    assert processor.length(path) == processor(path).shape[0] == 298


# --- bad input ------------------------------------------------------------------------------------


def test_bad_audio_errors_name_the_file(tmp_path):
    processor = AudioProcessor()
    missing = tmp_path / "missing.wav"
    with pytest.raises(DataError, match=f"{missing}: audio file not found"):
        processor(str(missing))
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF this is not audio at all" * 10)
    with pytest.raises(DataError, match=f"{garbage}: cannot be read as audio"):
        processor(str(garbage))
    empty = write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(DataError, match=f"{empty}: the audio has no samples"):
        processor(empty)
    short = write(tmp_path / "short.wav", np.zeros(100, np.float32))
    with pytest.raises(DataError, match=f"{short}: only 100 samples"):
        processor(short)
    np.save(tmp_path / "wrong.npy", np.zeros((10, 40), np.float32))
    with pytest.raises(DataError, match=r"wrong.npy: precomputed features of shape \(10, 40\)"):
        processor(str(tmp_path / "wrong.npy"))


# --- the encoder ----------------------------------------------------------------------------------


def test_mask_after_subsampling_matches_true_lengths():
    torch.manual_seed(0)
    encoder = tiny_encoder().eval()
    lengths = [1, 2, 3, 4, 5, 37, 100, 401]
    processor = AudioProcessor()
    batch = processor.collate([torch.randn(n, 80) for n in lengths])
    context = encoder(batch)
    expected = [-(-(-(-n // 2)) // 2) for n in lengths]  # ceil(ceil(n / 2) / 2): two stride-2 convs
    assert context.mask.sum(1).tolist() == expected
    assert context.states.shape[1] == max(expected)
    assert context.mask.tolist() == [[i < n for i in range(max(expected))] for n in expected]
    assert encoder.subsample.output_lengths(torch.tensor(lengths)).tolist() == expected


@pytest.mark.parametrize("block", ["transformer", "conformer"])
def test_padding_never_changes_a_row(block):
    """A row encodes the same alone and inside a padded batch (padding never leaks into real frames)."""
    torch.manual_seed(0)
    encoder = tiny_encoder(block=block).eval()
    items = [torch.randn(n, 80) for n in (50, 213, 7)]
    processor = AudioProcessor()
    together = encoder(processor.collate(items))
    for row, item in enumerate(items):
        alone = encoder(processor.collate([item]))
        n = int(alone.mask.sum())
        torch.testing.assert_close(together.states[row, :n], alone.states[0, :n], atol=1e-5, rtol=1e-5)


def _tiny_model(vocab: int = 12) -> EncoderDecoder:
    decoder = TransformerDecoder(vocab_size=vocab, d_model=16, num_layers=1, num_heads=2, ffn_dim=32, dropout=0.0)
    return EncoderDecoder({"src": tiny_encoder()}, decoder)


def test_a_few_training_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    processor = AudioProcessor()
    paths = [write(tmp_path / f"{i}.wav", tone(0.4 + 0.1 * i, freq=200 + 150 * i, seed=i)) for i in range(4)]
    batch = processor.collate([processor(p) for p in paths])
    target = torch.tensor([[2, 4 + i, 5 + i, 3] for i in range(4)])  # BOS, two tokens per utterance, EOS
    model = _tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = model({"src": batch}, target[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_thirty_second_inputs_train_and_decode_in_a_batch():
    """3000 feature frames (30 s) -> 750 positions; training and beam search run on a batch of them."""
    torch.manual_seed(0)
    model = _tiny_model()
    batch = AudioProcessor().collate([torch.randn(3000, 80), torch.randn(2100, 80)])
    target = torch.tensor([[2, 4, 5, 3], [2, 6, 7, 3]])
    logits = model({"src": batch}, target[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten()).backward()
    model.eval()
    with torch.inference_mode():
        context = model.encode({"src": batch})
        assert context.mask.sum(1).tolist() == [750, 525]
        hyps = generate(model.decoder, context, GenerationConfig(strategy="beam", beam_size=3, max_len=6))
    assert len(hyps) == 2 and all(h[0].tokens is not None for h in hyps)
