"""Speech the quickstart never saw: small tasks spoken by espeak-ng, trained through the real CLI.

    python recipes/speech_translation/other_tasks.py                         # every task, base recipe
    python recipes/speech_translation/other_tasks.py --tasks words8k digits --recipes quickstart base
    python recipes/speech_translation/other_tasks.py --tasks words8k -- optim.lr=1e-3   # extra overrides
    python recipes/speech_translation/other_tasks.py --generate-only        # just write the data

A measurement script, not part of the package: it needs `espeak-ng` on PATH (`apt-get install espeak-ng`).
Each task is written once to `data/other-speech/<task>/` as audio files plus fairseq manifests
(`train.tsv`, `dev.tsv`, `test.tsv` with id, audio, n_frames, tgt_text, src_text, speaker), then each
recipe trains on it as a user would run it: `mmx-train recipe=speech_translation/<recipe> data.root=...`
plus `data.test=test` (and `data.synthetic=null data.valid=dev` for the quickstart, whose own data is named
otherwise). The table at the end has test WER and BLEU computed from the run's test.hyp, the steps and the
wall time of each run; `--json FILE` appends every row to FILE.

The speech is unlike the quickstart's synthetic syllables: a formant synthesiser with many voices (English
accents, German, French, Spanish, ... voices reading English, male and female variants), speaking rates and
pitches, written at 8 kHz (telephone band), 16 kHz, 44.1 and 48 kHz, with leading and trailing silences,
level changes within an utterance, and background noise (white, pink, mains hum, babble). The voices of
dev and of test are held out of training: every score is on voices the model never heard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# run as a file (python recipes/speech_translation/other_tasks.py), so the runner it shares with the other
# recipes' other_tasks.py is importable only with recipes/ on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: recipes/ is a package
from recipes.other_tasks_common import REPO, print_table, table_row, wall_time  # noqa: E402

DATA = REPO / "data" / "other-speech"

# --- voices ----------------------------------------------------------------------------------------
# A voice is an espeak-ng language (its accent and letter-to-sound rules) plus a variant (timbre, pitch
# range). Three disjoint pools: train, dev and test never share a (language, variant) pair, and the test
# pool adds languages and variants that training never heard at all.
TRAIN_LANGS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "de", "fr", "es", "it", "pl"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f4", "f5", "klatt", "croak", "Alex", "Andrea"]
HELD_OUT_LANGS = ["en-gb-x-gbclan", "nl", "sv", "pt"]
HELD_OUT_VARIANTS = ["m7", "f3", "m8", "Annie", "david"]


@dataclass(frozen=True)
class Voice:
    lang: str
    variant: str
    rate: int  # words per minute
    pitch: int  # 0-99

    @property
    def name(self) -> str:
        return f"{self.lang}+{self.variant}"


def voices(rng: random.Random, pool: str, count: int) -> list[Voice]:
    """`count` voices of the pool: train, dev (train languages, held-out variants) or test (held-out both)."""
    # every test voice has a held-out variant, and most a held-out language too
    langs = {"train": TRAIN_LANGS, "dev": TRAIN_LANGS, "test": HELD_OUT_LANGS * 2 + TRAIN_LANGS[:3]}[pool]
    variants = {"train": TRAIN_VARIANTS, "dev": HELD_OUT_VARIANTS[:2], "test": HELD_OUT_VARIANTS[2:]}[pool]
    chosen, seen = [], set()
    while len(chosen) < count:
        lang, variant = rng.choice(langs), rng.choice(variants)
        if (lang, variant) in seen and len(seen) < len(langs) * len(variants):
            continue
        seen.add((lang, variant))
        chosen.append(Voice(lang, variant, rng.randint(120, 210), rng.randint(25, 75)))
    return chosen


def speak(text: str, voice: Voice, *, rate_jitter: float = 1.0) -> tuple[np.ndarray, int]:
    """espeak-ng's waveform (float32 mono) and its rate (22050 Hz)."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice.name, "-s", str(int(voice.rate * rate_jitter)), "-p",
                        str(voice.pitch), "-w", f.name, text], check=True, capture_output=True)
        wave, rate = sf.read(f.name, dtype="float32")
    return wave, rate


