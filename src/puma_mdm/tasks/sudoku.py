"""Sudoku as a masked-diffusion task (docs/algorithms.md §5).

Vocabulary: ids 0..9 (0 = blank, 1..9 = digits), mask id 10. Two encodings:

* ``infill`` (81 tokens): the solution grid, clue cells as prompt positions. Half the cost of
  the reference form and, on a CPU budget, far quicker to learn (docs/calibrations.md §2).
* ``reference`` (162 tokens, the PUMA paper's): the 81 puzzle cells (0 = blank) as prompt, then
  the 81 solution cells, all predicted.

A completed sequence is correct when its grid is a valid Sudoku *and* agrees with every clue.
Structured positions: each position gets its cell's row, column and box (and, in the reference
form, a segment id) as learned embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from puma_mdm.errors import ConfigError
from puma_mdm.tasks.base import Examples, Task
from puma_mdm.tasks.registry import register_task
from puma_mdm.tasks.sudoku_formats import read_puzzles
from puma_mdm.tasks.sudoku_puzzles import TECHNIQUES, load_or_generate, solve, verify

ENCODINGS = ("infill", "reference")
CELLS = 81
BLANK = 0


@dataclass
class SudokuOptions:
    encoding: str = "infill"  # infill (81 tokens) | reference (162 tokens)
    n_train: int = 40000  # generated training puzzles (ignored when train_data is given)
    n_eval: int = 1000  # generated held-out puzzles
    techniques: list[str] = field(default_factory=lambda: ["singles", "intermediate"])
    min_givens: int = 17
    seed: int = 0  # generation seed; the held-out set uses a different one
    train_data: str | None = None  # a puzzle file with solutions, instead of generated puzzles
    eval_data: str | None = None  # a puzzle file for evaluation
    cache_dir: str = "data/sudoku"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding {self.encoding!r} is not one of {ENCODINGS}")
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if unknown or not self.techniques:
            raise ValueError(f"techniques must be a non-empty subset of {TECHNIQUES}")
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"n_train and n_eval must be ≥ 1, got {self.n_train}, {self.n_eval}")
        if not 0 <= self.min_givens <= 81:
            raise ValueError(f"min_givens must be in 0..81, got {self.min_givens}")


def cell_positions() -> dict[str, list[int]]:
    cells = range(CELLS)
    return {
        "row": [i // 9 for i in cells],
        "col": [i % 9 for i in cells],
        "box": [(i // 27) * 3 + (i % 9) // 3 for i in cells],
    }


@register_task
class SudokuTask(Task):
    name = "sudoku"
    Options = SudokuOptions

    @property
    def vocab_size(self) -> int:
        return 10

    @property
    def seq_len(self) -> int:
        return CELLS if self.options.encoding == "infill" else 2 * CELLS

    def position_tables(self) -> dict[str, list[int]]:
        tables = cell_positions()
        if self.options.encoding == "infill":
            return tables
        tables = {name: t + t for name, t in tables.items()}
        tables["segment"] = [0] * CELLS + [1] * CELLS
        return tables

    # -- grids <-> sequences -------------------------------------------------------------------
    def encode(self, puzzles: np.ndarray, solutions: np.ndarray | None = None) -> Examples:
        """Puzzles (N, 81) (0 = blank) and, when known, solutions → examples. Without solutions
        the cells to predict hold a placeholder; they are masked before decoding anyway."""
        p = torch.as_tensor(np.asarray(puzzles), dtype=torch.long)
        s = p.clone() if solutions is None else torch.as_tensor(solutions, dtype=torch.long)
        clue = p != BLANK
        if self.options.encoding == "infill":
            return Examples(s, clue)
        x0 = torch.cat([p, s], dim=1)
        prompt = torch.cat([torch.ones_like(clue), torch.zeros_like(clue)], dim=1)
        return Examples(x0, prompt)

    def puzzles_of(self, examples: Examples) -> np.ndarray:
        """The clue grids (0 = blank) behind examples."""
        if self.options.encoding == "infill":
            grid = examples.x0.masked_fill(~examples.prompt_mask, BLANK)
        else:
            grid = examples.x0[:, :CELLS]
        return grid.cpu().numpy().astype(np.int8)

    def grids_of(self, tokens: torch.Tensor) -> np.ndarray:
        """The predicted solution grids inside decoded sequences."""
        grid = tokens if self.options.encoding == "infill" else tokens[:, CELLS:]
        return grid.cpu().numpy().astype(np.int8)

    def correct(self, tokens: torch.Tensor, examples: Examples) -> torch.Tensor:
        return torch.as_tensor(verify(self.grids_of(tokens), self.puzzles_of(examples)))

    # -- data ----------------------------------------------------------------------------------
    def _generated(self, n: int, seed: int) -> Examples:
        o = self.options
        parts = np.array_split(np.arange(n), len(o.techniques))
        puzzles, solutions = [], []
        for i, (technique, part) in enumerate(zip(o.techniques, parts, strict=True)):
            p, s = load_or_generate(len(part), seed + i, technique, o.min_givens, o.cache_dir)
            puzzles.append(p)
            solutions.append(s)
        return self.encode(np.concatenate(puzzles), np.concatenate(solutions))

    def load_examples(self, path: str | Path) -> Examples:
        """Puzzles from a file in any supported format; missing solutions are solved."""
        data = read_puzzles(path)
        solutions = data.solutions
        if solutions is None:
            solutions = np.stack([solve(p) for p in data.puzzles])
        return self.encode(data.puzzles, solutions)

    def _from_option(self, key: str) -> Examples:
        path = getattr(self.options, key)
        if not Path(path).is_file():
            raise ConfigError(f"task.options.{key}: no such file {path}")
        return self.load_examples(path)

    def train_examples(self) -> Examples:
        if self.options.train_data:
            return self._from_option("train_data")
        return self._generated(self.options.n_train, self.options.seed)

    def eval_examples(self) -> Examples:
        if self.options.eval_data:
            return self._from_option("eval_data")
        return self._generated(self.options.n_eval, self.options.seed + 7919)
