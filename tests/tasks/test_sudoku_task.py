import json

import numpy as np
import pytest
import torch

from puma_mdm.cli import main
from puma_mdm.pretrained import load_trained
from puma_mdm.tasks import build_task
from puma_mdm.tasks.sudoku_formats import format_grid, write_lines
from puma_mdm.tasks.sudoku_puzzles import generate
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer


@pytest.fixture(scope="module")
def puzzles():
    return generate(12, seed=3, techniques="singles", workers=1)


@pytest.mark.parametrize("encoding, length", [("infill", 81), ("reference", 162)])
def test_encodings_round_trip(puzzles, encoding, length):
    p, s = puzzles
    task = build_task("sudoku", {"encoding": encoding})
    ex = task.encode(p, s)
    assert ex.x0.shape == (12, length) and task.seq_len == length
    assert np.array_equal(task.puzzles_of(ex), p)
    assert np.array_equal(task.grids_of(ex.x0), s)
    assert task.correct(ex.x0, ex).all()
    clues = (torch.as_tensor(p) != 0).sum(1)
    expected = clues if encoding == "infill" else torch.full_like(clues, 81)
    assert torch.equal(ex.prompt_mask.sum(1), expected)
    x_t = task.masked_inputs(ex)
    assert (x_t[~ex.prompt_mask] == task.mask_id).all()
    assert all(len(t) == length for t in task.position_tables().values())


def test_correct_rejects_a_valid_grid_that_breaks_a_clue(puzzles):
    p, s = puzzles
    task = build_task("sudoku")
    relabel = torch.tensor([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])  # swap digits 1 and 2: still valid
    ex = task.encode(p, s)
    swapped = relabel[ex.x0]
    assert not task.correct(swapped, ex).any()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    overrides = [
        "task.name=sudoku",
        "task.options.n_train=64",
        "task.options.n_eval=8",
        f"task.options.cache_dir={out / 'data'}",
        "task.options.techniques=[singles]",
        "model.dim=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "training.steps=5",
        "training.batch_size=8",
        "training.autocast=fp32",
        "eval.examples=8",
        "logging.progress=false",
        "logging.tensorboard=false",
        f"logging.out_dir={out}",
    ]
    Trainer(load_config(None, overrides)).train()
    return out


def test_solve_runs_end_to_end_and_draws_the_order(tiny_model, puzzles, tmp_path, capsys):
    png = tmp_path / "order.png"
    code = main(
        ["solve", format_grid(puzzles[0][0]), "--model", str(tiny_model), "--png", str(png)]
    )
    out = capsys.readouterr().out
    assert code in (0, 1)  # an untrained model usually answers wrongly, and must say so
    assert ("INVALID" in out) == (code == 1) and "------+" in out
    assert png.stat().st_size > 1000


def test_eval_writes_a_table_for_every_policy(tiny_model, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tiny_model), "--n", "4", "--ks", "1,3", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["policy"], r["k"]) for r in rows if r["k"]} == {
        (p, k) for p in ("random", "top_prob", "margin", "entropy") for k in (1, 3)
    }
    _, task = load_trained(tiny_model)
    blanks = int((~task.eval_examples()[:4].prompt_mask).sum(1).max())
    assert {r["nfe"] for r in rows if r["k"] == 1} == {blanks}
    assert {r["nfe"] for r in rows if r["k"] == 3} == {-(-blanks // 3)}
    assert any(r["threshold"] == 0.9 for r in rows)
    bounded = [r for r in rows if r["entropy_bound"] is not None]
    assert {(r["policy"], r["entropy_bound"]) for r in bounded} == {
        (p, g) for p in ("random", "top_prob", "margin", "entropy") for g in (0.01, 0.1)
    }
    assert all(1 <= r["nfe"] <= blanks for r in bounded)
    assert "margin" in capsys.readouterr().out


def test_eval_reads_a_puzzle_file(tiny_model, puzzles, tmp_path):
    path = tmp_path / "p.txt"
    write_lines(path, puzzles[0], puzzles[1])
    out = tmp_path / "e.json"
    args = ["eval", "--model", str(tiny_model), "--data", str(path), "--policies", "margin"]
    assert main([*args, "--ks", "1", "--thresholds", "", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["n"] == 12


UNSOLVABLE = "12345678." + "........9" + "." * 63


@pytest.mark.parametrize(
    "puzzle, message",
    [
        ("1" * 80, "expected 81 cells, got 80"),
        ("x" + "." * 80, "illegal character 'x'"),
        ("11" + "." * 79, "digit 1 appears twice in row 1"),
        (UNSOLVABLE, "has no solution"),
        ("missing/file.txt", "no such file"),
    ],
)
def test_bad_puzzles_get_one_line_errors(tiny_model, puzzle, message, capsys):
    assert main(["solve", puzzle, "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_or_wrong_task_model_dir(tmp_path, capsys):
    assert main(["solve", "." * 81, "--model", str(tmp_path / "nope")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    sort_run = tmp_path / "sort"
    overrides = [
        "model.dim=16",
        "model.n_layers=1",
        "model.n_heads=2",
        "training.steps=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "eval.examples=4",
        f"logging.out_dir={sort_run}",
    ]
    Trainer(load_config(None, overrides)).train()
    assert main(["solve", "." * 81, "--model", str(sort_run)]) == 2
    assert "task 'sort', not 'sudoku'" in capsys.readouterr().err
    _, task = load_trained(sort_run)
    assert task.name == "sort"