# --- acoustic conditions ---------------------------------------------------------------------------


@dataclass
class Conditions:
    rates: tuple[int, ...] = (16000,)  # each file gets one of these sample rates
    snr_db: tuple[float, float] = (15, 35)
    silence_s: tuple[float, float] = (0.05, 0.6)  # before and after the speech, each
    level_dbfs: tuple[float, float] = (-30, -3)  # peak level of the file
    level_ramp_db: float = 0.0  # the level drifts by up to this much (either way) across the utterance
    telephone: bool = False  # 300-3400 Hz band, as a phone line
    noises: tuple[str, ...] = ("white", "pink", "hum", "babble")


def _noise(kind: str, n: int, rate: int, rng: np.random.Generator, babble: np.ndarray | None) -> np.ndarray:
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":  # 1/f power: white noise shaped in the frequency domain
        spectrum = np.fft.rfft(rng.standard_normal(n))
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, n)
    elif kind == "hum":  # mains hum with harmonics and a little hiss
        t = np.arange(n) / rate
        f0 = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8))
        noise = noise + 0.1 * rng.standard_normal(n)
    else:  # babble: other speech, reversed so that no word of the vocabulary is heard
        noise = np.resize(babble[::-1], n) if babble is not None else rng.standard_normal(n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-9)


def resample(wave: np.ndarray, rate_in: int, rate: int) -> np.ndarray:
    return AF.resample(torch.from_numpy(np.asarray(wave, np.float32)), rate_in, rate).numpy().astype(np.float64)


def telephone_band(wave: np.ndarray, rate: int) -> np.ndarray:
    """300-3400 Hz, as a phone line: two high-pass and two low-pass biquads (24 dB/octave each side)."""
    x = torch.from_numpy(wave.astype(np.float32))
    for _ in range(2):
        x = AF.lowpass_biquad(AF.highpass_biquad(x, rate, 300.0), rate, 3400.0)
    return x.numpy().astype(np.float64)


def render(wave: np.ndarray, rate_in: int, rate: int, cond: Conditions, rng: np.random.Generator,
           babble: np.ndarray | None = None) -> np.ndarray:
    """Speech at `rate` Hz with silences, a level and its drift, a band limit and background noise."""
    speech = resample(wave, rate_in, rate)
    if cond.telephone:
        speech = telephone_band(speech, rate)
    lead, trail = (int(rng.uniform(*cond.silence_s) * rate) for _ in range(2))
    speech = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    if cond.level_ramp_db:
        drift = np.linspace(0, rng.uniform(-cond.level_ramp_db, cond.level_ramp_db), len(speech))
        speech = speech * 10 ** (drift / 20)
    power = np.mean(speech[lead: len(speech) - trail] ** 2) + 1e-12
    noise = _noise(str(rng.choice(cond.noises)), len(speech), rate, rng, babble)
    if cond.telephone:
        noise = telephone_band(noise, rate)
        noise = noise / (np.sqrt(np.mean(noise**2)) + 1e-9)
    mixed = speech + noise * np.sqrt(power / 10 ** (rng.uniform(*cond.snr_db) / 10))
    peak = 10 ** (rng.uniform(*cond.level_dbfs) / 20)
    return (mixed / (np.abs(mixed).max() + 1e-9) * peak).astype(np.float32)


def fbank_frames(samples: int, rate: int) -> int:
    window, shift = int(rate * 0.025), int(rate * 0.010)
    return 0 if samples < window else 1 + (samples - window) // shift


