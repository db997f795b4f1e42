"""Sudoku puzzles: a fast batched generator with a difficulty knob, solvers and checkers.

A grid is an int8 array of 81 cells in row-major order, 0 = blank and 1..9 = digits; a batch is
(N, 81). Inside the generator every cell holds a 9-bit candidate mask (bit d-1 = digit d), and
whole batches are propagated in lockstep with numpy:

- level 0 ("singles"): naked singles + hidden singles
- level 1 ("intermediate"): + locked candidates (pointing / claiming) + naked pairs
- level 2 ("any"): + guessing (batched depth-first search)

Puzzles are dug out of random full grids: blanks are tried in a random order and kept only if
the puzzle stays solvable at the requested level (for "any": stays uniquely solvable).
"""

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

TECHNIQUES = ("singles", "intermediate", "any")
CHUNK_SIZE = 512  # puzzles per independently seeded chunk; fixed so output ignores `workers`
_CACHE_VERSION = 1  # bump when the generator changes, so stale caches are not reused

FULL = 0x1FF  # all nine candidate bits
_CELL = np.arange(81).reshape(9, 9)
_BOXES = _CELL.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
UNITS = np.concatenate([_CELL, _CELL.T, _BOXES])  # (27, 9): rows, columns, boxes
_UNITS_T = np.ascontiguousarray(UNITS.T)  # (9, 27) so unit member k is a contiguous slice
_FROM_BOXES = np.argsort(_BOXES.reshape(81))  # box-major order -> cell order
_UNIT_NAMES = [f"{kind} {i + 1}" for kind in ("row", "column", "box") for i in range(9)]
_BIT = np.array([0] + [1 << d for d in range(9)], dtype=np.uint16)  # digit -> mask
_POP = np.array([bin(m).count("1") for m in range(1 << 9)], dtype=np.uint8)
_DIGIT = np.array(  # mask -> digit if exactly one bit is set, else 0
    [m.bit_length() if _POP[m] == 1 else 0 for m in range(1 << 9)], dtype=np.int8
)


class SudokuError(ValueError):
    """A malformed, contradictory or unsolvable Sudoku."""


def cell_name(i: int) -> str:
    """1-based name of cell index i, e.g. 'r3c7'."""
    return f"r{i // 9 + 1}c{i % 9 + 1}"


# ----------------------------------------------------------------------------------------------
# single-grid helpers: validation, clue checks, backtracking solver


def as_grid(puzzle: np.ndarray) -> np.ndarray:
    """Validate one grid (81 cells or 9x9, values 0..9) and return it as int8 (81,)."""
    grid = np.asarray(puzzle)
    if grid.size != 81 or grid.ndim not in (1, 2):
        raise SudokuError(f"expected a grid of 81 cells, got shape {grid.shape}")
    if not np.issubdtype(grid.dtype, np.integer):
        raise SudokuError(f"expected integer cells, got dtype {grid.dtype}")
    grid = grid.reshape(81)
    bad = np.flatnonzero((grid < 0) | (grid > 9))
    if len(bad):
        raise SudokuError(f"cell {cell_name(bad[0])} has value {grid[bad[0]]}; expected 0-9")
    return grid.astype(np.int8)


def _as_batch(grids: np.ndarray, name: str) -> np.ndarray:
    """Validate a (N, 81) batch (a single grid is treated as N = 1)."""
    arr = np.asarray(grids)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 81:
        raise SudokuError(f"{name}: expected shape (N, 81), got {np.shape(grids)}")
    return arr


def clues_consistent(puzzles: np.ndarray) -> np.ndarray:
    """Bool (N,): no digit appears twice among the clues of any row, column or box."""
    grids = _as_batch(puzzles, "puzzles")
    bits = np.where(grids > 0, np.left_shift(1, np.clip(grids, 1, 9) - 1), 0)
    once = np.zeros((len(grids), 27), dtype=np.int64)
    twice = np.zeros_like(once)
    for k in range(9):
        member = bits[:, UNITS[:, k]]
        twice |= once & member
        once |= member
    return (twice == 0).all(axis=1)


def check_clues(puzzle: np.ndarray) -> None:
    """Raise SudokuError naming the first digit that appears twice in a row, column or box."""
    grid = as_grid(puzzle)
    for u, cells in enumerate(UNITS):
        values = grid[cells]
        for digit in range(1, 10):
            where = cells[values == digit]
            if len(where) > 1:
                times = "twice" if len(where) == 2 else f"{len(where)} times"
                names = ", ".join(cell_name(i) for i in where)
                raise SudokuError(
                    f"clues contradict: digit {digit} appears {times} in {_UNIT_NAMES[u]} "
                    f"(cells {names})"
                )


