"""SentencePiece tokenizers, trained from the training text when no model file is given.

The serialized model (bytes) travels inside checkpoints and exports, so inference needs no other file.
Special ids are fixed for every model: pad 0, unk 1, bos 2, eos 3.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from .errors import ConfigError, DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """One SentencePiece model."""

    pad_id, unk_id, bos_id, eos_id = PAD, UNK, BOS, EOS

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise ConfigError(
                "the SentencePiece model must use pad=0, unk=1, bos=2, eos=3 (train it with "
                "--pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3), or let mmxattn train one (tokenizer.model=null)"
            )

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer model file {path} does not exist; fix the path or set it to null to train one")
        return cls(path.read_bytes())

    @classmethod
    def train(
        cls, sentences: Iterable[str], *, vocab_size: int, model_type: str = "unigram", character_coverage: float = 1.0,
        where: str = "the training text", symbols: Sequence[str] = (),
    ) -> "Tokenizer":
        """A model trained on `sentences`; `where` names their files for the errors (an empty text makes
        SentencePiece fail with an internal RuntimeError that says nothing about the data). `symbols` become
        pieces of their own, never split or merged (multitask prompt tags such as <translate>)."""
        sentences = [s for s in sentences if s.strip()]
        if not sentences:
            raise DataError(f"{where}: there is no training text to train the tokenizer on (no non-empty line). "
                            "Check that the training files hold the text, or give a trained model (tokenizer.model)")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
                hard_vocab_limit=False,  # a tiny corpus may not support the requested size
                num_threads=1,  # deterministic: every DDP rank trains the same model
                minloglevel=2,
                **({"user_defined_symbols": list(symbols)} if symbols else {}),
            )
        except RuntimeError as e:
            raise DataError(f"{where}: SentencePiece cannot train a tokenizer on this text ({e}); check the "
                            f"training text and tokenizer.vocab_size={vocab_size}") from e
        return cls(model.getvalue())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def symbol_id(self, symbol: str) -> int | None:
        """The id of a piece that is exactly `symbol` (a prompt tag), None if the model has no such piece."""
        i = self.sp.piece_to_id(symbol)
        return None if i == UNK or self.sp.id_to_piece(i) != symbol else i


class Tokenizers:
    """Source and target tokenizers; `joint` means one shared model (and vocabulary)."""

    def __init__(self, target: Tokenizer, source: Tokenizer | None = None):
        self.target = target
        self.source = source if source is not None else target

    @property
    def joint(self) -> bool:
        return self.source is self.target

    def to_state(self) -> dict:
        state = {"target": self.target.model_proto}
        if not self.joint:
            state["source"] = self.source.model_proto
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Tokenizers":
        target = Tokenizer(state["target"])
        return cls(target, Tokenizer(state["source"]) if "source" in state else None)

    @classmethod
    def build(cls, cfg, source_texts: list[str] | None, target_texts: list[str],
              where: str = "the training split", symbols: Sequence[str] = ()) -> "Tokenizers":
        """From `tokenizer` config: load model files where given, else train on the training text.

        source_texts is None when the source is not text (images, audio): only a target model is built.
        `where` names the training files, for the error when a side has no text. `symbols` (prompt tags) are
        pieces of their own in a trained target model.
        """
        def make(path, texts, vocab_size, side):
            if path:
                return Tokenizer.load(path)
            return Tokenizer.train(texts, vocab_size=vocab_size, model_type=cfg.model_type, where=f"{where} ({side})",
                                   symbols=symbols if side != "sources" else ())

        if source_texts is None:
            return cls(make(cfg.model, target_texts, cfg.vocab_size, "targets"))
        if cfg.joint:
            return cls(make(cfg.model, source_texts + target_texts, cfg.vocab_size, "sources and targets"))
        return cls(make(cfg.model, target_texts, cfg.vocab_size, "targets"),
                   make(cfg.source_model, source_texts, cfg.vocab_size, "sources"))
