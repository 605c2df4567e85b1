"""Speech data: the fairseq manifest reader and its bad rows, frame-budget batching, the synthetic set,
WER, the speech recipes (quickstart, base, CoVoST, MuST-C) training a few steps on tiny generated data, CTC on
source transcripts, and files at 8 to 48 kHz."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from mmxattn.checkpoint import load_for_inference
from mmxattn.cli import generate as generate_cli
from mmxattn.data.datamodule import Seq2SeqDataModule
from mmxattn.data.samples import SkipReport
from mmxattn.data.speech import AudioPath, read_speech_tsv
from mmxattn.quickstart.speech import NOUNS, VERBS, write_speech_corpus
from mmxattn.errors import ConfigError, DataError
from mmxattn.metrics import METRICS, normalize_for_wer, word_error_rate
from mmxattn.model import build_model
from mmxattn.registry import get_plugin
from mmxattn.train import train
from mmxattn_encoders.audio import AudioProcessor, log_mel_fbank, mel_centres

from .conftest import TINY, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_speech_corpus(tmp_path_factory.mktemp("speech"), train=24, valid=6, test=6, seed=3)


def data_cfg(root, **values):
    return OmegaConf.create({"root": str(root), "train": "train", "valid": "valid", "skip_invalid": False,
                             "audio_root": None, "target_column": "tgt_text", **values})


def write_manifest(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def wav(path: Path, seconds: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).uniform(-0.3, 0.3, int(16000 * seconds)).astype(np.float32), 16000)
    return path


# --- the manifest reader --------------------------------------------------------------------------


def test_reads_relative_and_absolute_paths_and_optional_columns(tmp_path):
    wav(tmp_path / "clips" / "a.wav")
    absolute = wav(tmp_path / "elsewhere" / "b.wav")
    write_manifest(tmp_path / "train.tsv", "speaker\tid\taudio\tn_frames\tsrc_text\ttgt_text\textra",
                   "s1\tu1\tclips/a.wav\t28\thello there\tHallo da\tx",
                   f"s2\tu2\t{absolute}\t29\tgood day\tGuten Tag\ty",
                   "")  # a trailing blank line is fine
    samples = read_speech_tsv(data_cfg(tmp_path), "train", SkipReport())
    assert [s.target for s in samples] == ["Hallo da", "Guten Tag"]
    assert samples[0].sources["src"] == str(tmp_path / "clips" / "a.wav")
    assert samples[1].sources["src"] == str(absolute)
    assert [s.sources["src"].n_frames for s in samples] == [28, 29]
    assert samples[1].where == f"{tmp_path / 'train.tsv'}:3"

    transcripts = read_speech_tsv(data_cfg(tmp_path, target_column="src_text"), "train", SkipReport())
    assert [s.target for s in transcripts] == ["hello there", "good day"]  # speech recognition targets


def test_audio_root_and_fairseq_zip_paths(tmp_path):
    wav(tmp_path / "audio" / "a.wav")
    (tmp_path / "audio" / "fbank80.zip").write_bytes(b"")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifest(manifests / "train.tsv", "id\taudio\tn_frames\ttgt_text",
                   "u1\ta.wav\t28\tone", "u2\tfbank80.zip:120:3400\t30\ttwo")
    samples = read_speech_tsv(data_cfg(manifests, audio_root=str(tmp_path / "audio")), "train", SkipReport())
    assert samples[0].sources["src"] == str(tmp_path / "audio" / "a.wav")
    assert samples[1].sources["src"] == f"{tmp_path / 'audio' / 'fbank80.zip'}:120:3400"


def test_missing_manifest_and_missing_column(tmp_path):
    write_manifest(tmp_path / "dev.tsv", "id\taudio\tn_frames\ttgt_text")
    with pytest.raises(DataError, match=r"train.tsv: manifest not found.*manifests present: dev.tsv"):
        read_speech_tsv(data_cfg(tmp_path), "train", SkipReport())
    manifest = write_manifest(tmp_path / "train.tsv", "id\taudio\ttgt_text", "u1\ta.wav\thello")
    with pytest.raises(DataError, match=f"{manifest}:1: the header lacks column\\(s\\) n_frames"):
        read_speech_tsv(data_cfg(tmp_path), "train", SkipReport())
    with pytest.raises(DataError, match="lacks column\\(s\\) n_frames, src_text"):
        read_speech_tsv(data_cfg(tmp_path, target_column="src_text"), "train", SkipReport())


def test_bad_rows_name_the_line_or_are_skipped_and_counted(tmp_path):
    wav(tmp_path / "a.wav")
    rows = ["u1\ta.wav\t28\tgood",
            "u2\ta.wav\t28",  # a column short
            "u3\ta.wav\tmany\tbad n_frames",
            "u4\tgone.wav\t28\tmissing audio",
            "u5\ta.wav\t28\t ",  # empty target
            "u6\ta.wav\t28\talso good"]
    manifest = write_manifest(tmp_path / "train.tsv", "id\taudio\tn_frames\ttgt_text", *rows)
    with pytest.raises(DataError, match=f"{manifest}:3: 3 tab-separated fields, but the header has 4"):
        read_speech_tsv(data_cfg(tmp_path), "train", SkipReport())
    for line, message in ((4, "n_frames='many' is not a positive integer"), (5, "gone.wav not found"),
                          (6, "empty tgt_text")):
        write_manifest(manifest, "id\taudio\tn_frames\ttgt_text", rows[0], *["u0\ta.wav\t28\tok"] * (line - 3),
                       rows[line - 2])
        with pytest.raises(DataError, match=f"{manifest}:{line}: .*{message}"):
            read_speech_tsv(data_cfg(tmp_path), "train", SkipReport())

    write_manifest(manifest, "id\taudio\tn_frames\ttgt_text", *rows)
    skipped = SkipReport()
    samples = read_speech_tsv(data_cfg(tmp_path, skip_invalid=True), "train", skipped)
    assert [s.target for s in samples] == ["good", "also good"]
    assert skipped.counts == {"malformed row": 2, "missing audio": 1, "empty target": 1}
    assert f"{manifest}:3" in skipped.summary("samples")


def test_audio_path_keeps_its_frames_through_pickling():
    path = pickle.loads(pickle.dumps(AudioPath("/x/a.wav", 123)))
    assert path == "/x/a.wav" and path.n_frames == 123


# --- datamodule: frame budget, skipping unreadable audio ---------------------------------------------


def speech_cfg(root, tmp_path, *overrides):
    return compose_config(
        ["recipe=speech_translation/quickstart", *TINY, "encoder.conv_channels=16", f"data.root={root}",
         "data.synthetic=null", "data.num_workers=0", "tokenizer.vocab_size=40", *overrides],
        output_dir=tmp_path / "run",
    )


def test_batches_respect_the_frame_budget(corpus, tmp_path):
    module = Seq2SeqDataModule.from_config(speech_cfg(corpus, tmp_path, "data.max_tokens=600"))
    module.prepare(("train",))
    train_set = module.splits["train"]
    assert train_set.sizes == [s.sources["src"].n_frames for s in train_set.samples]  # manifest n_frames
    batches = list(module.loader("train", shuffle=True))
    assert sum(len(b["index"]) for b in batches) == len(train_set)
    for batch in batches:
        features, mask = batch["inputs"]["src"]["features"], batch["inputs"]["src"]["mask"]
        assert features.shape[0] * features.shape[1] <= 600 and features.shape[2] == 80
        assert mask.sum(1).tolist() == [train_set.sizes[i] for i in batch["index"].tolist()]


def test_unreadable_audio_names_the_manifest_line_or_is_skipped(corpus, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(corpus, root)
    (root / "clips" / "train_00002.flac").write_bytes(b"not audio")
    module = Seq2SeqDataModule.from_config(speech_cfg(root, tmp_path))
    module.prepare(("train",))
    with pytest.raises(DataError, match=r"train.tsv:4: .*train_00002.flac: cannot be read as audio"):
        module.splits["train"][2]

    module = Seq2SeqDataModule.from_config(speech_cfg(root, tmp_path, "data.skip_invalid=true"))
    module.prepare(("train",))
    batches = list(module.loader("train", shuffle=False))
    assert sum(b["skipped"] for b in batches) == 1
    assert sum(len(b.get("index", [])) for b in batches) == len(module.splits["train"]) - 1


# --- the synthetic set ----------------------------------------------------------------------------


def test_synthetic_corpus(corpus):
    samples = {split: read_speech_tsv(data_cfg(corpus, valid="valid", test="test"), split, SkipReport())
               for split in ("train", "valid", "test")}
    assert [len(samples[s]) for s in ("train", "valid", "test")] == [24, 6, 6]
    processor = AudioProcessor()
    for sample in samples["valid"]:
        assert processor.length(sample.sources["src"]) == processor(sample.sources["src"]).shape[0]
    header = (corpus / "train.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["id", "audio", "n_frames", "tgt_text", "src_text", "speaker"]
    rows = [line.split("\t") for line in (corpus / "train.tsv").read_text().splitlines()[1:]]
    sources = {row[4] for row in rows}
    assert not sources & {line.split("\t")[4] for line in (corpus / "test.tsv").read_text().splitlines()[1:]}
    for row in rows:  # the verb is in the middle of the spoken sentence and last in the target
        spoken, target = row[4].lower().rstrip(".").split(), row[3].rstrip(".").split()
        assert 0 < [w in VERBS for w in spoken].index(True) < len(spoken) - 1
        assert target[-1] in VERBS.values() and target[0].lower() in NOUNS.values()
    assert write_speech_corpus(corpus, train=24, valid=6, test=6, seed=3) == corpus  # kept, not rewritten


# --- WER ------------------------------------------------------------------------------------------


def test_wer_normalisation_and_value():
    assert "wer" in METRICS
    assert normalize_for_wer("Hello, World! It's 5.") == ["hello", "world", "it's", "5"]
    perfect = word_error_rate(["hello world"], [["Hello, World!"]])
    assert perfect.value == 0.0 and "lc" in perfect.signature
    # one substitution + one deletion over 4 + one insertion over 2 reference words
    assert word_error_rate(["a x c", "p q r"], [["a b c d"], ["p q"]]).value == pytest.approx(100 * 3 / 6)


# --- recipes: compose and train a few steps on tiny generated data -----------------------------------


def fairseq_mustc(corpus: Path, root: Path) -> Path:
    """MuST-C the way fairseq's prep_mustc_data.py leaves it: fbank80.zip of .npy features, *_st.tsv."""
    root.mkdir(parents=True)
    names = {"train": "train_st", "valid": "dev_st", "test": "tst-COMMON_st"}
    with zipfile.ZipFile(root / "fbank80.zip", "w", zipfile.ZIP_STORED) as z:
        for split in names:
            for line in (corpus / f"{split}.tsv").read_text().splitlines()[1:]:
                utt, audio = line.split("\t")[:2]
                wave, rate = sf.read(corpus / audio, dtype="float32")
                buffer = io.BytesIO()
                np.save(buffer, log_mel_fbank(torch.from_numpy(wave), rate, 80).numpy())
                z.writestr(f"{utt}.npy", buffer.getvalue())
    with zipfile.ZipFile(root / "fbank80.zip") as z:
        where = {Path(i.filename).stem: f"fbank80.zip:{i.header_offset + 30 + len(i.filename)}:{i.file_size}"
                 for i in z.infolist()}
    for split, name in names.items():
        lines = (corpus / f"{split}.tsv").read_text().splitlines()
        rows = [[*row[:1], where[row[0]], *row[2:]] for row in (line.split("\t") for line in lines[1:])]
        write_manifest(root / f"{name}.tsv", lines[0], *("\t".join(row) for row in rows))
    return root