# --- the tasks -------------------------------------------------------------------------------------

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# English command -> German: "turn on the light in the kitchen" -> "schalte das Licht in der Küche ein"
DEVICES = {"light": "das Licht", "radio": "das Radio", "heating": "die Heizung", "fan": "den Ventilator",
           "television": "den Fernseher", "music": "die Musik"}
ROOMS = {"kitchen": "in der Küche", "bedroom": "im Schlafzimmer", "bathroom": "im Bad",
         "living room": "im Wohnzimmer", "garden": "im Garten", "office": "im Büro"}
OPENABLE = {"door": "die Tür", "window": "das Fenster", "garage": "die Garage", "curtains": "die Vorhänge"}


def command(rng: random.Random) -> tuple[str, str]:
    """(English command, German translation); German moves the particle to the end and inflects."""
    room = rng.choice([None, *ROOMS]) if rng.random() < 0.7 else None
    where_en, where_de = (f" in the {room}", f" {ROOMS[room]}") if room else ("", "")
    if rng.random() < 0.65:
        device, on = rng.choice(list(DEVICES)), rng.random() < 0.5
        en = f"turn {'on' if on else 'off'} the {device}{where_en}"
        de = f"schalte {DEVICES[device]}{where_de} {'ein' if on else 'aus'}"
    else:
        thing, opening = rng.choice(list(OPENABLE)), rng.random() < 0.5
        en = f"{'open' if opening else 'close'} the {thing}{where_en}"
        de = f"{'öffne' if opening else 'schließe'} {OPENABLE[thing]}{where_de}"
    if rng.random() < 0.3:
        en, de = "please " + en, de + " bitte"
    return en, de[0].upper() + de[1:] + "."


@dataclass
class Task:
    name: str
    about: str
    sizes: dict[str, int]  # utterances per split
    voices: dict[str, int]  # voices per split
    conditions: Conditions
    kind: str = "asr"  # asr: target = transcript (WER); st: target = translation (BLEU)
    audio_format: str = "wav"
    make: object = None  # rng -> (spoken text, target text)
    notes: dict = field(default_factory=dict)


def _word(rng):
    w = rng.choice(WORDS)
    return w, w


def _digits(rng):
    spoken = " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 5)))
    return spoken, spoken


TASKS = {
    "words8k": Task("words8k", "ten isolated words (yes/no/up/...), telephone band at 8 kHz, transcript targets",
                    {"train": 500, "dev": 100, "test": 200}, {"train": 50, "dev": 10, "test": 20},
                    Conditions(rates=(8000,), snr_db=(10, 30), silence_s=(0.1, 0.8), telephone=True), make=_word),
    "commands16k": Task("commands16k", "spoken home commands at 16 kHz -> German translation (src_text: English)",
                        {"train": 1000, "dev": 100, "test": 200}, {"train": 60, "dev": 10, "test": 20},
                        Conditions(rates=(16000,), snr_db=(15, 35)), kind="st", audio_format="flac",
                        make=command),
    "digits44k": Task("digits44k", "3-5 spoken digits, files at 44.1 and 48 kHz, transcript targets",
                      {"train": 1000, "dev": 100, "test": 200}, {"train": 60, "dev": 10, "test": 20},
                      Conditions(rates=(44100, 48000), snr_db=(15, 35)), make=_digits),
    "noisy": Task("noisy", "the ten words at 16 and 48 kHz, 0-15 dB SNR, -45..-3 dBFS, level drifting ±12 dB",
                  {"train": 500, "dev": 100, "test": 200}, {"train": 50, "dev": 10, "test": 20},
                  Conditions(rates=(16000, 48000), snr_db=(0, 15), silence_s=(0.2, 1.2), level_dbfs=(-45, -3),
                             level_ramp_db=12), make=_word),
}


