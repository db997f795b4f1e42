import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_mdm.tasks import sudoku_formats as sf
from puma_mdm.tasks.sudoku_puzzles import SudokuError, generate

PUZZLES, SOLUTIONS = generate(12, seed=3, techniques="singles", workers=1)
PUZZLE = PUZZLES[0]
LINE = sf.format_grid(PUZZLE)

grids = st.lists(st.integers(0, 9), min_size=81, max_size=81).map(
    lambda cells: np.array(cells, dtype=np.int8)
)


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == np.int8 and a.shape == b.shape and (a == b).all()


# -- single grids --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(grids)
def test_parse_format_pretty_round_trip(grid):
    text = sf.format_grid(grid)
    assert len(text) == 81 and set(text) <= set(".123456789")
    assert_same(sf.parse_grid(text), grid)
    assert_same(sf.parse_grid(text.replace(".", "0")), grid)
    assert_same(sf.parse_grid(sf.pretty(grid)), grid)


def test_pretty_layout():
    lines = sf.pretty(PUZZLE).splitlines()
    assert len(lines) == 11 and lines[3] == lines[7] == "------+-------+------"
    assert all(
        len(line) == 21 and line.count("|") == 2 for i, line in enumerate(lines) if i % 4 != 3
    )


def test_parse_grid_errors():
    with pytest.raises(SudokuError, match="expected 81 cells, got 80"):
        sf.parse_grid(LINE[:80])
    bad = LINE[:11] + "x" + LINE[12:]
    with pytest.raises(SudokuError) as err:
        sf.parse_grid(bad)
    assert str(err.value) == (
        "line 1, column 12: illegal character 'x' (use 1-9 for digits and '.' or '0' for blanks)"
    )
    with pytest.raises(SudokuError, match="line 2, column 3: illegal character 'a'"):
        sf.parse_grid(LINE[:9] + "\n  a" + LINE[10:])


# -- round trips through every writer ----------------------------------------------------------


@pytest.mark.parametrize("with_solutions", [False, True])
def test_lines_round_trip(tmp_path, with_solutions):
    path = tmp_path / "puzzles.txt"
    solutions = SOLUTIONS if with_solutions else None
    sf.write_lines(path, PUZZLES, solutions)
    for data in (sf.read_lines(path), sf.read_puzzles(path)):
        assert data.source_format == "lines"
        assert_same(data.puzzles, PUZZLES)
        if with_solutions:
            assert_same(data.solutions, SOLUTIONS)
        else:
            assert data.solutions is None


def test_lines_comments_blanks_and_space_separator(tmp_path):
    path = tmp_path / "puzzles.txt"
    p = [sf.format_grid(x).replace(".", "0") for x in PUZZLES[:2]]
    s = [sf.format_grid(x) for x in SOLUTIONS[:2]]
    path.write_text(f"# header comment\n\n{p[0]} {s[0]}\n   \n{p[1]}\t{s[1]}\n")
    data = sf.read_puzzles(path)
    assert_same(data.puzzles, PUZZLES[:2])
    assert_same(data.solutions, SOLUTIONS[:2])


def test_kaggle_round_trip(tmp_path):
    path = tmp_path / "sudoku.csv"
    sf.write_kaggle_csv(path, PUZZLES, SOLUTIONS)
    assert path.read_text().splitlines()[0] == "quizzes,solutions"
    assert "." not in path.read_text()
    for data in (sf.read_kaggle_csv(path), sf.read_puzzles(path)):
        assert data.source_format == "kaggle"
        assert_same(data.puzzles, PUZZLES)
        assert_same(data.solutions, SOLUTIONS)


def test_extreme_round_trip(tmp_path):
    path = tmp_path / "train.csv"
    ratings = np.arange(len(PUZZLES)) * 7
    sources = [f"src{i}" for i in range(len(PUZZLES))]
    sf.write_extreme_csv(path, PUZZLES, SOLUTIONS, ratings, sources)
    assert path.read_text().splitlines()[0] == "source,question,answer,rating"
    for data in (sf.read_extreme_csv(path), sf.read_puzzles(path)):
        assert data.source_format == "extreme"
        assert_same(data.puzzles, PUZZLES)
        assert_same(data.solutions, SOLUTIONS)
        assert data.ratings.tolist() == ratings.tolist()
        assert data.sources == sources


@pytest.mark.parametrize("name", ["shah.txt", "shah.npy"])
def test_shah_round_trip(tmp_path, name):
    path = tmp_path / name
    rng = np.random.default_rng(0)
    order = np.stack([rng.permutation(81) for _ in PUZZLES])
    sf.write_shah(path, PUZZLES, SOLUTIONS, order=order)
    for data in (sf.read_shah(path), sf.read_puzzles(path)):
        assert data.source_format == "shah"
        assert_same(data.puzzles, PUZZLES)
        assert_same(data.solutions, SOLUTIONS)
        givens = (PUZZLES > 0).sum(axis=1)
        for n, g in enumerate(givens):  # givens first, then the blanks in the requested order
            assert (PUZZLES[n, data.order[n, :g]] > 0).all()
            expected = [i for i in order[n] if PUZZLES[n, i] == 0]
            assert data.order[n, g:].tolist() == expected
        assert (data.strategies == 0).all()
    sf.write_shah(path, data.puzzles, data.solutions, data.order, data.strategies + 2)
    again = sf.read_shah(path)
    assert (again.order == data.order).all() and (again.strategies == 2).all()


