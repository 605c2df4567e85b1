"""A small synthetic speech translation set for the quickstart, generated on the user's machine.

A spoken "language" of 15 one-syllable words, each an onset (silence, a low or a high hiss) followed by
a vowel (a harmonic tone shaped by two formants, like the vowels /i e a o u/). Utterances are short
sentences ("big dog chases small cat") said by ten synthetic speakers who differ in pitch, vocal-tract
length (formant scale), voice brightness and speaking rate, with per-word pitch glides, varying word and
pause durations and background noise at 12-30 dB SNR. The targets are in an invented language with a
different word order: subject-object-verb, adjectives after nouns, and an object particle
("Karo grand mizu pik ko casas."). Learning it needs acoustic word recognition and reordering.

The set is written the way real data arrives: FLAC files under clips/ and fairseq speech-to-text
manifests `{train,valid,test}.tsv` (id, audio, n_frames, tgt_text, src_text, speaker), so the real
manifest reader and audio loader run.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import soundfile as sf

from . import stamp

SAMPLE_RATE = 16000

# English gloss -> target word; the order of each list fixes the word's sound (see _word_sounds)
NOUNS = {"cat": "mizu", "dog": "karo", "bird": "pilo", "fish": "peska", "horse": "dravi", "child": "bimo"}
ADJECTIVES = {"big": "grand", "small": "pik", "red": "rub", "old": "vek"}
VERBS = {"sees": "vidas", "likes": "amas", "chases": "casas", "finds": "trovas", "hears": "audas"}
OBJECT_PARTICLE = "ko"

VOWELS = [(280, 2250), (500, 1850), (750, 1200), (500, 850), (300, 750)]  # (F1, F2) in Hz: i e a o u
ONSETS = [None, (1800, 3500), (4500, 7500)]  # silence, or a hiss in this band (Hz): "sh"-like, "s"-like


def _word_sounds() -> dict[str, tuple[tuple[int, int] | None, tuple[int, int]]]:
    """Each of the 15 spoken words gets its own (onset, vowel) pair."""
    words = [*NOUNS, *ADJECTIVES, *VERBS]
    return {word: (ONSETS[i // len(VOWELS)], VOWELS[i % len(VOWELS)]) for i, word in enumerate(words)}


WORD_SOUNDS = _word_sounds()


def make_sentence(rng: random.Random) -> tuple[list[str], str]:
    """(spoken words, target text): "[adj] noun verb [adj] noun" -> "Noun [adj] noun [adj] ko verb."."""
    def noun_phrase():
        noun = rng.choice(list(NOUNS))
        adjective = rng.choice(list(ADJECTIVES)) if rng.random() < 0.5 else None
        spoken = ([adjective] if adjective else []) + [noun]
        target = [NOUNS[noun]] + ([ADJECTIVES[adjective]] if adjective else [])
        return spoken, target

    subject, subject_xx = noun_phrase()
    obj, obj_xx = noun_phrase()
    verb = rng.choice(list(VERBS))
    target = " ".join(subject_xx + obj_xx + [OBJECT_PARTICLE, VERBS[verb]])
    return subject + [verb] + obj, target.capitalize() + "."


def make_speakers(rng: random.Random, count: int = 10) -> list[dict]:
    return [
        {"f0": rng.uniform(95, 230), "formant_scale": rng.uniform(0.9, 1.1), "tilt": rng.uniform(0.8, 1.5),
         "rate": rng.uniform(0.8, 1.25)}
        for _ in range(count)
    ]


def _hiss(rng: np.random.Generator, band: tuple[int, int], samples: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0
    noise = np.fft.irfft(spectrum, samples)
    return noise / (np.abs(noise).max() + 1e-9)


def _vowel(rng: np.random.Generator, formants: tuple[int, int], speaker: dict, seconds: float) -> np.ndarray:
    """Harmonics of a gliding pitch, weighted by formant resonances (additive source-filter synthesis)."""
    n = int(seconds * SAMPLE_RATE)
    start, end = speaker["f0"] * rng.uniform(0.9, 1.1), speaker["f0"] * rng.uniform(0.85, 1.15)
    f0 = np.linspace(start, end, n)  # [n]
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    harmonics = np.arange(1, int(5000 / f0.min()) + 1)[:, None]  # [K, 1]
    freq = harmonics * f0[None]  # [K, n]
    scale = speaker["formant_scale"]
    resonances = [(formants[0] * scale, 90), (formants[1] * scale, 120), (2600 * scale, 200)]
    gain = sum(1 / np.sqrt(1 + ((freq - centre) / (width / 2)) ** 2) for centre, width in resonances)
    amplitude = gain * harmonics.astype(float) ** -speaker["tilt"] * (freq < SAMPLE_RATE / 2 - 500)
    wave = (amplitude * np.sin(harmonics * phase[None] + rng.uniform(0, 2 * np.pi, (len(harmonics), 1)))).sum(0)
    return wave / (np.abs(wave).max() + 1e-9)


def _envelope(n: int, ramp: int) -> np.ndarray:
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    env[:ramp] = env[n - ramp :][::-1] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    return env


def synthesize(words: list[str], speaker: dict, rng: np.random.Generator) -> np.ndarray:
    """Waveform (float in [-1, 1], SAMPLE_RATE) of the words said by this speaker, with noise."""
    rate = speaker["rate"]
    pieces = [np.zeros(int(rng.uniform(0.03, 0.12) * SAMPLE_RATE))]
    for i, word in enumerate(words):
        onset, formants = WORD_SOUNDS[word]
        if onset is not None:
            n = int(rng.uniform(0.04, 0.07) / rate * SAMPLE_RATE)
            pieces.append(0.35 * _hiss(rng, onset, n) * _envelope(n, n // 4))
        vowel = _vowel(rng, formants, speaker, rng.uniform(0.13, 0.24) / rate)
        pieces.append(vowel * _envelope(len(vowel), int(0.015 * SAMPLE_RATE)))
        if i < len(words) - 1:
            pieces.append(np.zeros(int(rng.uniform(0.03, 0.09) / rate * SAMPLE_RATE)))
    pieces.append(np.zeros(int(rng.uniform(0.03, 0.12) * SAMPLE_RATE)))
    wave = np.concatenate(pieces)
    speech_power = np.mean(wave**2)
    snr_db = rng.uniform(12, 30)
    wave = wave + rng.standard_normal(len(wave)) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return (wave / np.abs(wave).max() * rng.uniform(0.3, 0.9)).astype(np.float32)


def feature_frames(samples: int) -> int:
    """10 ms frames that 25 ms windows give (Kaldi snip_edges), the manifest's n_frames."""
    window, shift = SAMPLE_RATE * 25 // 1000, SAMPLE_RATE // 100
    return 0 if samples < window else 1 + (samples - window) // shift