def _backtrack(grid: np.ndarray, limit: int) -> tuple[int, list[int] | None]:
    """Count solutions (up to `limit`) by MRV backtracking; also return the first one found."""
    cells = [int(v) for v in grid]
    row_of = [i // 9 for i in range(81)]
    col_of = [i % 9 for i in range(81)]
    box_of = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
    used = [0] * 27  # digit masks of rows 0-8, columns 9-17, boxes 18-26
    for i, v in enumerate(cells):
        if v:
            bit = 1 << (v - 1)
            used[row_of[i]] |= bit
            used[9 + col_of[i]] |= bit
            used[18 + box_of[i]] |= bit
    empty = [i for i in range(81) if cells[i] == 0]
    pop = _POP.tolist()
    count = 0
    first: list[int] | None = None

    def search(depth: int) -> None:
        nonlocal count, first
        if depth == len(empty):
            count += 1
            if first is None:
                first = cells.copy()
            return
        # most constrained remaining cell goes next (swap it to position `depth`)
        best_k, best_free, best_n = depth, 0, 10
        for k in range(depth, len(empty)):
            i = empty[k]
            free = FULL & ~(used[row_of[i]] | used[9 + col_of[i]] | used[18 + box_of[i]])
            if pop[free] < best_n:
                best_k, best_free, best_n = k, free, pop[free]
                if best_n <= 1:
                    break
        if best_n == 0:
            return
        empty[depth], empty[best_k] = empty[best_k], empty[depth]
        i = empty[depth]
        r, c, b = row_of[i], 9 + col_of[i], 18 + box_of[i]
        while best_free and count < limit:
            bit = best_free & -best_free
            best_free ^= bit
            cells[i] = bit.bit_length()
            used[r] |= bit
            used[c] |= bit
            used[b] |= bit
            search(depth + 1)
            used[r] ^= bit
            used[c] ^= bit
            used[b] ^= bit
        cells[i] = 0

    search(0)
    return count, first


def count_solutions(puzzle: np.ndarray, limit: int = 2) -> int:
    """Number of solutions, counted up to `limit`. Raises SudokuError if clues contradict."""
    grid = as_grid(puzzle)
    check_clues(grid)
    return _backtrack(grid, limit)[0]


def solve(puzzle: np.ndarray) -> np.ndarray:
    """Return a solution (the first one found if there are several) as int8 (81,)."""
    grid = as_grid(puzzle)
    check_clues(grid)
    count, first = _backtrack(grid, 1)
    if not count:
        raise SudokuError("puzzle has no solution (no way to fill every blank)")
    return np.array(first, dtype=np.int8)


# ----------------------------------------------------------------------------------------------
# checking predictions


def verify(predictions: np.ndarray, puzzles: np.ndarray) -> np.ndarray:
    """Bool (N,): prediction is a complete valid Sudoku AND keeps every clue of its puzzle."""
    pred = _as_batch(predictions, "predictions").astype(np.int64)
    puz = _as_batch(puzzles, "puzzles").astype(np.int64)
    if pred.shape != puz.shape:
        raise SudokuError(f"predictions {pred.shape} and puzzles {puz.shape} differ in shape")
    in_range = ((pred >= 1) & (pred <= 9)).all(axis=1)
    bits = np.left_shift(1, np.clip(pred, 1, 9) - 1)
    units_full = (np.bitwise_or.reduce(bits[:, UNITS], axis=2) == FULL).all(axis=1)
    clues_kept = ((puz == 0) | (pred == puz)).all(axis=1)
    return in_range & units_full & clues_kept


def explain(prediction: np.ndarray, puzzle: np.ndarray) -> list[str]:
    """Human-readable problems of one predicted grid; empty iff verify() accepts it."""
    pred = np.asarray(prediction).reshape(-1)
    puz = as_grid(puzzle)
    if pred.size != 81:
        return [f"expected 81 cells, got {pred.size}"]
    problems = []
    for i in range(81):
        v, clue = int(pred[i]), int(puz[i])
        if v == 0:
            problems.append(f"cell {cell_name(i)} is blank")
        elif not 1 <= v <= 9:
            problems.append(f"cell {cell_name(i)} has invalid value {v}")
        elif clue and v != clue:
            problems.append(f"cell {cell_name(i)} is {v} but the clue says {clue}")
    for u, cells in enumerate(UNITS):
        counts = np.bincount(np.clip(pred[cells], 0, 10), minlength=11)
        for digit in range(1, 10):
            if counts[digit] > 1:
                times = "twice" if counts[digit] == 2 else f"{counts[digit]} times"
                problems.append(f"{_UNIT_NAMES[u]} has {digit} {times}")
    return problems


# ----------------------------------------------------------------------------------------------
# batched candidate propagation. States are stored cell-major, (81, M) uint16 masks, so every
# numpy op runs along the long, contiguous batch axis.

_ROW_OF = np.arange(81) // 9
_COL_OF = 9 + np.arange(81) % 9
_BOX_OF = 18 + (np.arange(81) // 27) * 3 + (np.arange(81) % 9) // 3
_popcount = getattr(np, "bitwise_count", _POP.__getitem__)  # numpy >= 2 has a fast ufunc


def _candidates(grids: np.ndarray) -> np.ndarray:
    """(M, 81) grids -> (81, M) masks: givens are single bits, blanks allow every digit."""
    c = _BIT[grids.T]
    c[grids.T == 0] = FULL
    return c


def _once_twice(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit (27, M): bits present in at least one / at least two of its cells."""
    u = c[_UNITS_T]  # (9, 27, M)
    once = u[0].copy()
    twice = np.zeros_like(once)
    for k in range(1, 9):
        twice |= once & u[k]
        once |= u[k]
    return once, twice


def _spread(per_unit: np.ndarray) -> np.ndarray:
    """(27, M) unit values -> (81, M): OR of each cell's row, column and box values."""
    return per_unit[_ROW_OF] | per_unit[_COL_OF] | per_unit[_BOX_OF]


def _others(a: np.ndarray, axis: int) -> np.ndarray:
    """For an axis of length 3: OR of the two other entries."""
    return np.roll(a, 1, axis) | np.roll(a, 2, axis)


def _singles_step(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One round of naked + hidden singles. Returns (new masks, contradiction flags (M,))."""
    single = np.where(_popcount(c) == 1, c, 0).astype(np.uint16)
    s_once, s_twice = _once_twice(single)
    c_once, c_twice = _once_twice(c)
    # a placed digit leaves its peers; a digit placed twice in a unit empties both cells
    elim = (_spread(s_once) & ~single) | _spread(s_twice)
    hidden = c & _spread(c_once & ~c_twice)  # the only place for a digit in some unit
    new = np.where(hidden != 0, hidden, c) & ~elim
    bad = (new == 0).any(axis=0) | (c_once != FULL).any(axis=0)
    return new, bad


def _locked(lines: np.ndarray) -> np.ndarray:
    """Pointing + claiming eliminations for a (9 lines, 9 positions, M) view (rows or columns)."""
    m = lines.shape[-1]
    seg = np.bitwise_or.reduce(lines.reshape(3, 3, 3, 3, m), axis=3)  # (band, line, stack, M)
    pointing = seg & ~_others(seg, 1)  # digits of a box confined to this line
    claiming = seg & ~_others(seg, 2)  # digits of a line confined to this box
    elim = _others(pointing, 2) | _others(claiming, 1)
    return np.broadcast_to(elim[:, :, :, None], (3, 3, 3, 3, m)).reshape(9, 9, m)


def _intermediate_step(c: np.ndarray) -> np.ndarray:
    """One round of locked candidates + naked pairs."""
    m = c.shape[1]
    grid = c.reshape(9, 9, m)
    elim = (_locked(grid) | _locked(grid.transpose(1, 0, 2)).transpose(1, 0, 2)).reshape(81, m)
    u = c[UNITS]  # (27, 9, M)
    pair = _popcount(u) == 2
    same = (u[:, :, None] == u[:, None]) & pair[:, :, None] & pair[:, None]
    same &= ~np.eye(9, dtype=bool)[:, :, None]
    pairs = np.where(same.any(axis=2), u, 0).astype(np.uint16)
    pair_elim = np.bitwise_or.reduce(pairs, axis=1)[:, None] & ~pairs  # spare the pair itself
    elim |= pair_elim[:9].reshape(81, m)
    elim |= pair_elim[9:18].transpose(1, 0, 2).reshape(81, m)
    elim |= pair_elim[18:].reshape(81, m)[_FROM_BOXES]
    return c & ~elim


def _propagate(
    c: np.ndarray, level: int, target: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the techniques of `level` (0 or 1) to (81, M) masks until nothing changes.

    If `target` (M,) cell indices is given, a state also stops once its target cell is decided.
    Returns (masks, contradiction flags (M,)).
    """
    c = c.copy()
    bad = np.zeros(c.shape[1], dtype=bool)
    active = np.arange(c.shape[1])
    while len(active):
        cur = c[:, active]
        new, b = _singles_step(cur)
        changed = (new != cur).any(axis=0)
        if level >= 1:
            stuck = np.flatnonzero(~changed & ~b & (_popcount(new) > 1).any(axis=0))
            if len(stuck):
                more = _intermediate_step(new[:, stuck])
                changed[stuck] = (more != new[:, stuck]).any(axis=0)
                new[:, stuck] = more
        c[:, active] = new
        bad[active] = b
        done = b | ~changed
        if target is not None:
            done |= _popcount(new[target[active], np.arange(len(active))]) == 1
        active = active[~done]
    return c, bad


def _search(
    c: np.ndarray, limit: int, rng: np.random.Generator | None = None, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Batched depth-first search with singles propagation on (81, M) masks.

    Counts solutions of every state up to `limit` and returns (counts (M,), first solution as
    int8 (M, 81), zeros where none). With `rng` the branch digit is random and the search is
    strictly depth-first, so a first solution comes fast; without, small blocks on top of the
    stack are merged, since exhaustive searches run faster in bigger batches.
    """
    m = c.shape[1]
    counts = np.zeros(m, dtype=np.int64)
    first = np.zeros((m, 81), dtype=np.int8)
    stack = [(c, np.arange(m))]
    while stack:
        c, origin = stack.pop()
        while rng is None and stack and len(origin) + len(stack[-1][1]) <= block:
            more, more_origin = stack.pop()
            c, origin = np.concatenate([c, more], axis=1), np.concatenate([origin, more_origin])
        if len(origin) > block:
            stack.append((c[:, block:], origin[block:]))
            c, origin = c[:, :block], origin[:block]
        keep = counts[origin] < limit
        c, bad = _propagate(c[:, keep], 0)
        origin = origin[keep]
        pop = _popcount(c)
        solved = ~bad & (pop == 1).all(axis=0)
        if solved.any():
            found, idx = np.unique(origin[solved], return_index=True)
            new = counts[found] == 0
            first[found[new]] = _DIGIT[c[:, solved][:, idx[new]].T]
            np.add.at(counts, origin[solved], 1)
        open_ = ~bad & ~solved & (counts[origin] < limit)
        c, origin, pop = c[:, open_], origin[open_], pop[:, open_]
        if not len(origin):
            continue
        # branch on the cell with fewest candidates: either it takes `bit`, or it doesn't
        states = np.arange(len(origin))
        cell = np.where(pop > 1, pop, 10).argmin(axis=0)
        mask = c[cell, states].astype(np.int64)
        if rng is None:
            bit = mask & -mask
        else:
            has = (mask[:, None] >> np.arange(9)) & 1
            bit = 1 << np.where(has == 1, rng.random((len(origin), 9)), -1.0).argmax(axis=1)
        take, skip = c.copy(), c
        take[cell, states] = bit
        skip[cell, states] = mask & ~bit
        stack.append((skip, origin))
        stack.append((take, origin))
    return np.minimum(counts, limit), first


# ----------------------------------------------------------------------------------------------
# generator


def _permutations(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Random permutations of range(k) along a new last axis."""
    return rng.random((*shape, k)).argsort(axis=-1)


def _line_permutations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 9) random orders of rows (or columns) that keep bands (stacks) together."""
    bands = _permutations(rng, (n,), 3)[:, :, None]
    within = _permutations(rng, (n, 3), 3)
    return (bands * 3 + within).reshape(n, 9)


def _random_symmetry(grids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a random validity-preserving transform to each grid: shuffle bands, rows within
    bands, stacks, columns within stacks, maybe transpose, relabel digits."""
    n = len(grids)
    rows, cols = _line_permutations(rng, n), _line_permutations(rng, n)
    idx = rows[:, :, None] * 9 + cols[:, None, :]
    idx = np.where(rng.random(n)[:, None, None] < 0.5, idx, idx.transpose(0, 2, 1))
    out = np.take_along_axis(grids, idx.reshape(n, 81), axis=1)
    relabel = np.concatenate([np.zeros((n, 1), np.int64), 1 + _permutations(rng, (n,), 9)], 1)
    return np.take_along_axis(relabel, out.astype(np.int64), axis=1).astype(np.int8)


def random_solutions(n: int, rng: np.random.Generator) -> np.ndarray:
    """n random complete grids: random first row, randomized search, random symmetry."""
    grids = np.zeros((n, 81), dtype=np.int8)
    grids[:, :9] = 1 + _permutations(rng, (n,), 9)
    counts, first = _search(_candidates(grids), limit=1, rng=rng)
    assert counts.all(), "every first row can be completed"
    return _random_symmetry(first, rng)


def _still_ok(trial: np.ndarray, cell: np.ndarray, value: np.ndarray, level: int) -> np.ndarray:
    """Is each trial puzzle (one cell just blanked) still solvable at `level`?"""
    states = np.arange(len(trial))
    c = _candidates(trial)
    if level < 2:  # solvable iff the techniques can recover the blanked cell
        c, _ = _propagate(c, level, target=cell)
        return _popcount(c[cell, states]) == 1
    # unique iff no solution puts a different digit in the blanked cell
    c[cell, states] = FULL & ~_BIT[value]
    counts, _ = _search(c, limit=1)
    return counts == 0


def _dig(
    solutions: np.ndarray, level: int, min_givens: int, rng: np.random.Generator
) -> np.ndarray:
    """Blank cells in a random order while the puzzle stays solvable at `level`."""
    n = len(solutions)
    puzzles = solutions.copy()
    order = _permutations(rng, (n,), 81)
    givens = np.full(n, 81)
    for t in range(81):
        act = np.flatnonzero(givens > min_givens)
        if not len(act):
            break
        cell = order[act, t]
        trial = puzzles[act]
        trial[np.arange(len(act)), cell] = 0
        ok = _still_ok(trial, cell, solutions[act, cell], level)
        puzzles[act[ok], cell[ok]] = 0
        givens[act[ok]] -= 1
    return puzzles


def _generate_chunk(
    n: int, seed: int, chunk: int, level: int, min_givens: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk,)))
    solutions = random_solutions(n, rng)
    return _dig(solutions, level, min_givens, rng), solutions


def generate(
    n: int,
    seed: int,
    techniques: str = "singles",
    min_givens: int = 17,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate n puzzles with unique solutions: (puzzles, solutions), both int8 (n, 81).

    techniques: "singles" (solvable by naked/hidden singles), "intermediate" (+ locked
    candidates and naked pairs) or "any" (unique, may need guessing). Output depends only on
    (n, seed, techniques, min_givens); `workers` processes (default: all CPUs) share the chunks.
    """
    if techniques not in TECHNIQUES:
        raise ValueError(f"techniques must be one of {TECHNIQUES}, got {techniques!r}")
    if not 0 <= min_givens <= 81:
        raise ValueError(f"min_givens must be in 0..81, got {min_givens}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    level = TECHNIQUES.index(techniques)
    sizes = [min(CHUNK_SIZE, n - start) for start in range(0, n, CHUNK_SIZE)]
    jobs = [(size, seed, i, level, min_givens) for i, size in enumerate(sizes)]
    workers = min((os.cpu_count() or 1) if workers is None else workers, len(jobs))
    if workers <= 1:
        results = [_generate_chunk(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_generate_chunk, *zip(*jobs, strict=True)))
    empty = np.zeros((0, 81), dtype=np.int8)
    puzzles = np.concatenate([p for p, _ in results]) if results else empty
    solutions = np.concatenate([s for _, s in results]) if results else empty
    return puzzles, solutions


def load_or_generate(
    n: int,
    seed: int,
    techniques: str = "singles",
    min_givens: int = 17,
    cache_dir: str | Path = "data/sudoku",
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """generate(), cached as an .npz in cache_dir (written atomically)."""
    path = Path(cache_dir) / (
        f"sudoku_v{_CACHE_VERSION}_{techniques}_n{n}_seed{seed}_min{min_givens}.npz"
    )
    if path.exists():
        with np.load(path) as data:
            return data["puzzles"], data["solutions"]
    puzzles, solutions = generate(n, seed, techniques, min_givens, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, puzzles=puzzles, solutions=solutions)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return puzzles, solutions


# ----------------------------------------------------------------------------------------------
# difficulty


def techniques_needed_batch(puzzles: np.ndarray) -> np.ndarray:
    """For each puzzle: "singles", "intermediate" or "guessing" (= neither technique set solves
    it, which includes puzzles with several or no solutions)."""
    grids = _as_batch(puzzles, "puzzles")
    if grids.size and (grids.min() < 0 or grids.max() > 9):
        raise SudokuError("puzzles: cell values must be 0-9")
    out = np.full(len(grids), "guessing", dtype="<U12")
    c, bad = _propagate(_candidates(grids), 0)
    singles = ~bad & (_popcount(c) == 1).all(axis=0)
    rest = np.flatnonzero(~singles)
    c, bad = _propagate(c[:, rest], 1)
    out[rest[~bad & (_popcount(c) == 1).all(axis=0)]] = "intermediate"
    out[singles] = "singles"
    return out
