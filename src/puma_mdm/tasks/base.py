"""The task interface: raw data in, ``(x0, prompt_mask)`` tensors out, model outputs judged."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from puma_mdm.errors import PumaError
from puma_mdm.prepared import PreparedData


@dataclass
class Examples:
    """Token sequences ``x0`` (N, L) and the conditioning positions ``prompt_mask`` (N, L)."""

    x0: torch.Tensor
    prompt_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, index) -> Examples:
        return Examples(self.x0[index], self.prompt_mask[index])


class Task(ABC):
    """A conditional generation problem. Subclasses declare an ``Options`` dataclass (validated
    from the config's ``task.options``), the vocabulary and sequence length, and how to judge a
    completed sequence."""

    name: ClassVar[str]
    Options: ClassVar[type]
    # False for tasks judged by likelihood alone (text corpora): training and `puma eval` then
    # report the NLL bound and perplexity instead of decoding accuracy.
    scores_outputs: ClassVar[bool] = True

    def __init__(self, options) -> None:
        self.options = options

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of real token ids; the mask id is ``vocab_size``."""

    @property
    @abstractmethod
    def seq_len(self) -> int: ...

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def position_tables(self) -> dict[str, list[int]]:
        """Structured positions (name → index per position) added as learned embeddings."""
        return {}

    @abstractmethod
    def train_examples(self) -> Examples: ...

    @abstractmethod
    def eval_examples(self) -> Examples: ...

    def prepare(self, force: bool = False) -> dict:
        """Tokenize the training data into shards on disk (tasks that stream shards override
        this; ``force`` replaces shards already there); returns the shards' manifest."""
        raise PumaError(f"task {self.name!r} builds its data in memory: nothing to prepare")

    def training_data(self) -> Examples | PreparedData:
        """What training streams from: the examples in memory, or prepared shards on disk
        (``prepared.py``) for corpora too big for that."""
        return self.train_examples()

    def artifacts(self) -> dict[str, str]:
        """Files (name → text) saved beside trained weights, e.g. a trained tokenizer."""
        return {}

    def restore(self, directory: Path) -> None:  # noqa: B027  (optional; most tasks save nothing)
        """Reload what :meth:`artifacts` wrote, when loading a trained model from ``directory``."""

    def load_examples(self, path: str | Path) -> Examples:
        """Examples read from a user's file (tasks that read files override this)."""
        raise PumaError(f"task {self.name!r} cannot read examples from a file ({path})")

    @abstractmethod
    def correct(self, tokens: torch.Tensor, examples: Examples) -> torch.Tensor:
        """Bool (N,): whether each completed sequence solves its example."""

    def masked_inputs(self, examples: Examples) -> torch.Tensor:
        """What the sampler starts from: prompts kept, everything else masked."""
        return examples.x0.masked_fill(~examples.prompt_mask, self.mask_id)
