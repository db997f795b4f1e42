"""Text corpora: unconditional language modelling on any ``.txt`` / ``.jsonl`` corpus.

Documents: in ``.txt`` files, paragraphs (runs of non-blank lines, separated by blank lines);
in ``.jsonl`` files, one per record (its ``text_field``, or the record itself when it is a
string). A path may also be a directory, whose ``.txt`` / ``.jsonl`` files are read in name
order. Files are streamed line by line and each line must be valid UTF-8.

Split: every ``heldout_every``-th document (the 1st, the (n+1)-th, …) is held out; a BPE
tokenizer learns from the training documents only. Each split is tokenized, every document
followed by ``<eos>``, concatenated and cut into sequences of ``seq_len`` tokens (an incomplete
last sequence is dropped). No position is a prompt, and there is no accuracy: the metric is the
NLL bound per token (and perplexity, bits per byte) on the held-out sequences.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from puma_mdm.errors import ConfigError, PumaError
from puma_mdm.tasks.base import Examples
from puma_mdm.tasks.registry import register_task
from puma_mdm.tasks.tokenized import TokenizedTask, TokenizerOptions

SUFFIXES = (".txt", ".jsonl")
ENCODE_BATCH = 512  # documents tokenized at once


class CorpusError(PumaError):
    """A corpus that cannot be read or is too small to use."""


def corpus_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise CorpusError(f"{path} holds no {' or '.join(SUFFIXES)} files")
        return files
    if not path.is_file():
        raise CorpusError(
            f"no such corpus file or directory: {path} (pass --data PATH or set "
            "task.options.data; `make corpus` writes the text config's default)"
        )
    if path.suffix not in SUFFIXES:
        raise CorpusError(f"{path}: a corpus must be a {' or '.join(SUFFIXES)} file")
    return [path]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break), decoded strictly as UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}: line {lineno} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at "
                    f"column {err.start + 1}); convert the file, e.g. iconv -f latin1 -t utf-8"
                ) from None


def _paragraphs(path: Path) -> Iterator[str]:
    block: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _records(path: Path, field: str) -> Iterator[str]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: line {lineno} is not JSON ({err.msg})") from None
        text = record.get(field) if isinstance(record, dict) else record
        if not isinstance(text, str):
            raise CorpusError(
                f"{path}: line {lineno} has no string field {field!r} "
                "(set task.options.text_field to the field holding the text)"
            )
        if text.strip():
            yield text


def read_documents(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """Every non-blank document of a corpus, streamed; an empty corpus is an error."""
    empty = True
    for file in corpus_files(path):
        for doc in _paragraphs(file) if file.suffix == ".txt" else _records(file, text_field):
            empty = False
            yield doc
    if empty:
        raise CorpusError(f"{path}: the corpus is empty (no non-blank text)")


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pack(token_lists: Iterable[list[int]], seq_len: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by ``eos_id``, and cut into rows of ``seq_len``."""
    rows, buffer = [], []
    for ids in token_lists:
        buffer += ids
        buffer.append(eos_id)
        full = len(buffer) // seq_len * seq_len
        if full:
            rows.append(np.asarray(buffer[:full], dtype=np.int64).reshape(-1, seq_len))
            del buffer[:full]
    if not rows:
        return torch.zeros(0, seq_len, dtype=torch.long)
    return torch.from_numpy(np.concatenate(rows))


@dataclass
class TextOptions(TokenizerOptions):
    data: str = ""  # a .txt / .jsonl corpus file or a directory of them (`puma train --data`)
    seq_len: int = 256  # tokens per packed sequence
    heldout_every: int = 50  # every n-th document is held out
    text_field: str = "text"  # .jsonl: the field holding a record's text

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be ≥ 2, got {self.seq_len}")
        if self.heldout_every < 2:
            raise ValueError(f"heldout_every must be ≥ 2, got {self.heldout_every}")


@register_task
class TextTask(TokenizedTask):
    name = "text"
    Options = TextOptions
    scores_outputs = False

    @property
    def seq_len(self) -> int:
        return self.options.seq_len

    def documents(self, heldout: bool) -> Iterator[str]:
        """The documents of one split of the configured corpus."""
        if not self.options.data:
            raise ConfigError(
                "task.options.data: no corpus given; pass `--data PATH` (a .txt or .jsonl file "
                "or a directory of them) or set task.options.data"
            )
        every = self.options.heldout_every
        for i, doc in enumerate(read_documents(self.options.data, self.options.text_field)):
            if (i % every == 0) == heldout:
                yield doc

    def tokenizer_texts(self) -> Iterator[str]:
        return self.documents(heldout=False)

    def encode_documents(self, documents: Iterable[str], where: str) -> Examples:
        """Tokenize and pack documents into ``(N, seq_len)`` sequences without prompts."""
        tok = self.tokenizer
        batches = _batches(documents, ENCODE_BATCH)
        x0 = pack((ids for b in batches for ids in tok.encode_batch(b)), self.seq_len, tok.eos_id)
        if len(x0) == 0:
            raise CorpusError(
                f"{where}: shorter than one sequence of {self.seq_len} tokens; give more text "
                "or lower task.options.seq_len (or heldout_every)"
            )
        return Examples(x0, torch.zeros_like(x0, dtype=torch.bool))

    def train_examples(self) -> Examples:
        return self.encode_documents(self.documents(False), f"{self.options.data} (training)")

    def eval_examples(self) -> Examples:
        where = f"{self.options.data} (held out: every {self.options.heldout_every}th document)"
        return self.encode_documents(self.documents(True), where)

    def load_examples(self, path: str | Path) -> Examples:
        return self.encode_documents(read_documents(path, self.options.text_field), str(path))

    def correct(self, tokens: torch.Tensor, examples: Examples) -> torch.Tensor:
        raise PumaError("a text corpus has no right answer; it is judged by its NLL bound")