def write_speech_corpus(root: str | Path, *, train: int = 3000, valid: int = 200, test: int = 200,
                        seed: int = 1234) -> Path:
    """Writes clips and manifests under root (once: an existing complete set with the same recipe is kept).

    Valid and test sentences never occur in training (new word combinations, same vocabulary); training
    sentences may repeat, each time said anew.
    """
    root = Path(root)
    description = f"synthetic-speech v1 seed={seed} train={train} valid={valid} test={test}"
    if stamp.begin(root, description):  # refuses a folder holding anything it did not write
        return root
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    audio_rng = np.random.default_rng(seed)
    speakers = make_speakers(rng)
    held_out: set[str] = set()
    for split, size in (("test", test), ("valid", valid), ("train", train)):
        rows = ["id\taudio\tn_frames\ttgt_text\tsrc_text\tspeaker"]
        while len(rows) <= size:
            words, target = make_sentence(rng)
            source = " ".join(words).capitalize() + "."
            if source in held_out:  # valid/test sentences are unique and never trained on
                continue
            if split != "train":
                held_out.add(source)
            speaker = rng.randrange(len(speakers))
            wave = synthesize(words, speakers[speaker], audio_rng)
            utt = f"{split}_{len(rows) - 1:05d}"
            sf.write(root / "clips" / f"{utt}.flac", wave, SAMPLE_RATE, subtype="PCM_16")
            rows.append(f"{utt}\tclips/{utt}.flac\t{feature_frames(len(wave))}\t{target}\t{source}\tspk{speaker}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    stamp.finish(root, description)
    return root
