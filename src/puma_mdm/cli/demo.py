"""``puma demo``: argument parsing; the work is in demo.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.bundled import bundled_config, default_model
from puma_mdm.cli.args import add_overrides_argument


def cmd_demo(args: argparse.Namespace) -> int:
    from puma_mdm.demo import run_demo

    return run_demo(args, bundled_config("sudoku"), Path(args.model))


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``puma`` command's sub-parsers."""
    p = sub.add_parser("demo", help="generate puzzles, train briefly, evaluate and solve")
    p.add_argument(
        "--steps", type=A.positive_int, default=800, help="training steps of the fresh model"
    )
    p.add_argument(
        "--n-eval", type=A.positive_int, default=500, help="held-out puzzles for the policy table"
    )
    p.add_argument(
        "--model",
        type=A.existing_path,
        default=str(default_model()),
        help="trained model to evaluate",
    )
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/demo",
        help="where the demo writes its outputs",
    )
    add_overrides_argument(p, "overrides for the training")
    p.set_defaults(func=cmd_demo)
