"""What text-based tasks (math programs, text corpora) share: the tokenizer option, saving a
trained tokenizer beside the model, encoding a prompt, and reading text back out of decoded ids.

**EOS.** Sequences have a fixed length; what follows a target is ``<eos>`` padding (and in a
packed corpus ``<eos>`` separates documents). EOS positions are ordinary targets: they are
outside the prompt, so they count in ``L_eff``, are masked, scored by the loss and revealed by
the PUMA pool and the samplers like any other token (the model must learn where a target ends).
When ids are read back as text, everything from the first ``<eos>`` after the prompt on is
discarded.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from puma_mdm.errors import ConfigError, ModelLoadError
from puma_mdm.tasks.base import Task
from puma_mdm.tokenizers import TOKENIZER_FILE, BPETokenizer, ByteTokenizer, Tokenizer

HF_TOKENIZER_CONFIG = "tokenizer_config.json"  # the special-token roles of an HF tokenizer
MASK_GLYPH = "▒"  # how a still-masked token is shown while a sequence fills in


@dataclass
class TokenizerOptions:
    # byte | bpe (trained on the training split) | one of our tokenizer.json files | a saved
    # Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json; puma-mdm[hf])
    tokenizer: str = "byte"
    bpe_vocab: int = 1024  # vocabulary size of a trained BPE tokenizer

    def __post_init__(self) -> None:
        if not self.tokenizer.strip():
            raise ValueError("tokenizer is empty; give byte, bpe, a tokenizer.json or a directory")

    @property
    def from_hf_directory(self) -> bool:
        return self.tokenizer not in ("byte", "bpe") and not self.tokenizer.endswith(".json")


class TokenizedTask(Task):
    """A task whose sequences are tokenized text. Subclasses give the texts a BPE tokenizer is
    trained on and how a prompt is encoded."""

    needs_prompt: ClassVar[bool] = False  # whether generation must start from a prompt
    _tokenizer: Tokenizer | None = None

    @abstractmethod
    def tokenizer_texts(self) -> Iterator[str]:
        """The training texts a BPE tokenizer learns from."""

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            choice = self.options.tokenizer
            if choice == "byte":
                self._tokenizer = ByteTokenizer()
            elif choice == "bpe":
                self._tokenizer = BPETokenizer.train(self.tokenizer_texts(), self.options.bpe_vocab)
            elif self.options.from_hf_directory:
                if not Path(choice).is_dir():
                    raise ConfigError(
                        f"task.options.tokenizer: {choice!r} is not 'byte', 'bpe', a "
                        "tokenizer.json file or a tokenizer directory"
                    )
                from puma_mdm.hf.tokenizer import load_tokenizer

                self._tokenizer = load_tokenizer(choice)
            else:
                if not Path(choice).is_file():
                    raise ConfigError(f"task.options.tokenizer: no such file {choice}")
                self._tokenizer = BPETokenizer.load(choice)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        """Decoders stop a row once it has generated this id (block and ARM sampling)."""
        return self.tokenizer.eos_id

    def artifacts(self) -> dict[str, str]:
        """Files written beside the weights so the model can be used without the original
        tokenizer source: ``tokenizer.json`` (plus the special-token roles of an HF one)."""
        tok = self.tokenizer
        if isinstance(tok, BPETokenizer):
            return {TOKENIZER_FILE: tok.to_json()}
        if self.options.from_hf_directory:
            return {TOKENIZER_FILE: tok.to_json(), HF_TOKENIZER_CONFIG: tok.config_json()}
        return {}

    def restore(self, directory: Path) -> None:
        if self.options.tokenizer == "byte":
            return
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise ModelLoadError(f"{directory} has no {TOKENIZER_FILE}, which its model needs")
        if self.options.from_hf_directory:
            from puma_mdm.hf.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(directory)
        else:
            self._tokenizer = BPETokenizer.load(path)

    def prompt_ids(self, text: str) -> list[int]:
        """The ids a prompt is given to the model as."""
        return self.tokenizer.encode(text)

    def text_of(self, ids: Sequence[int]) -> str:
        """Readable text of ids: cut at the first ``<eos>``, ``<sep>`` shown as a line break."""
        ids = list(ids)
        eos = self.tokenizer.eos_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self._join(ids)

    def completion(self, tokens: torch.Tensor, prompt_mask: torch.Tensor) -> str:
        """The text a decoded row generated after its prompt (up to the first ``<eos>``)."""
        return self.text_of(tokens[~prompt_mask].tolist())

    def show_partial(self, ids: Sequence[int], masked: Sequence[bool]) -> str:
        """A partly decoded sequence: masked tokens as ``▒``, ``<eos>`` as nothing."""
        out, run = [], []
        for token, hidden in zip(ids, masked, strict=True):
            if hidden:
                out.append(self._join(run) + MASK_GLYPH)
                run = []
            elif token != self.tokenizer.eos_id:
                run.append(token)
        return "".join(out) + self._join(run)

    def _join(self, ids: list[int]) -> str:
        """Decode, showing each ``<sep>`` as a line break."""
        sep = self.tokenizer.sep_id
        parts, start = [], 0
        for i, token in enumerate(ids):
            if token == sep:
                parts.append(self.tokenizer.decode(ids[start:i]))
                start = i + 1
        parts.append(self.tokenizer.decode(ids[start:]))
        return "\n".join(parts)