def write_task(task: Task, root: Path, seed: int = 1) -> Path:
    """Audio files and fairseq manifests of one task under root (kept if already complete)."""
    stamp = root / "DONE"
    if stamp.is_file():
        return root
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rng, arng = random.Random(seed), np.random.default_rng(seed)
    babble, babble_rate = speak("the quick brown fox jumps over the lazy dog while seven bakers sing", Voice("en", "m3", 190, 50))
    babble = {rate: resample(babble, babble_rate, rate) for rate in task.conditions.rates}
    for split, size in task.sizes.items():
        pool = voices(random.Random(f"{seed}-{split}"), split, task.voices[split])
        rows = ["id\taudio\tn_frames\ttgt_text\tsrc_text\tspeaker"]
        for i in range(size):
            spoken, target = task.make(rng)
            voice = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
            wave, rate_in = speak(spoken, voice, rate_jitter=rng.uniform(0.85, 1.15))
            rate = rng.choice(task.conditions.rates)
            audio = render(wave, rate_in, rate, task.conditions, arng, babble[rate])
            utt = f"{split}_{i:05d}"
            path = root / "clips" / f"{utt}.{task.audio_format}"
            sf.write(path, audio, rate, subtype="PCM_16")
            rows.append(f"{utt}\tclips/{path.name}\t{fbank_frames(len(audio), rate)}\t{target}\t{spoken}\t{voice.name}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    stamp.write_text(f"seed={seed}\n")
    return root


# --- training through the CLI and scoring ----------------------------------------------------------


def score(run: Path, root: Path) -> dict:
    """Test WER and BLEU of the run's test.hyp against the manifest's targets."""
    sys.path.insert(0, str(REPO))
    from mmxattn.metrics import corpus_bleu, word_error_rate

    refs = [line.split("\t")[3] for line in (root / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    hyps = (run / "test.hyp").read_text(encoding="utf-8").splitlines()
    exact = sum(h.strip().lower().rstrip(".") == r.strip().lower().rstrip(".") for h, r in zip(hyps, refs))
    return {"wer": round(word_error_rate(hyps, [[r] for r in refs]).value, 2),
            "bleu": round(corpus_bleu(hyps, [[r] for r in refs]).value, 2),
            "exact": round(100 * exact / len(refs), 1)}


def train(task: Task, root: Path, recipe: str, extra: list[str], tag: str) -> dict:
    name = f"other-{task.name}-{recipe.replace('/', '-')}{'-' + tag if tag else ''}"
    command = ["mmx-train", f"recipe=speech_translation/{recipe}", f"data.root={root}", f"name={name}", "data.test=test"]
    if recipe == "quickstart":  # its own data is generated, and its validation manifest is valid.tsv
        command += ["data.synthetic=null", "data.valid=dev"]
    command += extra
    started = time.monotonic()
    log = DATA / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    text = log.read_text(errors="replace")
    found = re.findall(r"exported (\S+)/model\.pt", text)
    row = {"task": task.name, "recipe": recipe, "overrides": " ".join(extra), "rc": rc, "wall_s": round(wall),
           "log": str(log)}
    if rc == 0 and found:
        run = Path(found[-1])
        results = json.loads((run / "results.json").read_text())
        row.update(score(run, root), steps=results.get("global_step"), run=str(run))
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--recipes", nargs="+", default=["base"])
    parser.add_argument("--tag", default="", help="added to the run name")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--json", type=Path, help="append each result row to this file (JSON lines)")
    parser.add_argument("overrides", nargs="*", help="extra mmx-train overrides (after --)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        root = write_task(task, DATA / name)
        if args.generate_only:
            print(f"{name}: {root}")
            continue
        for recipe in args.recipes:
            row = train(task, root, recipe, args.overrides, args.tag)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    if rows:
        table = [table_row([r["task"], r["recipe"], r["overrides"] or "-", r.get("wer", "failed"), r.get("bleu", "-"),
                            r.get("exact", "-"), r.get("steps", "-"), wall_time(r["wall_s"])]) for r in rows]
        print_table(["task", "recipe", "overrides", "test WER", "test BLEU", "exact", "steps", "wall"], table, left=3)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
