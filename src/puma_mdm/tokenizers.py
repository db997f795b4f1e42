"""Tokenizers for text tasks: byte-level (the default: no training, no file) and byte-level BPE
trained offline with Hugging Face ``tokenizers`` and saved as ``tokenizer.json`` beside the model.

Both reserve two special ids: ``eos`` (end of a document; also the padding after a target) and
``sep`` (between a prompt and its target). Bytes, not characters, are the base units and nothing
is normalised, so ``decode(encode(text)) == text`` for every string; ``decode`` drops special
ids. The mask id of a model is ``vocab_size``, outside every tokenizer's range.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

from puma_mdm.errors import PumaError

TOKENIZER_FILE = "tokenizer.json"
SPECIALS = ("<eos>", "<sep>")
N_BYTES = 256


class TokenizerError(PumaError):
    """A tokenizer that cannot be trained, read or used as asked."""


class Tokenizer(ABC):
    """Text ↔ token ids. ``kind`` is what ``task.options.tokenizer`` names (``byte``, ``bpe``)."""

    kind: str
    eos_id: int
    sep_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; special ids are dropped."""

    @abstractmethod
    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id stands for (a special id counts as 1, like a line break); used
        to turn a per-token NLL into bits per byte."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def is_special(self, token: int) -> bool:
        return token in (self.eos_id, self.sep_id)


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are the UTF-8 bytes of the text; 256 = ``<eos>``, 257 = ``<sep>``."""

    kind = "byte"
    eos_id = N_BYTES
    sep_id = N_BYTES + 1

    @property
    def vocab_size(self) -> int:
        return N_BYTES + len(SPECIALS)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < N_BYTES).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [1] * self.vocab_size


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style pre-tokenisation, every digit its own piece so numbers are
    spelt digit by digit); ids 0 and 1 are ``<eos>`` and ``<sep>``."""

    kind = "bpe"
    eos_id = 0
    sep_id = 1

    def __init__(self, hf_tokenizer) -> None:
        vocab = hf_tokenizer.get_vocab()
        if [vocab.get(s) for s in SPECIALS] != [self.eos_id, self.sep_id]:
            raise TokenizerError(
                f"tokenizer has no {SPECIALS[0]} / {SPECIALS[1]} tokens at ids 0 / 1; train it "
                "with puma (task.options.tokenizer=bpe)"
            )
        hf_tokenizer.encode_special_tokens = True  # "<eos>" in a text is text, not the id
        self.hf = hf_tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from ``texts`` until the vocabulary has ``vocab_size`` ids (fewer when
        the text has fewer distinct pairs). Deterministic for the same texts."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        minimum = N_BYTES + len(SPECIALS) + 1
        if vocab_size < minimum:
            raise TokenizerError(
                f"BPE vocabulary size {vocab_size} leaves no room for merges; use ≥ {minimum}"
            )
        # Sandboxes fork after training; the Rust thread pool must not be live then.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises its own exception type
            raise TokenizerError(f"{path} is not a tokenizer.json file ({err})") from None
        return cls(hf)

    def to_json(self) -> str:
        return self.hf.to_str(pretty=True)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self) -> list[int]:
        # byte-level BPE pieces spell one byte per character of their vocabulary string
        sizes = [1] * self.vocab_size
        for piece, i in self.hf.get_vocab().items():
            if piece not in SPECIALS:
                sizes[i] = len(piece)
        return sizes
