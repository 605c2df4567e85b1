"""Cross-attention maps: the weights are right (sum to 1, zero on padding, equal a written-out reference,
the same as during decoding), and mmx-attend writes a PNG, a table and the raw weights for every modality."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mmxattn import attention, registry
from mmxattn.viz.attention_maps import AttentionMapper, cross_attention, encode_with_spans, reduce_weights
from mmxattn.viz.attention_plots import figure_size
from mmxattn.checkpoint import export_model
from mmxattn.cli import attend
from mmxattn.context import Context
from mmxattn.generation import GenerationConfig, generate
from mmxattn.model import build_model
from mmxattn.tokenizer import BOS, EOS, Tokenizer, Tokenizers

SENTENCES = ["the cat sat on the mat", "a dog runs in the park", "two birds fly over a river",
             "the red ball is near the house", "a small girl reads a long book"]
DECODER = {"d_model": 16, "num_layers": 2, "num_heads": 2, "ffn_dim": 32, "dropout": 0.0, "tie_embeddings": True}
TEXT = {"name": "text", "d_model": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32, "dropout": 0.0}
IMAGE = {"name": "image_timm", "model_name": "resnet10t", "weights": None, "model_kwargs": {}, "freeze": "none",
         "prefix_tokens": "drop", "data_config": {"input_size": [3, 64, 64], "crop_pct": 1.0, "crop_mode": "squash"}}
AUDIO = {"name": "audio", "sample_rate": 16000, "num_mel_bins": 40, "cmvn": "utterance", "specaugment": None,
         "conv_channels": 16, "conv_kernel_sizes": [5, 5], "d_model": 16, "num_layers": 1, "num_heads": 2,
         "ffn_dim": 32, "dropout": 0.0}
GREEDY = {"strategy": "greedy", "max_len": 6}


@pytest.fixture(scope="module")
def tokenizers():
    return Tokenizers(Tokenizer.train(SENTENCES * 4, vocab_size=40))


def make_mapper(tokenizers, encoders: dict, seed: int = 0) -> AttentionMapper:
    cfg = {"decoder": DECODER, "generation": GREEDY}
    if list(encoders) == ["src"]:
        cfg["encoder"] = encoders["src"]
    else:
        cfg["encoders"] = encoders
    cfg = OmegaConf.create(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg, tokenizers).eval()
    return AttentionMapper(model, tokenizers, cfg)


@pytest.fixture(scope="module")
def text_mapper(tokenizers):
    return make_mapper(tokenizers, {"src": TEXT})


def teacher_forcing_batch(mapper, texts, max_len=6):
    processor = mapper.processors["src"]
    inputs = {"src": processor.collate([processor(t) for t in texts])}
    context, spans = encode_with_spans(mapper.model, inputs)
    tokens = torch.randint(4, 40, (len(texts), max_len))
    tokens[:, 0] = BOS
    return context, tokens


# --------------------------------------------------------------------------------------------------
# The weights


def test_weights_sum_to_one_over_real_positions_and_are_zero_on_padding(text_mapper):
    context, tokens = teacher_forcing_batch(text_mapper, ["the cat", "a dog runs in the park near a river", "two"])
    mask = context.mask  # [N, S]
    assert not bool(mask.all()), "the batch must have padding for this test"
    weights = cross_attention(text_mapper.model, context, tokens)  # [L, N, H, T, S]
    assert weights.shape[:2] == (DECODER["num_layers"], 3) and weights.shape[2] == DECODER["num_heads"]
    padded = ~mask[None, :, None, None, :].expand_as(weights)
    assert bool((weights[padded] == 0).all())  # exactly zero, not just small
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-6, rtol=0)

    maps = text_mapper(["the cat", "a dog runs in the park near a river", "two"])
    for amap, length in zip(maps, mask.sum(1).tolist()):
        assert amap.weights.shape[-1] == length == len(amap.context_labels)
        torch.testing.assert_close(amap.weights.sum(-1), torch.ones(amap.weights.shape[:-1]), atol=1e-6, rtol=0)


def reference_cross_attention(decoder, tokens: torch.Tensor, context: Context) -> list[torch.Tensor]:
    """The decoder written out in float64 with plain matmuls and softmax, head by head: [L] × [N, H, T, S]."""
    d, h = decoder.d_model, decoder.layers[0].cross_attn.num_heads
    dh = d // h
    n, t = tokens.shape

    def linear(module, x):
        return x @ module.weight.double().T + module.bias.double()

    def norm(module, x):
        return torch.nn.functional.layer_norm(x, (d,), module.weight.double(), module.bias.double(), module.eps)

    def attend(q, k, v, allowed):  # q [N,T,D], k/v [N,S,D], allowed [N,T,S] -> out [N,T,D], weights [N,H,T,S]
        outs, all_weights = [], []
        for head in range(h):
            cols = slice(head * dh, (head + 1) * dh)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(dh)
            weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
            outs.append(weights @ v[..., cols])
            all_weights.append(weights)
        return torch.cat(outs, -1), torch.stack(all_weights, 1)

    x = decoder.embed.weight.double()[tokens] * decoder.embed_scale + decoder.positions[:t].double()
    states = context.states.double()
    causal = torch.ones(t, t, dtype=torch.bool).tril().expand(n, t, t)
    cross_allowed = context.mask[:, None, :].expand(n, t, -1)
    result = []
    for layer in decoder.layers:
        qkv = linear(layer.self_attn.qkv_proj, norm(layer.norm_self, x))
        out, _ = attend(qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :], causal)
        x = x + linear(layer.self_attn.out_proj, out)
        q = linear(layer.cross_attn.q_proj, norm(layer.norm_cross, x))
        kv = linear(layer.cross_attn.kv_proj, states)
        out, weights = attend(q, kv[..., :d], kv[..., d:], cross_allowed)
        result.append(weights)
        x = x + linear(layer.cross_attn.out_proj, out)
        hidden = norm(layer.norm_ffn, x)
        ffn = layer.ffn
        x = x + linear(ffn[3], torch.nn.functional.gelu(linear(ffn[0], hidden)))
    return result


def test_weights_equal_a_written_out_reference(text_mapper):
    context, tokens = teacher_forcing_batch(text_mapper, ["the cat sat", "a dog runs in the park", "birds"])
    weights = cross_attention(text_mapper.model, context, tokens)
    reference = torch.stack(reference_cross_attention(text_mapper.model.decoder, tokens, context))
    torch.testing.assert_close(weights.double(), reference, atol=1e-5, rtol=1e-4)


def test_weights_are_what_the_decoder_read_while_generating(text_mapper):
    """Teacher forcing the greedy output reproduces the weights of the incremental decode, step by step."""
    texts = ["the cat sat on the mat", "two birds"]
    (a, b) = text_mapper(texts, GenerationConfig(**GREEDY))
    processor = text_mapper.processors["src"]
    for amap, text in zip((a, b), texts):
        context = text_mapper.model.encode({"src": processor.collate([processor(text)])})
        state = text_mapper.model.decoder.start(context)
        steps = []
        for token in [BOS] + amap.tokens[:-1]:
            _, weights = text_mapper.model.decoder.step(torch.tensor([[token]]), state, need_weights=True)
            steps.append(torch.stack(weights)[:, 0, :, 0])  # [L, H, S]
        torch.testing.assert_close(torch.stack(steps, 2), amap.weights, atol=1e-5, rtol=1e-5)


def test_a_padded_batch_gives_each_input_its_own_map(text_mapper):
    texts = ["the cat", "a dog runs in the park near the red house", "two birds fly"]
    together = text_mapper(texts, batch_size=3)
    for text, amap in zip(texts, together):
        (alone,) = text_mapper([text])
        assert alone.tokens == amap.tokens
        torch.testing.assert_close(alone.weights, amap.weights, atol=1e-5, rtol=1e-5)


def test_beam_rank_picks_that_hypothesis(text_mapper):
    gen = GenerationConfig(strategy="beam", beam_size=3, nbest=2, max_len=6)
    text = "a dog runs in the park"
    processor = text_mapper.processors["src"]
    context = text_mapper.model.encode({"src": processor.collate([processor(text)])})
    hyps = generate(text_mapper.model.decoder, context, gen)[0]
    for rank in (0, 1):
        (amap,) = text_mapper([text], gen, rank=rank)
        assert amap.tokens == hyps[rank].tokens + [EOS]
        assert amap.score == pytest.approx(hyps[rank].score)
    with pytest.raises(Exception, match="rank=2"):
        text_mapper([text], gen, rank=2)


def test_layer_and_head_choices(text_mapper):
    (amap,) = text_mapper(["the red ball"])
    w = amap.weights  # [L, H, T, S]
    torch.testing.assert_close(amap.select(1, 0), w[1, 0])
    torch.testing.assert_close(amap.select("mean", 1), w[:, 1].mean(0))
    torch.testing.assert_close(amap.select(0, "mean"), w[0].mean(0))
    torch.testing.assert_close(reduce_weights(w), w.mean(0).mean(0))
    with pytest.raises(Exception, match="layer=5"):
        amap.select(5, 0)


def test_several_sources_are_split(tokenizers):
    mapper = make_mapper(tokenizers, {"first": TEXT, "second": TEXT})
    items = [{"first": "the cat", "second": "a dog runs in the park"}, {"first": "two birds fly", "second": "a"}]
    maps = mapper(items)
    processor = mapper.processors["first"]
    for item, amap in zip(items, maps):
        first, second = amap.sources
        assert (first.name, second.name) == ("first", "second")
        assert first.start == 0 and first.end == second.start and second.end == amap.weights.shape[-1]
        assert first.end - first.start == len(processor(item["first"]))  # real positions of each source
        assert second.end - second.start == len(processor(item["second"]))
        assert amap.context_labels[first.end].startswith("second:")
        torch.testing.assert_close(amap.weights.sum(-1), torch.ones(amap.weights.shape[:-1]), atol=1e-6, rtol=0)
        torch.testing.assert_close(amap.select(source="second"), amap.select()[:, second.start : second.end])


def test_no_weights_are_computed_unless_asked(text_mapper, monkeypatch):
    """Decoding and training forward stay on SDPA: the weight-returning path is never entered."""
    context, tokens = teacher_forcing_batch(text_mapper, ["the cat", "a dog runs"])

    def forbidden(*args, **kwargs):
        raise AssertionError("attention weights computed without need_weights")

    monkeypatch.setattr(attention, "attention_weights", forbidden)
    text_mapper.model.decoder(tokens, context)
    generate(text_mapper.model.decoder, context, GenerationConfig(strategy="beam", beam_size=2, max_len=5))
    with pytest.raises(AssertionError, match="without need_weights"):
        cross_attention(text_mapper.model, context, tokens)


# --------------------------------------------------------------------------------------------------
# mmx-attend on tiny models of every modality, on generated data


def write_images(folder: Path) -> list[Path]:
    from PIL import Image, ImageDraw

    paths = []
    for i, color in enumerate(["red", "blue"]):
        image = Image.new("RGB", (80, 60), "white")
        ImageDraw.Draw(image).ellipse((10 + 30 * i, 10, 40 + 30 * i, 50), fill=color)
        paths.append(folder / f"shape{i}.png")
        image.save(paths[-1])
    return paths


def write_audio(folder: Path) -> list[Path]:
    import soundfile as sf

    paths = []
    for i, (freq, seconds) in enumerate([(440, 0.5), (880, 0.3)]):
        t = np.arange(int(16000 * seconds)) / 16000
        paths.append(folder / f"tone{i}.wav")
        sf.write(paths[-1], (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
    return paths


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def check_table(txt: Path, weights: np.ndarray, context_labels: list[str], target_labels: list[str], top: int) -> None:
    """Each row names the target token and its `top` heaviest positions with their weights in percent."""
    rows = [line for line in txt.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    mean = torch.from_numpy(weights).mean(0).mean(0)  # [T, S], as the table's default (mean, mean)
    assert len(rows) == mean.shape[0] == len(target_labels)
    for row, target, w in zip(rows, target_labels, mean):
        head, _, rest = row.partition(" → ")
        assert head == target
        entries = [entry.rsplit(" ", 1) for entry in rest.split(", ")]
        assert len(entries) == min(top, len(context_labels))
        expected = w.topk(len(entries)).values
        for (label, percent), value in zip(entries, expected):
            assert percent == f"{100 * float(value):.0f}%"
            # the named position carries that weight (ties may name another equal position)
            assert any(f"{100 * float(w[i]):.0f}%" == percent for i, lab in enumerate(context_labels) if lab == label)


MODALITIES = {
    "text": (TEXT, lambda folder: None),
    "image_timm": (IMAGE, write_images),
    "audio": (AUDIO, write_audio),
}


@pytest.mark.parametrize("modality", sorted(MODALITIES))
def test_mmx_attend_writes_png_table_and_weights(modality, tokenizers, tmp_path, capsys):
    if modality not in registry.available():
        pytest.skip(f"encoder plugin {modality} is not installed")
    enc_cfg, write_inputs = MODALITIES[modality]
    mapper = make_mapper(tokenizers, {"src": enc_cfg})
    export_model(tmp_path / "model.pt", mapper.model, tokenizers, OmegaConf.to_container(mapper.cfg))
    inputs = write_inputs(tmp_path)
    if inputs is None:
        (tmp_path / "in.txt").write_text("the cat sat on the mat\n\na dog runs\n", encoding="utf-8")
        inputs, stems = [tmp_path / "in.txt"], ["in.1", "in.3"]  # the empty line is skipped
    else:
        stems = [p.stem for p in inputs]
    out = tmp_path / "attention"
    attend.main([str(tmp_path / "model.pt"), *map(str, inputs), "-o", str(out), "--top", "2", "--device", "cpu"])
    assert len(capsys.readouterr().out.splitlines()) == len(stems)

    processor = mapper.processors["src"]
    for stem in stems:
        weights = np.load(out / f"{stem}.npy")
        meta = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        n_layers, n_heads, n_targets, n_positions = weights.shape
        assert (n_layers, n_heads) == (DECODER["num_layers"], DECODER["num_heads"])
        assert len(meta["target_tokens"]) == n_targets and meta["target_tokens"][-1] == "</s>"
        assert len(meta["context_positions"]) == n_positions
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        check_table(out / f"{stem}.txt", weights, meta["context_positions"], meta["target_tokens"], top=2)

        view = processor.describe_context(meta["inputs"]["src"], n_positions)
        if modality == "image_timm":
            assert view.kind == "image" and view.grid == (2, 2) and view.image.shape == (64, 64, 3)
        elif modality == "audio":
            assert view.kind == "spectrogram" and view.spectrogram.shape[1] == AUDIO["num_mel_bins"]
            assert view.spectrogram.shape[0] // 4 <= n_positions <= view.spectrogram.shape[0] // 4 + 1
        else:
            assert view.kind == "tokens" and len(view.labels) == n_positions
        assert png_size(out / f"{stem}.png") == figure_size(view, n_targets, n_positions)


def test_mmx_attend_splits_several_sources_into_pictures(tokenizers, tmp_path, capsys):
    if "image_timm" not in registry.available():
        pytest.skip("encoder plugin image_timm is not installed")
    mapper = make_mapper(tokenizers, {"photo": IMAGE, "note": TEXT})
    export_model(tmp_path / "model.pt", mapper.model, tokenizers, OmegaConf.to_container(mapper.cfg))
    images = write_images(tmp_path)
    (tmp_path / "in.tsv").write_text(f"photo\tnote\n{images[0].name}\tthe red ball\n{images[1].name}\ttwo\n")
    out = tmp_path / "attention"
    attend.main([str(tmp_path / "model.pt"), "--tsv", str(tmp_path / "in.tsv"), "-o", str(out), "--layer", "1",
                 "--head", "0", "--min-len", "3"])
    assert len(capsys.readouterr().out.splitlines()) == 2
    for stem in ("in.2", "in.3"):
        meta = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        assert meta["sources"]["photo"] == {"start": 0, "end": 4, "kind": "image"}
        assert meta["sources"]["note"]["start"] == 4 and meta["sources"]["note"]["kind"] == "tokens"
        for source in ("photo", "note"):
            assert png_size(out / f"{stem}.{source}.png")[0] > 0
        weights = np.load(out / f"{stem}.npy")
        rows = [r for r in (out / f"{stem}.txt").read_text(encoding="utf-8").splitlines() if not r.startswith("#")]
        best = weights[1, 0].argmax(-1)  # layer 1, head 0, as asked
        assert [r.split(" → ")[1].split(" ")[0] for r in rows] == [meta["context_positions"][i] for i in best]