def test_shah_default_layout(tmp_path):
    path = tmp_path / "shah.txt"
    sf.write_shah(path, PUZZLES[:1], SOLUTIONS[:1])
    values = [int(v) for v in path.read_text().split(",")]
    assert len(values) == 1 + 81 * 4
    g = int((PUZZLE > 0).sum())
    quads = np.array(values[1:]).reshape(81, 4)
    cells = quads[:, 0] * 9 + quads[:, 1]
    assert values[0] == g
    assert cells[:g].tolist() == np.flatnonzero(PUZZLE).tolist()
    assert cells[g:].tolist() == np.flatnonzero(PUZZLE == 0).tolist()
    assert (quads[:, 2] == SOLUTIONS[0][cells]).all() and (quads[:, 3] == 0).all()


# -- bad inputs --------------------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "bad.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path) -> str:
    with pytest.raises(SudokuError) as err:
        sf.read_puzzles(path)
    return str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(SudokuError, match=r"no such file: .*nope\.txt"):
        sf.read_puzzles(path)
    with pytest.raises(SudokuError, match="no such file"):
        sf.read_shah(tmp_path / "nope.npy")


def test_bad_line_files(tmp_path):
    good = sf.format_grid(PUZZLES[1])
    path = write(tmp_path, f"{good}\n{good}\n{LINE[:80]}\n")
    assert error_of(path) == f"{path}: line 3: expected 81 cells, got 80"
    path = write(tmp_path, f"# comment\n{good}\n{LINE[:11]}x{LINE[12:]}\n")
    assert error_of(path) == (
        f"{path}: line 3, column 12: illegal character 'x' "
        "(use 1-9 for digits and '.' or '0' for blanks)"
    )
    path = write(tmp_path, f"{good}\n{good},{LINE}\n")
    assert "line 2: expected only a puzzle" in error_of(path)
    path = write(tmp_path, f"{good} {good} {good}\n")
    assert "line 1: expected a puzzle and optionally a solution, got 3 fields" in error_of(path)
    path = write(tmp_path, "\n# nothing\n")
    assert "no puzzles found" in error_of(path)


def test_contradictory_clues_and_wrong_solutions(tmp_path):
    bad = PUZZLE.copy()
    bad[[18, 24]] = 0
    bad[18], bad[24] = 5, 5
    path = write(tmp_path, f"{LINE}\n\n{sf.format_grid(bad)}\n")
    assert error_of(path) == (
        f"{path}: line 3: clues contradict: digit 5 appears twice in row 3 (cells r3c1, r3c7)"
    )
    wrong = SOLUTIONS[0].copy()
    wrong[[0, 1]] = wrong[[1, 0]]
    path = write(tmp_path, f"{LINE},{sf.format_grid(wrong)}\n")
    assert f"{path}: line 1: the solution is wrong" in error_of(path)


def test_bad_csv_files(tmp_path):
    sol = sf.format_grid(SOLUTIONS[0])
    path = write(tmp_path, f"quizzes,solutions\n{LINE},{sol}\n{LINE}\n", "k.csv")
    assert error_of(path) == f"{path}: line 3: expected 2 fields, got 1"
    path = write(tmp_path, f"quizzes,solutions\n{LINE},{sol[:-1]}\n", "k.csv")
    assert error_of(path) == f"{path}: line 2: expected 81 cells, got 80"
    path = write(tmp_path, f"quizzes,solutions\n{LINE},{sol[:-1]}?\n", "k.csv")
    assert f"{path}: line 2, column 163: illegal character '?'" in error_of(path)
    path = write(tmp_path, f"source,question,answer,rating\nx,{LINE},{sol},high\n", "e.csv")
    assert error_of(path) == f"{path}: line 2: rating 'high' is not an integer"
    with pytest.raises(SudokuError, match="line 1: expected the header 'quizzes,solutions'"):
        sf.read_kaggle_csv(write(tmp_path, f"{LINE},{sol}\n", "k.csv"))


def test_bad_shah_files(tmp_path):
    path = tmp_path / "shah.txt"
    sf.write_shah(path, PUZZLES[:3], SOLUTIONS[:3])
    lines = path.read_text().splitlines()
    short = ",".join(lines[1].split(",")[:-4])
    write(tmp_path, "\n".join([lines[0], short, lines[2]]), "shah.txt")
    assert error_of(path) == f"{path}: line 2: expected 325 integers (1 + 81*4), got 321"
    fields = lines[2].split(",")
    fields[5] = fields[1]  # step 2 repeats the cell of step 1
    fields[6] = fields[2]
    write(tmp_path, "\n".join([lines[0], lines[1], ",".join(fields)]), "shah.txt")
    assert error_of(path) == f"{path}: line 3: cells must each appear once"
    fields = lines[0].split(",")
    fields[3] = "0"  # value of step 1
    write(tmp_path, ",".join(fields), "shah.txt")
    assert error_of(path) == f"{path}: line 1: step 1: value must be 1-9"
    fields[3] = "z"
    write(tmp_path, ",".join(fields), "shah.txt")
    assert error_of(path) == f"{path}: line 1: 'z' is not an integer"
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), dtype=np.int64))
    assert "expected an integer array of shape (N, 325)" in error_of(tmp_path / "bad.npy")


def test_writers_refuse_wrong_solutions(tmp_path):
    with pytest.raises(SudokuError, match="solution 1 is wrong"):
        sf.write_kaggle_csv(tmp_path / "k.csv", PUZZLES[:2], SOLUTIONS[[0, 0]])
    with pytest.raises(SudokuError, match="permutation"):
        sf.write_shah(tmp_path / "s.txt", PUZZLES[:1], SOLUTIONS[:1], order=np.zeros((1, 81), int))
