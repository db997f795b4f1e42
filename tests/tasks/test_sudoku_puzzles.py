import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_mdm.tasks import sudoku_puzzles as sp
from puma_mdm.tasks.sudoku_puzzles import SudokuError

# fmt: off
EASY = np.array([  # solvable by singles
    5, 3, 0, 0, 7, 0, 0, 0, 0,
    6, 0, 0, 1, 9, 5, 0, 0, 0,
    0, 9, 8, 0, 0, 0, 0, 6, 0,
    8, 0, 0, 0, 6, 0, 0, 0, 3,
    4, 0, 0, 8, 0, 3, 0, 0, 1,
    7, 0, 0, 0, 2, 0, 0, 0, 6,
    0, 6, 0, 0, 0, 0, 2, 8, 0,
    0, 0, 0, 4, 1, 9, 0, 0, 5,
    0, 0, 0, 0, 8, 0, 0, 7, 9,
], dtype=np.int8)
HARD = np.array([int(ch) for ch in (  # needs guessing
    "800000000"
    "003600000"
    "070090200"
    "050007000"
    "000045700"
    "000100030"
    "001000068"
    "008500010"
    "090000400"
)], dtype=np.int8)
# fmt: on


# -- an independent reference solver (plain recursive backtracking) ------------------------------