def fairseq_covost(corpus: Path, root: Path) -> Path:
    """CoVoST 2 fr-en manifests by fairseq's names (here pointing at audio files, absolute paths)."""
    root.mkdir(parents=True)
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        lines = (corpus / f"{split}.tsv").read_text().splitlines()
        rows = [[*row[:1], str(corpus / row[1]), *row[2:]] for row in (line.split("\t") for line in lines[1:])]
        write_manifest(root / f"{name}_st_fr_en.tsv", lines[0], *("\t".join(row) for row in rows))
    return root


SHORT_RUN = ["trainer=cpu", "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.accumulate_grad_batches=1",
             "trainer.num_sanity_val_steps=0", "trainer.val_check_interval=2", "encoder.conv_channels=16", "data.num_workers=0",
             "data.max_tokens=1500", "optim.warmup_steps=1", "generation.beam_size=2", "generation.max_len=8"]


@pytest.mark.parametrize("recipe", ["covost", "mustc"])
def test_real_data_recipes_train_a_few_steps(recipe, corpus, tmp_path):
    root = (fairseq_covost if recipe == "covost" else fairseq_mustc)(corpus, tmp_path / recipe)
    cfg = compose_config([f"recipe=speech_translation/{recipe}", *TINY, f"data.root={root}", *SHORT_RUN],
                         output_dir=tmp_path / "run")
    assert cfg.encoder.name == "audio" and cfg.data.format == "speech_tsv"
    results = train(cfg)
    assert (tmp_path / "run" / "model.pt").is_file()
    assert "val_bleu" in results and "test_bleu" in results and len((tmp_path / "run" / "test.hyp").read_text().splitlines()) == 6


