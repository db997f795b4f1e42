"""TinyGSM → GSM8K, the PUMA paper's headline experiment, from local files (nothing is
downloaded).

* **Training data**: a TinyGSM-format JSONL file, one ``{"question": ..., "code": ...}`` per
  line (``program`` is accepted for ``code``). It is tokenized once, in parallel, into
  memory-mapped shards (``puma prepare``, or automatically by rank 0 at the first start; see
  ``prepared.py``); training streams the shards per rank.
* **Held-out data**: a GSM8K-format JSONL file, ``{"question": ..., "answer": "... #### 42"}``.
  GSM8K has no reference programs, so each row's target is the program that returns the
  answer (``def ENTRY():\\n    return 42``): decoding accuracy then runs the generated program
  in the sandbox and compares its number with the answer, which is the paper's protocol. The
  held-out NLL bound is that of this stand-in program, not of a real solution: compare arms by
  accuracy.
* **Sequences**: as the math task (``[question] <sep> [program] <eos>…``, question and
  ``<sep>`` as prompt). Training rows longer than ``seq_len`` are skipped and counted in the
  manifest; a held-out row that does not fit is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from puma_mdm.prepared import MANIFEST, LineError, PreparedData, prepare
from puma_mdm.tasks.base import Examples
from puma_mdm.tasks.math_programs import MathTask, MathTaskError
from puma_mdm.tasks.registry import build_task, register_task
from puma_mdm.tasks.tokenized import TokenizerOptions

ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


@dataclass
class TinyGSMOptions(TokenizerOptions):
    # a tokenizer directory (e.g. Qwen2's) or tokenizer.json; byte for tests (bpe is not
    # offered: every preparing process would have to train it)
    tokenizer: str = "byte"
    train_data: str = ""  # TinyGSM-format JSONL: question, code
    eval_data: str = ""  # GSM8K-format JSONL: question, answer ending in "#### N"
    prepared: str = ""  # the shard directory (default: TRAIN_DATA.prepared beside the file)
    seq_len: int = 512
    entry: str = "simple_math_problem"  # the function TinyGSM's programs define
    workers: int = 0  # processes that tokenize (0 = one per CPU core)
    timeout: float = 2.0  # seconds each executed program may run

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer == "bpe":
            raise ValueError("tokenizer: give a tokenizer directory, a tokenizer.json or byte")
        if not self.train_data or not self.eval_data:
            raise ValueError(
                "train_data (a TinyGSM-format JSONL) and eval_data (a GSM8K-format JSONL) "
                "are both needed"
            )
        if not self.entry.isidentifier():
            raise ValueError(f"entry must be a Python function name, got {self.entry!r}")
        if self.seq_len < 2 or self.workers < 0 or self.timeout <= 0:
            raise ValueError("need seq_len ≥ 2, workers ≥ 0 and timeout > 0")


def gsm8k_answer(text: str) -> str:
    """The number after ``####`` (thousands separators dropped), or a clear error."""
    found = ANSWER.search(text.strip())
    if not found:
        raise ValueError("its answer does not end in '#### NUMBER'")
    return found[1].replace(",", "")


def read_gsm8k(path: str | Path, entry: str) -> list[tuple[str, str]]:
    """(question, the program returning the answer) pairs of a GSM8K-format JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise MathTaskError(f"no such file: {path}")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in ("question", "answer")
            ):
                raise ValueError("it needs string fields 'question' and 'answer'")
            number = gsm8k_answer(record["answer"])
        except (json.JSONDecodeError, ValueError) as err:
            raise MathTaskError(f"{path}: line {lineno}: {err}") from None
        pairs.append((record["question"], f"def {entry}():\n    return {number}\n"))
    if not pairs:
        raise MathTaskError(f"{path} holds no problems")
    return pairs


def parse_tinygsm_line(line: bytes, offset: int) -> tuple[str, str] | None:
    """(question, code) of one TinyGSM line; None for a blank line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LineError(offset, f"not JSON ({err})") from None
    code = record.get("code", record.get("program")) if isinstance(record, dict) else None
    if not isinstance(code, str) or not isinstance(record.get("question"), str):
        raise LineError(offset, "needs string fields 'question' and 'code' (or 'program')")
    return record["question"], code


class ProblemEncoder:
    """Lines of a TinyGSM file → rows; picklable, so each preparing process builds its own
    tokenizer from the task options."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self._task: TinyGSMTask | None = None

    def __getstate__(self) -> dict:
        return {"options": self.options, "_task": None}

    def __call__(self, lines: list[bytes], offset: int) -> tuple[np.ndarray, np.ndarray, int]:
        if self._task is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per process
            self._task = build_task(TinyGSMTask.name, self.options)
        pairs = []
        for line in lines:
            pair = parse_tinygsm_line(line, offset)
            offset += len(line)
            if pair is not None:
                pairs.append(pair)
        if not pairs:
            empty = np.zeros((0, self._task.seq_len), np.int64)
            return empty, np.zeros(0, np.int64), 0
        x0, prompt_len = self._task.encode_ids(pairs, skip_long=True)
        return x0, prompt_len, len(pairs) - len(x0)


@register_task
class TinyGSMTask(MathTask):
    name = "tinygsm"
    Options = TinyGSMOptions

    @property
    def entry(self) -> str:
        return self.options.entry

    @property
    def prepared_dir(self) -> Path:
        o = self.options
        return Path(o.prepared) if o.prepared else Path(f"{o.train_data}.prepared")

    def fingerprint(self) -> str:
        """Identifies the tokenizer (and its special ids), so stale shards are refused."""
        record = {"tokenizer": self.artifacts(), "vocab": self.vocab_size, "sep": self.eos_id}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def prepare(self, force: bool = False) -> dict:
        """Tokenize the training file into shards; the manifest (plus ``directory`` and
        ``seconds``)."""
        o = self.options
        if (self.prepared_dir / MANIFEST).is_file() and not force:
            raise MathTaskError(
                f"{self.prepared_dir} is already prepared; pass --force to prepare it again"
            )
        return prepare(
            o.train_data,
            self.prepared_dir,
            ProblemEncoder(asdict(o)),
            seq_len=o.seq_len,
            vocab_size=self.vocab_size,
            fingerprint=self.fingerprint(),
            workers=o.workers,
        )

    def training_data(self) -> PreparedData:
        """The prepared shards (prepared first when there are none), checked against the
        config."""
        source = Path(self.options.train_data)
        if not source.is_file():
            raise MathTaskError(f"task.options.train_data: no such file {source}")
        if not (self.prepared_dir / MANIFEST).is_file():
            self.prepare()
        data = PreparedData(self.prepared_dir)
        data.check_matches(source, self.seq_len, self.fingerprint())
        return data

    def train_examples(self) -> Examples:
        """Every prepared row in memory (small data only: training streams the shards)."""
        data = self.training_data()
        parts = [data.rows(s, np.arange(len(p))) for s, p in enumerate(data.prompt_len)]
        return Examples(torch.cat([x for x, _ in parts]), torch.cat([m for _, m in parts]))

    def eval_problems(self) -> list[tuple[str, str]]:
        return read_gsm8k(self.options.eval_data, self.entry)

    def eval_examples(self) -> Examples:
        return self.encode(self.eval_problems())

    def load_examples(self, path: str | Path) -> Examples:
        return self.encode(read_gsm8k(path, self.entry))

    def tokenizer_texts(self):
        raise MathTaskError("the tinygsm task does not train a tokenizer; give one")