def peers_of(i: int) -> set[int]:
    r, c = divmod(i, 9)
    box = [(r // 3 * 3 + a) * 9 + c // 3 * 3 + b for a in range(3) for b in range(3)]
    return ({r * 9 + k for k in range(9)} | {k * 9 + c for k in range(9)} | set(box)) - {i}


PEERS = [peers_of(i) for i in range(81)]


def reference_count(grid, limit: int = 2) -> int:
    """Count solutions up to `limit`, filling the cell with fewest options first."""
    grid = [int(v) for v in grid]

    def options(i: int) -> set[int]:
        return set(range(1, 10)) - {grid[j] for j in PEERS[i]}

    def count() -> int:
        blanks = [i for i in range(81) if grid[i] == 0]
        if not blanks:
            return 1
        i = min(blanks, key=lambda j: len(options(j)))
        total = 0
        for v in options(i):
            grid[i] = v
            total += count()
            grid[i] = 0
            if total >= limit:
                break
        return total

    return count()


def naive_singles(grid) -> np.ndarray:
    """Fill naked and hidden singles one at a time until stuck."""
    grid = [int(v) for v in grid]
    units = [list(u) for u in sp.UNITS]
    progress = True
    while progress:
        progress = False
        opts = {
            i: set(range(1, 10)) - {grid[j] for j in PEERS[i]} for i in range(81) if not grid[i]
        }
        for i, o in opts.items():
            if len(o) == 1:
                grid[i] = o.pop()
                progress = True
                break
        if progress:
            continue
        for unit in units:
            for d in range(1, 10):
                spots = [i for i in unit if i in opts and d in opts[i]]
                if len(spots) == 1 and d not in [grid[i] for i in unit]:
                    grid[spots[0]] = d
                    progress = True
                    break
            if progress:
                break
    return np.array(grid, dtype=np.int8)


# -- generator ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sp.TECHNIQUES)
def generated(request):
    puzzles, solutions = sp.generate(30, seed=11, techniques=request.param, workers=1)
    return request.param, puzzles, solutions


def test_generated_puzzles_are_unique_and_match(generated):
    _, puzzles, solutions = generated
    assert puzzles.shape == solutions.shape == (30, 81)
    assert puzzles.dtype == solutions.dtype == np.int8
    assert ((puzzles == 0) | (puzzles == solutions)).all()
    assert sp.verify(solutions, puzzles).all()
    for p, s in zip(puzzles, solutions, strict=True):
        assert reference_count(p) == 1
        assert reference_count(np.where(p > 0, p, s)) == 1  # the solution itself is valid
        assert (sp.solve(p) == s).all()
    assert ((puzzles > 0).sum(axis=1) >= 17).all()


def test_generated_difficulty(generated):
    techniques, puzzles, solutions = generated
    needed = sp.techniques_needed_batch(puzzles)
    if techniques == "singles":
        assert (needed == "singles").all()
        for p, s in zip(puzzles, solutions, strict=True):
            assert (naive_singles(p) == s).all()
    elif techniques == "intermediate":
        assert set(needed) <= {"singles", "intermediate"}
        assert "intermediate" in set(needed)  # some need more than singles
    else:
        assert "guessing" in set(needed)


def test_solutions_are_diverse(generated):
    _, _, solutions = generated
    assert len({s.tobytes() for s in solutions}) == len(solutions)
    assert len({s[:9].tobytes() for s in solutions}) == len(solutions)


def test_reproducible_and_independent_of_workers(monkeypatch):
    monkeypatch.setattr(sp, "CHUNK_SIZE", 8)  # 3 chunks
    a = sp.generate(20, seed=5, workers=1)
    b = sp.generate(20, seed=5, workers=1)
    c = sp.generate(20, seed=5, workers=2)
    d = sp.generate(20, seed=6, workers=1)
    for x, y in zip(a, b, strict=True):
        assert (x == y).all()
    for x, y in zip(a, c, strict=True):
        assert (x == y).all()
    assert (a[1] != d[1]).any(axis=1).all()


def test_min_givens_and_edge_cases():
    puzzles, _ = sp.generate(5, seed=1, techniques="any", min_givens=30, workers=1)
    assert ((puzzles > 0).sum(axis=1) >= 30).all()
    puzzles, solutions = sp.generate(0, seed=1)
    assert puzzles.shape == solutions.shape == (0, 81)
    with pytest.raises(ValueError, match="techniques"):
        sp.generate(1, seed=1, techniques="hard")


def test_load_or_generate_caches(tmp_path, monkeypatch):
    first = sp.load_or_generate(6, seed=2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(sp, "generate", lambda *a, **k: pytest.fail("cache not used"))
    second = sp.load_or_generate(6, seed=2, cache_dir=tmp_path)
    for x, y in zip(first, second, strict=True):
        assert (x == y).all() and y.dtype == np.int8


# -- solving and clue checks -------------------------------------------------------------------


def test_solve_and_count():
    solution = sp.solve(EASY)
    assert sp.verify(solution, EASY).all()
    assert sp.count_solutions(EASY) == 1
    assert sp.count_solutions(HARD) == 1
    assert reference_count(sp.solve(HARD)) == 1
    empty = np.zeros(81, dtype=np.int8)
    assert sp.count_solutions(empty, limit=2) == 2
    assert sp.count_solutions(EASY.reshape(9, 9)) == 1


def test_unsolvable_and_contradictory():
    stuck = np.zeros(81, dtype=np.int8)
    stuck[:8] = np.arange(1, 9)  # r1c9 must be 9 ...
    stuck[9 * 4 + 8] = 9  # ... but r5c9 is 9
    assert sp.count_solutions(stuck) == 0
    with pytest.raises(SudokuError, match="no solution"):
        sp.solve(stuck)
    bad = np.zeros(81, dtype=np.int8)
    bad[18], bad[24] = 5, 5
    msg = "clues contradict: digit 5 appears twice in row 3 (cells r3c1, r3c7)"
    for fn in (sp.check_clues, sp.solve, sp.count_solutions):
        with pytest.raises(SudokuError) as err:
            fn(bad)
        assert str(err.value) == msg
    bad = np.zeros(81, dtype=np.int8)
    bad[[0, 10]] = 4
    with pytest.raises(SudokuError, match=r"digit 4 appears twice in box 1 \(cells r1c1, r2c2\)"):
        sp.check_clues(bad)
    with pytest.raises(SudokuError, match="r1c2 has value 12"):
        sp.check_clues(np.array([0, 12] + [0] * 79))
    with pytest.raises(SudokuError, match="81 cells"):
        sp.solve(np.zeros(80, dtype=np.int8))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=81, max_size=81).map(np.array))
def test_clues_consistent_agrees_with_check_clues(grid):
    grid = np.where(np.arange(81) % 3 == 0, grid, 0)  # sparse enough to be consistent sometimes
    try:
        sp.check_clues(grid)
        ok = True
    except SudokuError:
        ok = False
    assert sp.clues_consistent(grid[None])[0] == ok


def test_techniques_needed():
    def needed(puzzle):
        return str(sp.techniques_needed_batch(sp.as_grid(puzzle)[None])[0])

    assert needed(EASY) == "singles"
    assert needed(HARD) == "guessing"
    puzzles, _ = sp.generate(30, seed=11, techniques="intermediate", workers=1)
    batch = sp.techniques_needed_batch(puzzles)
    assert needed(puzzles[np.argmax(batch == "intermediate")]) == "intermediate"


# -- verify and explain ------------------------------------------------------------------------


def test_verify():
    solution = sp.solve(EASY)
    assert sp.verify(solution[None], EASY[None]).tolist() == [True]
    swapped = np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9], dtype=np.int8)[solution]  # 1 <-> 2
    assert sp.verify(swapped, np.zeros(81, np.int8)).all()  # still a valid Sudoku ...
    assert (swapped == EASY)[EASY > 0].any()  # ... that keeps some clues ...
    assert not sp.verify(swapped, EASY).any()  # ... but not all of them
    duplicate = solution.copy()
    duplicate[9:18] = duplicate[:9]
    blank = solution.copy()
    blank[40] = 0
    out_of_range = solution.copy()
    out_of_range[3] = 10
    batch = np.stack([solution, swapped, duplicate, blank, out_of_range])
    assert sp.verify(batch, np.tile(EASY, (5, 1))).tolist() == [True, False, False, False, False]
    with pytest.raises(SudokuError, match="shape"):
        sp.verify(batch, EASY[None])


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(1, 10))))
def test_verify_relabelled_solutions(perm):
    solution = sp.solve(EASY)
    relabelled = np.array([0, *perm], dtype=np.int8)[solution]
    assert sp.verify(relabelled, np.zeros(81, np.int8))[0]
    assert sp.verify(relabelled, EASY)[0] == (perm == list(range(1, 10)))


def test_explain():
    solution = sp.solve(EASY)
    assert sp.explain(solution, EASY) == []
    wrong = solution.copy()
    wrong[0] = 0  # r1c1 blank
    wrong[13] = 3  # r2c5 is a clue (9); 3 is also at r2c7 and r7c5
    problems = sp.explain(wrong, EASY)
    assert problems == [
        "cell r1c1 is blank",
        "cell r2c5 is 3 but the clue says 9",
        "row 2 has 3 twice",
        "column 5 has 3 twice",
        "box 2 has 3 twice",
    ]