def test_quickstart_recipe_trains_and_mmx_generate_reads_audio(corpus, tmp_path, capsys):
    cfg = compose_config(["recipe=speech_translation/quickstart", *TINY, f"data.root={corpus}", "data.synthetic=null",
                          "tokenizer.vocab_size=40", *SHORT_RUN], output_dir=tmp_path / "run")
    train(cfg)
    capsys.readouterr()
    clips = sorted((corpus / "clips").glob("test_*.flac"))
    generate_cli.main([str(tmp_path / "run"), str(clips[0]), str(corpus / "clips"), "--beam-size", "2",
                       "--max-len", "6", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(list((corpus / "clips").glob("*.flac")))  # one file + every file of the folder
    assert lines[0].split("\t")[0] == str(clips[0])

    # a manifest: one output per row, labelled with the row's id, in manifest order
    generate_cli.main([str(tmp_path / "run"), str(corpus / "test.tsv"), "--max-len", "6", "--device", "cpu"])
    rows = (corpus / "test.tsv").read_text().splitlines()[1:]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [row.split("\t")[0] for row in rows]
    # the manifest without its target column (new audio to translate): the same reader, targets optional
    unlabelled = tmp_path / "new.tsv"
    lines = (corpus / "test.tsv").read_text().splitlines()
    keep = [i for i, column in enumerate(lines[0].split("\t")) if column != "tgt_text"]
    unlabelled.write_text("".join("\t".join(line.split("\t")[i] for i in keep) + "\n" for line in lines))
    (tmp_path / "clips").symlink_to(corpus / "clips")  # audio paths are relative to the manifest
    generate_cli.main([str(tmp_path / "run"), str(unlabelled), "--max-len", "6", "--device", "cpu"])
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [row.split("\t")[0] for row in rows]
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tn_frames\nx\t10\n")
    model_cfg = load_for_inference(tmp_path / "run", backend="eager")[2]
    with pytest.raises(DataError, match=r"bad.tsv:1: the header lacks column\(s\) audio"):
        generate_cli.read_inputs([str(bad)], get_plugin("audio"), model_cfg.data, "src")


def test_speech_base_recipe_trains_a_few_steps_with_ctc(corpus, tmp_path):
    cfg = compose_config(["recipe=speech_translation/base", *TINY, f"data.root={corpus}", "data.valid=valid",
                          "data.test=test", "tokenizer.vocab_size=40", *SHORT_RUN], output_dir=tmp_path / "run")
    assert cfg.encoder.name == "audio" and cfg.loss.ctc_weight > 0 and cfg.early_stopping.patience
    assert cfg.optim.schedule == "inverse_sqrt" and cfg.data.min_batches_per_epoch
    results = train(cfg)
    assert results["global_step"] == 2 and {"test_bleu", "test_wer"} <= set(results)
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert "train/ctc" in f.readline()  # the CTC part is logged apart from the total


def test_ctc_on_source_transcripts_uses_their_own_tokenizer(corpus, tmp_path):
    """loss.ctc_target=source: src_text in the source tokenizer's pieces (their own model with joint=false)."""
    cfg = speech_cfg(corpus, tmp_path, "loss.ctc_weight=0.3", "loss.ctc_target=source", "tokenizer.joint=false")
    module = Seq2SeqDataModule.from_config(cfg)
    module.prepare(("train",))
    tokenizers = module.tokenizers
    assert not tokenizers.joint
    sample = module.splits["train"].samples[0]
    assert sample.transcript and module.splits["train"].ctc_targets[0] == tokenizers.source.encode(sample.transcript)
    batch = next(iter(module.loader("train", shuffle=False)))
    assert batch["ctc_target"].shape[0] == len(batch["index"]) and (batch["ctc_target"] != 0).any()
    assert build_model(cfg, tokenizers).ctc_head.proj.out_features == len(tokenizers.source)
    module.prepare(("test",))
    assert module.splits["test"].ctc_targets is None  # decoding the test split needs no transcripts

    bare = tmp_path / "bare"  # a manifest without src_text cannot feed it: the row is named
    bare.mkdir()
    for split in ("train", "valid"):
        rows = [line.split("\t") for line in (corpus / f"{split}.tsv").read_text().splitlines()]
        write_manifest(bare / f"{split}.tsv", *("\t".join([*r[:4], r[5]]) for r in rows))
    (bare / "clips").symlink_to(corpus / "clips")
    with pytest.raises(DataError, match=r"train.tsv:2: no source transcript \(src_text\)"):
        Seq2SeqDataModule.from_config(speech_cfg(bare, tmp_path, "loss.ctc_weight=0.3", "loss.ctc_target=source")).prepare(("train",))


# --- sample rates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", [16000, 8000])
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_any_file_rate_gives_frames_at_the_configured_rate(tmp_path, rate, configured):
    """One second at any rate is 98 frames of 10 ms (25 ms windows) at the configured rate, as the manifest's
    n_frames and the processor's length say, and every bin that the file can fill carries signal."""
    t = np.arange(rate) / rate  # a chirp from 100 Hz to below the lower of the two Nyquist frequencies
    top = min(rate, configured) / 2 * 0.9
    wave = 0.3 * np.sin(2 * np.pi * (100 * t + (top - 100) / 2 * t**2)).astype(np.float32)
    path = tmp_path / f"{rate}.wav"
    sf.write(path, wave + 0.001 * np.random.default_rng(0).standard_normal(rate).astype(np.float32), rate)
    processor = AudioProcessor(sample_rate=configured)
    feats = processor(str(path))
    assert feats.shape == (98, 80) and torch.isfinite(feats).all()
    assert processor.length(str(path)) == 98
    assert processor.length(AudioPath(str(path), None)) == 98
    centres = mel_centres(configured, 80)
    below = centres < min(rate, configured) / 2 * 0.85
    assert (feats[:, below].std(0) > 0.1).all()  # nothing silently empty where the file has content
    if rate < configured:  # upsampled: the bins above the file's Nyquist frequency hold nothing of it
        assert (feats[:, centres > rate / 2] == 0).all()


def test_too_many_mel_bins_for_the_rate_is_a_config_error():
    with pytest.raises(ConfigError, match=r"num_mel_bins=128 at encoder.sample_rate=8000: 4 mel filters .* at most 95"):
        AudioProcessor(sample_rate=8000, num_mel_bins=128)
