"""A tokenizer someone else trained, read from disk: a Hugging Face tokenizer directory (what
``tokenizer.save_pretrained(DIR)`` writes: ``tokenizer.json`` plus ``tokenizer_config.json``
naming the special tokens) or a bare ``tokenizer.json``. So a text task can use the tokenizer of
a paper (the PUMA paper used Qwen2's) without training one.

Only the ``tokenizers`` library is needed (no ``transformers``, no network). Text is encoded
without the tokenizer's template (no added ``[CLS]``/``<bos>``), and special-token strings inside
a text stay text. ``decode`` drops special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from puma_mdm.errors import PumaError
from puma_mdm.hf import require

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
SPECIAL_ROLES = ("eos", "sep", "mask", "pad", "bos")


class TokenizerLoadError(PumaError):
    """A tokenizer file or directory that cannot be read, or that does not fit the model."""


def _special_tokens(directory: Path) -> dict[str, str]:
    """Role → token string, from ``tokenizer_config.json`` / ``special_tokens_map.json``."""
    found: dict[str, str] = {}
    for name in CONFIG_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise TokenizerLoadError(f"{path}: not valid JSON ({err})") from None
        for role in SPECIAL_ROLES:
            value = data.get(f"{role}_token")
            if isinstance(value, dict):  # an AddedToken written out in full
                value = value.get("content")
            if isinstance(value, str) and role not in found:
                found[role] = value
    return found


class PretrainedTokenizer:
    """Text ↔ ids with a saved HF tokenizer. ``special`` maps roles (``eos``, ``sep``, ``mask``,
    ``pad``, ``bos``) to token strings; a role without a token has no id."""

    kind = "hf"

    def __init__(self, hf_tokenizer, special: dict[str, str], source: Path) -> None:
        self.hf, self.source, self.special = hf_tokenizer, source, special
        self.hf.encode_special_tokens = True  # "<|endoftext|>" inside a text is text
        self.ids: dict[str, int] = {}
        for role, token in special.items():
            token_id = hf_tokenizer.token_to_id(token)
            if token_id is None:
                raise TokenizerLoadError(
                    f"{source}: its {role} token {token!r} is not in the vocabulary"
                )
            self.ids[role] = token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def mask_id(self) -> int | None:
        return self.ids.get("mask")

    @property
    def eos_id(self) -> int:
        if "eos" not in self.ids:
            raise TokenizerLoadError(
                f"{self.source} names no eos token; save the tokenizer with one "
                "(tokenizer.eos_token = ...; tokenizer.save_pretrained(DIR))"
            )
        return self.ids["eos"]

    @property
    def sep_id(self) -> int:
        """The prompt/target separator: the ``sep`` token, else ``eos``."""
        return self.ids.get("sep", self.eos_id)

    def is_special(self, token: int) -> bool:
        return token in self.ids.values()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes per id (special ids count 1), to turn a per-token NLL into bits per byte.
        Byte-level vocabularies spell one byte per character; others are decoded id by id."""
        from tokenizers import decoders

        if isinstance(self.hf.decoder, decoders.ByteLevel):
            sizes = [1] * self.vocab_size
            for piece, token_id in self.hf.get_vocab().items():
                sizes[token_id] = max(1, len(piece))
        else:
            pieces = self.hf.decode_batch([[i] for i in range(self.vocab_size)])
            sizes = [max(1, len(piece.encode("utf-8"))) for piece in pieces]
        for token_id in self.ids.values():
            sizes[token_id] = 1
        return sizes

    def to_json(self) -> str:
        return self.hf.to_str(pretty=True)

    def config_json(self) -> str:
        """The special-token roles as a ``tokenizer_config.json``: written beside
        :meth:`to_json`'s ``tokenizer.json``, :func:`load_tokenizer` reads the pair back."""
        return json.dumps({f"{role}_token": token for role, token in self.special.items()})


def load_tokenizer(path: str | Path) -> PretrainedTokenizer:
    """A tokenizer from an HF tokenizer directory or a ``tokenizer.json`` file."""
    tokenizers = require("tokenizers", "a tokenizer from disk (--tokenizer)")
    path = Path(path)
    if path.is_dir():
        file, special = path / TOKENIZER_FILE, _special_tokens(path)
        if not file.is_file():
            raise TokenizerLoadError(
                f"{path} has no {TOKENIZER_FILE}; write one with a fast tokenizer: "
                "AutoTokenizer.from_pretrained(...).save_pretrained(DIR)"
            )
    elif path.is_file():
        file, special = path, _special_tokens(path.parent)
    else:
        raise TokenizerLoadError(f"no tokenizer directory or file {path}")
    try:
        hf = tokenizers.Tokenizer.from_file(str(file))
    except Exception as err:  # the Rust side raises its own exception type
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TokenizerLoadError(f"{file} is not a tokenizer.json file ({first})") from None
    return PretrainedTokenizer(hf, special, path)


def check_vocabulary(
    tokenizer: PretrainedTokenizer, embeddings: int, mask_id: int | None, model: str
) -> None:
    """The model must embed every id the tokenizer makes (``embeddings`` rows; more rows are
    fine: vocabularies are often padded), and agree on the mask token when both name one."""
    if tokenizer.vocab_size > embeddings:
        raise TokenizerLoadError(
            f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but model {model} "
            f"embeds only {embeddings}: use the model's own tokenizer, or grow the model first "
            "(model.resize_token_embeddings(len(tokenizer)); model.save_pretrained(DIR))"
        )
    if mask_id is not None and tokenizer.mask_id is not None and mask_id != tokenizer.mask_id:
        raise TokenizerLoadError(
            f"model {model} uses mask token id {mask_id} but tokenizer {tokenizer.source} has its "
            f"mask token at id {tokenizer.mask_id}: they are not a pair; use the model's tokenizer"
        )
