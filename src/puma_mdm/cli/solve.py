"""``puma solve``: Sudoku puzzles solved by a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.bundled import default_model
from puma_mdm.cli.args import (
    add_decoding_arguments,
    add_trust_argument,
    check_cache_option,
    decoding_options,
)


def cmd_solve(args: argparse.Namespace) -> int:
    from puma_mdm.plots import sudoku_order_png
    from puma_mdm.pretrained import load_trained
    from puma_mdm.solve import check_solvable, read_input, solve_with_model
    from puma_mdm.tasks.sudoku_formats import pretty

    options = decoding_options(args)
    puzzles = read_input(args.puzzle)
    check_solvable(puzzles)
    model, task = load_trained(
        args.model, expect_task="sudoku", trust_remote_code=args.trust_remote_code
    )
    check_cache_option(model, args)
    solutions = solve_with_model(model, task, puzzles, **options)
    for i, s in enumerate(solutions):
        if len(solutions) > 1:
            print(f"puzzle {i + 1}:")
        print(pretty(s.grid))
        if s.problems:
            print("the model's answer is INVALID: " + "; ".join(s.problems))
        else:
            print(f"solved (valid and agrees with every clue; {s.nfe} network calls)")
        if args.png:
            path = Path(args.png)
            if len(solutions) > 1:
                path = path.with_name(f"{path.stem}-{i + 1}{path.suffix}")
            sudoku_order_png(s.grid, s.puzzle, s.order, path, f"{args.policy} decoding order")
            print(f"decoding order written to {path}")
    return 0 if all(not s.problems for s in solutions) else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``solve`` to the ``puma`` command's sub-parsers."""
    p = sub.add_parser(
        "solve",
        help="solve Sudoku puzzles with a trained model",
        description=(
            "Solve a puzzle (81 characters, '.' or '0' for blanks) or every puzzle in a file "
            "(81-char lines, Kaggle CSV, sudoku-extreme CSV or Shah et al. format)."
        ),
    )
    p.add_argument("puzzle", type=A.utf8_text, help="the puzzle text, or a file of puzzles")
    p.add_argument(
        "--model",
        default=str(default_model()),
        help="model directory (default: the shipped Sudoku model)",
    )
    add_decoding_arguments(p, "cells")
    p.add_argument(
        "--png", type=A.output_file, help="write a picture of the decoding order to this file"
    )
    add_trust_argument(p)
    p.set_defaults(func=cmd_solve)
