"""Sudoku file formats: read and write (N, 81) int8 batches (0 = blank).

Formats (read_puzzles() detects them from the extension, header and field count):

- "lines": one 81-char puzzle per line ('.' or '0' blank), optionally followed by a solution
  (`puzzle,solution` or `puzzle solution`); blank lines and '#' comments are skipped.
- "kaggle": CSV with header `quizzes,solutions` ('0' blank).
- "extreme": CSV with header `source,question,answer,rating` (sudoku-extreme).
- "shah": 1 + 81*4 integers per line or per row of a .npy array: the number of givens g, then
  (row, col, value, strategy) for every cell, givens first, then the blanks in solver order.

Every reader validates what it reads (cell counts, characters, contradicting clues, solutions
that do not solve their puzzle) and raises SudokuError naming the file and the line.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from puma_mdm.tasks.sudoku_puzzles import (
    SudokuError,
    as_grid,
    check_clues,
    clues_consistent,
    explain,
    verify,
)

_HINT = "(use 1-9 for digits and '.' or '0' for blanks)"
_VALUE = np.full(256, -1, dtype=np.int8)  # byte -> cell value, -1 = illegal
_VALUE[ord("1") : ord("9") + 1] = np.arange(1, 10)
_VALUE[ord(".")] = _VALUE[ord("0")] = 0
_SEPARATORS = set("|-+")  # box separators of pretty-printed grids, ignored by parse_grid
_FIELD = re.compile(r"[^,\s]+")
_KAGGLE_HEADER = "quizzes,solutions"
_EXTREME_HEADER = "source,question,answer,rating"
_SHAH_WIDTH = 1 + 81 * 4


@dataclass
class PuzzleSet:
    """Puzzles read from a file, plus whatever else the format carries."""

    puzzles: np.ndarray  # (N, 81) int8
    solutions: np.ndarray | None  # (N, 81) int8, if the file has them
    source_format: str  # "lines", "kaggle", "extreme" or "shah"
    ratings: np.ndarray | None = None  # extreme: (N,) int64
    sources: list[str] | None = None  # extreme: the source column
    order: np.ndarray | None = None  # shah: (N, 81) cell index decided at step t
    strategies: np.ndarray | None = None  # shah: (N, 81) strategy id at step t


# ----------------------------------------------------------------------------------------------
# single grids


def parse_grid(text: str) -> np.ndarray:
    """Parse one grid: 81 cells of 1-9 / '.' / '0'; whitespace and '|', '-', '+' are ignored."""
    cells = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for col, ch in enumerate(line, 1):
            if ch.isspace() or ch in _SEPARATORS:
                continue
            value = _VALUE[ord(ch)] if ord(ch) < 256 else -1
            if value < 0:
                raise SudokuError(f"line {lineno}, column {col}: illegal character {ch!r} {_HINT}")
            cells.append(value)
    if len(cells) != 81:
        raise SudokuError(f"expected 81 cells, got {len(cells)}")
    return np.array(cells, dtype=np.int8)


def format_grid(grid: np.ndarray) -> str:
    """81-char string with '.' for blanks."""
    return "".join(str(v) if v else "." for v in as_grid(grid).tolist())


def pretty(grid: np.ndarray) -> str:
    """Human-readable grid: 9 rows with '|' between boxes and a rule between bands."""
    text = format_grid(grid)
    rows = []
    for r in range(9):
        row = text[9 * r : 9 * r + 9]
        rows.append(" | ".join(" ".join(row[s : s + 3]) for s in (0, 3, 6)))
        if r in (2, 5):
            rows.append("------+-------+------")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# shared helpers


def _read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise SudokuError(f"no such file: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SudokuError(
            f"{path}: not a UTF-8 text file (byte {err.start} is {err.object[err.start]:#04x}); "
            "give 81-character lines or a puzzle CSV"
        ) from None


def _data_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) of every non-blank, non-comment line."""
    return [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _decode(fields: list[str], where: list[tuple[int, int]], path: Path) -> np.ndarray:
    """81-char fields -> (N, 81) int8. where[i] = (line number, 1-based column of field i)."""
    for field, (line, _) in zip(fields, where, strict=True):
        if len(field) != 81:
            raise SudokuError(f"{path}: line {line}: expected 81 cells, got {len(field)}")
    if not fields:
        return np.zeros((0, 81), dtype=np.int8)
    raw = np.frombuffer("".join(fields).encode("ascii", errors="replace"), dtype=np.uint8)
    values = _VALUE[raw].reshape(len(fields), 81)
    bad = np.argwhere(values < 0)
    if len(bad):
        i, j = bad[0]
        line, col = where[i]
        raise SudokuError(
            f"{path}: line {line}, column {col + j}: illegal character {fields[i][j]!r} {_HINT}"
        )
    return values


def _check(
    path: Path,
    lines: list[int],
    puzzles: np.ndarray,
    solutions: np.ndarray | None,
    unit: str = "line",
) -> None:
    """Raise for the first puzzle with contradicting clues or a solution that does not fit."""
    contradicting = np.flatnonzero(~clues_consistent(puzzles))
    if len(contradicting):
        i = contradicting[0]
        try:
            check_clues(puzzles[i])
        except SudokuError as err:
            raise SudokuError(f"{path}: {unit} {lines[i]}: {err}") from None
    if solutions is not None:
        wrong = np.flatnonzero(~verify(solutions, puzzles))
        if len(wrong):
            i = wrong[0]
            problem = explain(solutions[i], puzzles[i])[0]
            raise SudokuError(f"{path}: {unit} {lines[i]}: the solution is wrong: {problem}")


def _encode(grids: np.ndarray, blank: str) -> list[str]:
    """(N, 81) grids -> 81-char strings."""
    grids = np.asarray(grids)
    if grids.ndim != 2 or grids.shape[1] != 81:
        raise SudokuError(f"expected grids of shape (N, 81), got {grids.shape}")
    if grids.size and (grids.min() < 0 or grids.max() > 9):
        raise SudokuError("grid values must be 0-9")
    table = np.frombuffer((blank + "123456789").encode(), dtype=np.uint8)
    chars = np.ascontiguousarray(table[grids])
    return [s.decode() for s in chars.view("S81").ravel()]


def _checked_pair(puzzles: np.ndarray, solutions: np.ndarray | None) -> None:
    """Writers refuse solutions that do not solve their puzzles."""
    if solutions is None:
        return
    if np.shape(solutions) != np.shape(puzzles):
        raise SudokuError(f"puzzles {np.shape(puzzles)} and solutions {np.shape(solutions)} differ")
    wrong = np.flatnonzero(~verify(solutions, puzzles))
    if len(wrong):
        i = wrong[0]
        raise SudokuError(f"solution {i} is wrong: {explain(solutions[i], puzzles[i])[0]}")


def _write(path: str | Path, lines: list[str]) -> None:
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# 81-char line files


def _parse_lines(text: str, path: Path) -> PuzzleSet:
    fields: list[list[str]] = [[], []]
    where: list[list[tuple[int, int]]] = [[], []]
    width = None  # fields per line: 1 (puzzle) or 2 (puzzle and solution), fixed by line one
    for n, line in _data_lines(text):
        found = list(_FIELD.finditer(line))
        if not 1 <= len(found) <= 2:
            raise SudokuError(
                f"{path}: line {n}: expected a puzzle and optionally a solution, "
                f"got {len(found)} fields"
            )
        width = width or len(found)
        if len(found) != width:
            what = "a puzzle and a solution" if width == 2 else "only a puzzle"
            raise SudokuError(f"{path}: line {n}: expected {what} like the first line")
        for k, match in enumerate(found):
            fields[k].append(match.group())
            where[k].append((n, match.start() + 1))
    lines = [n for n, _ in where[0]]
    puzzles = _decode(fields[0], where[0], path)
    solutions = _decode(fields[1], where[1], path) if width == 2 else None
    _check(path, lines, puzzles, solutions)
    return PuzzleSet(puzzles, solutions, "lines")


def read_lines(path: str | Path) -> PuzzleSet:
    """One puzzle per line, optionally `puzzle,solution` or `puzzle solution`."""
    return _parse_lines(_read_text(path), Path(path))


def write_lines(path: str | Path, puzzles: np.ndarray, solutions: np.ndarray | None = None) -> None:
    """Write one puzzle per line ('.' blank), followed by ',solution' if solutions are given."""
    _checked_pair(puzzles, solutions)
    lines = _encode(puzzles, ".")
    if solutions is not None:
        lines = [f"{p},{s}" for p, s in zip(lines, _encode(solutions, "."), strict=True)]
    _write(path, lines)


# ----------------------------------------------------------------------------------------------
# CSV files (Kaggle "1 million Sudoku games" and sudoku-extreme)


def _csv_rows(text: str, path: Path, header: str) -> list[tuple[int, list[str]]]:
    """Data rows (line number, fields) after checking the header line."""
    rows = _data_lines(text)
    if not rows or rows[0][1].strip().replace(" ", "").lower() != header:
        got = rows[0][1].strip() if rows else "an empty file"
        line = rows[0][0] if rows else 1
        raise SudokuError(f"{path}: line {line}: expected the header {header!r}, got {got!r}")
    width = header.count(",") + 1
    out = []
    for n, line in rows[1:]:
        parts = line.split(",")
        if len(parts) != width:
            raise SudokuError(f"{path}: line {n}: expected {width} fields, got {len(parts)}")
        out.append((n, parts))
    if not out:
        raise SudokuError(f"{path}: no puzzles after the header line")
    return out


def _columns(rows: list[tuple[int, list[str]]], k: int, path: Path) -> tuple[np.ndarray, list[int]]:
    """Decode CSV column k of every row as grids."""
    fields, where = [], []
    for n, parts in rows:
        fields.append(parts[k].strip())
        col = sum(len(p) + 1 for p in parts[:k]) + len(parts[k]) - len(parts[k].lstrip()) + 1
        where.append((n, col))
    return _decode(fields, where, path), [n for n, _ in rows]


def _parse_kaggle(text: str, path: Path) -> PuzzleSet:
    rows = _csv_rows(text, path, _KAGGLE_HEADER)
    puzzles, lines = _columns(rows, 0, path)
    solutions, _ = _columns(rows, 1, path)
    _check(path, lines, puzzles, solutions)
    return PuzzleSet(puzzles, solutions, "kaggle")


def read_kaggle_csv(path: str | Path) -> PuzzleSet:
    """CSV with header `quizzes,solutions`."""
    return _parse_kaggle(_read_text(path), Path(path))


def write_kaggle_csv(path: str | Path, puzzles: np.ndarray, solutions: np.ndarray) -> None:
    """Write a `quizzes,solutions` CSV ('0' blank)."""
    _checked_pair(puzzles, solutions)
    pairs = zip(_encode(puzzles, "0"), _encode(solutions, "0"), strict=True)
    _write(path, [_KAGGLE_HEADER] + [f"{p},{s}" for p, s in pairs])


def _parse_extreme(text: str, path: Path) -> PuzzleSet:
    rows = _csv_rows(text, path, _EXTREME_HEADER)
    puzzles, lines = _columns(rows, 1, path)
    solutions, _ = _columns(rows, 2, path)
    ratings = np.zeros(len(rows), dtype=np.int64)
    for i, (n, parts) in enumerate(rows):
        try:
            ratings[i] = int(parts[3])
        except ValueError:
            raise SudokuError(f"{path}: line {n}: rating {parts[3]!r} is not an integer") from None
    _check(path, lines, puzzles, solutions)
    sources = [parts[0] for _, parts in rows]
    return PuzzleSet(puzzles, solutions, "extreme", ratings=ratings, sources=sources)


def read_extreme_csv(path: str | Path) -> PuzzleSet:
    """CSV with header `source,question,answer,rating` (sudoku-extreme)."""
    return _parse_extreme(_read_text(path), Path(path))


def write_extreme_csv(
    path: str | Path,
    puzzles: np.ndarray,
    solutions: np.ndarray,
    ratings: np.ndarray | None = None,
    sources: list[str] | None = None,
) -> None:
    """Write a sudoku-extreme CSV ('.' blank); ratings default to 0, sources to 'puma_mdm'."""
    _checked_pair(puzzles, solutions)
    n = len(puzzles)
    ratings = np.zeros(n, dtype=np.int64) if ratings is None else np.asarray(ratings)
    sources = ["puma_mdm"] * n if sources is None else list(sources)
    if len(ratings) != n or len(sources) != n:
        raise SudokuError(f"expected {n} ratings and sources")
    if any("," in s or "\n" in s for s in sources):
        raise SudokuError("sources must not contain commas or newlines")
    rows = zip(sources, _encode(puzzles, "."), _encode(solutions, "."), ratings, strict=True)
    _write(path, [_EXTREME_HEADER] + [f"{s},{q},{a},{int(r)}" for s, q, a, r in rows])


# ----------------------------------------------------------------------------------------------
# Shah et al. (2024): givens count + (row, col, value, strategy) per cell in solver order


def _from_shah(table: np.ndarray, lines: list[int], path: Path, unit: str) -> PuzzleSet:
    """Decode and validate an (N, 325) integer table."""
    n = len(table)
    givens = table[:, 0]
    quads = table[:, 1:].reshape(n, 81, 4)
    row, col, value, strategy = (quads[:, :, k] for k in range(4))

    def fail(mask: np.ndarray, problem: str) -> None:
        if mask.any():
            i, t = np.argwhere(mask)[0] if mask.ndim == 2 else (np.argmax(mask), 0)
            raise SudokuError(f"{path}: {unit} {lines[i]}: " + problem.format(t=t + 1))

    fail((givens < 0) | (givens > 81), "the givens count must be 0-81")
    fail((row < 0) | (row > 8), "step {t}: row must be 0-8")
    fail((col < 0) | (col > 8), "step {t}: column must be 0-8")
    fail((value < 1) | (value > 9), "step {t}: value must be 1-9")
    order = row * 9 + col
    fail((np.sort(order, axis=1) != np.arange(81)).any(axis=1), "cells must each appear once")
    steps = np.arange(81)
    solutions = np.zeros((n, 81), dtype=np.int8)
    np.put_along_axis(solutions, order, value.astype(np.int8), axis=1)
    puzzles = np.zeros((n, 81), dtype=np.int8)
    shown = np.where(steps < givens[:, None], value, 0).astype(np.int8)
    np.put_along_axis(puzzles, order, shown, axis=1)
    _check(path, lines, puzzles, solutions, unit)
    return PuzzleSet(puzzles, solutions, "shah", order=order, strategies=strategy)


def _parse_shah_text(text: str, path: Path) -> PuzzleSet:
    rows = _data_lines(text)
    tokens: list[str] = []
    for n, line in rows:
        found = line.replace(",", " ").split()
        if len(found) != _SHAH_WIDTH:
            raise SudokuError(
                f"{path}: line {n}: expected {_SHAH_WIDTH} integers (1 + 81*4), got {len(found)}"
            )
        tokens.extend(found)
    try:
        table = np.array(tokens, dtype=np.int64).reshape(len(rows), _SHAH_WIDTH)
    except ValueError:
        k = next(k for k, tok in enumerate(tokens) if not tok.lstrip("+-").isdigit())
        n = rows[k // _SHAH_WIDTH][0]
        raise SudokuError(f"{path}: line {n}: {tokens[k]!r} is not an integer") from None
    return _from_shah(table, [n for n, _ in rows], path, "line")


def read_shah(path: str | Path) -> PuzzleSet:
    """Shah et al. format from a text file (one example per line) or an (N, 325) .npy array."""
    path = Path(path)
    if path.suffix != ".npy":
        return _parse_shah_text(_read_text(path), path)
    if not path.is_file():
        raise SudokuError(f"no such file: {path}")
    table = np.load(path, allow_pickle=False)
    if table.ndim != 2 or table.shape[1] != _SHAH_WIDTH or table.dtype.kind not in "iu":
        raise SudokuError(
            f"{path}: expected an integer array of shape (N, {_SHAH_WIDTH}), "
            f"got {table.dtype} {table.shape}"
        )
    return _from_shah(table.astype(np.int64), list(range(1, len(table) + 1)), path, "row")


def write_shah(
    path: str | Path,
    puzzles: np.ndarray,
    solutions: np.ndarray,
    order: np.ndarray | None = None,
    strategies: np.ndarray | None = None,
) -> None:
    """Write the Shah et al. format (.npy array, otherwise comma-separated text lines).

    order (N, 81) lists cells in solving order (default: row-major); givens are moved to the
    front, keeping their relative order. strategies (N, 81) go with `order` (default 0).
    """
    _checked_pair(puzzles, solutions)
    puzzles, solutions = np.asarray(puzzles), np.asarray(solutions)
    n = len(puzzles)
    order = np.tile(np.arange(81), (n, 1)) if order is None else np.asarray(order)
    strategies = np.zeros((n, 81), np.int64) if strategies is None else np.asarray(strategies)
    if order.shape != (n, 81) or (np.sort(order, axis=1) != np.arange(81)).any():
        raise SudokuError("order must hold a permutation of the 81 cells per puzzle")
    if strategies.shape != (n, 81):
        raise SudokuError(f"strategies must have shape ({n}, 81), got {strategies.shape}")
    blank = np.take_along_axis(puzzles, order, axis=1) == 0
    front = np.argsort(blank, axis=1, kind="stable")  # givens first, order kept otherwise
    order = np.take_along_axis(order, front, axis=1)
    strategies = np.take_along_axis(strategies, front, axis=1)
    values = np.take_along_axis(solutions, order, axis=1)
    quads = np.stack([order // 9, order % 9, values, strategies], axis=2).reshape(n, 324)
    table = np.concatenate([(~blank).sum(axis=1)[:, None], quads], axis=1).astype(np.int64)
    if Path(path).suffix == ".npy":
        np.save(path, table)
    else:
        _write(path, [",".join(map(str, row)) for row in table.tolist()])


# ----------------------------------------------------------------------------------------------
# autodetection


def read_puzzles(path: str | Path) -> PuzzleSet:
    """Read any supported format, detected from the extension, header and field count."""
    path = Path(path)
    if not path.is_file():
        raise SudokuError(f"no such file: {path}")
    if path.suffix == ".npy":
        return read_shah(path)
    text = _read_text(path)
    rows = _data_lines(text)
    if not rows:
        raise SudokuError(f"{path}: no puzzles found")
    first = rows[0][1].strip().replace(" ", "").lower()
    if first == _KAGGLE_HEADER:
        return _parse_kaggle(text, path)
    if first == _EXTREME_HEADER:
        return _parse_extreme(text, path)
    if len(_FIELD.findall(first)) > 2:
        return _parse_shah_text(text, path)
    return _parse_lines(text, path)
