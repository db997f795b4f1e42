"""A tiny conditional task that trains in a minute on a CPU: sort a list of digits.

Sequence = ``n`` random digits (the prompt) followed by the same digits in ascending order.
Any decoding order can solve it, but the model must learn counting to get every slot right."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from puma_mdm.tasks.base import Examples, Task


@dataclass
class SortOptions:
    length: int = 8
    digits: int = 10
    n_train: int = 20000
    n_eval: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.length < 2 or self.digits < 2:
            raise ValueError("sort task: length and digits must both be ≥ 2")
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"n_train and n_eval must be ≥ 1, got {self.n_train}, {self.n_eval}")


class SortTask(Task):
    name = "sort"
    Options = SortOptions

    @property
    def vocab_size(self) -> int:
        return self.options.digits

    @property
    def seq_len(self) -> int:
        return 2 * self.options.length

    def _make(self, n: int, seed: int) -> Examples:
        gen = torch.Generator().manual_seed(seed)
        digits = torch.randint(0, self.options.digits, (n, self.options.length), generator=gen)
        x0 = torch.cat([digits, digits.sort(dim=1).values], dim=1)
        prompt = torch.zeros_like(x0, dtype=torch.bool)
        prompt[:, : self.options.length] = True
        return Examples(x0, prompt)

    def train_examples(self) -> Examples:
        return self._make(self.options.n_train, self.options.seed)

    def eval_examples(self) -> Examples:
        return self._make(self.options.n_eval, self.options.seed + 1_000_003)

    def correct(self, tokens: torch.Tensor, examples: Examples) -> torch.Tensor:
        return (tokens == examples.x0).all(dim=1)
