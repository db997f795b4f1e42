"""Solve Sudoku puzzles with a trained model: input checks, decoding, and a plain verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from puma_mdm.errors import PumaError
from puma_mdm.kinds import sample
from puma_mdm.sampling import is_adaptive
from puma_mdm.tasks.sudoku import SudokuTask
from puma_mdm.tasks.sudoku_formats import parse_grid, read_puzzles
from puma_mdm.tasks.sudoku_puzzles import SudokuError, check_clues, count_solutions, explain


@dataclass
class Solution:
    puzzle: np.ndarray  # (81,) clues, 0 = blank
    grid: np.ndarray  # (81,) the model's answer
    order: np.ndarray  # (81,) decoding step per cell, -1 for clues
    problems: list[str]  # empty when the answer is a valid solution
    nfe: int


def read_input(source: str) -> np.ndarray:
    """Puzzles (N, 81) from a file path, or from one puzzle given as text."""
    path = Path(source)
    try:
        if path.is_file():
            return read_puzzles(path).puzzles
        if "/" in source or path.suffix in (".txt", ".csv", ".npy"):
            raise SudokuError(f"no such file: {source}")
        return parse_grid(source)[None]
    except SudokuError as err:
        raise PumaError(f"bad puzzle: {err}") from None


def check_solvable(puzzles: np.ndarray) -> None:
    """Refuse contradictory or unsolvable puzzles before spending model time on them."""
    for i, puzzle in enumerate(puzzles):
        where = f"puzzle {i + 1}" if len(puzzles) > 1 else "the puzzle"
        try:
            check_clues(puzzle)
        except SudokuError as err:
            raise PumaError(f"{where}: {err}") from None
        if count_solutions(puzzle, limit=1) == 0:
            raise PumaError(f"{where} has no solution: its clues cannot all hold at once")


@torch.no_grad()
def solve_with_model(
    model: torch.nn.Module,
    task: SudokuTask,
    puzzles: np.ndarray,
    policy: str = "margin",
    k: int | None = 1,
    threshold: float | None = None,
    **options,
) -> list[Solution]:
    """Decode every puzzle; ``options``: more :func:`~puma_mdm.kinds.sample` keywords
    (``entropy_bound``, ``entropy_sum``, ``cache``, ``refresh``). Each solution's ``nfe`` is
    the network calls its puzzle needed."""
    examples = task.encode(puzzles)
    parallel = is_adaptive(threshold, options.get("entropy_bound"), options.get("entropy_sum"))
    result = sample(
        model,
        task.masked_inputs(examples),
        task.mask_id,
        policy=policy,
        k=None if parallel else k,
        threshold=threshold,
        record_order=True,
        **options,
    )
    grids = task.grids_of(result.tokens)
    order = task.grids_of(result.order).astype(np.int64)
    return [
        Solution(p, g, o, explain(g, p), int(n))
        for p, g, o, n in zip(puzzles, grids, order, result.row_nfe.tolist(), strict=True)
    ]
