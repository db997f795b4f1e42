"""``puma``: train, evaluate and sample masked diffusion models from the command line.

One module per command (or group of commands) adds its sub-parser and does its work; args.py
holds the options several commands share. Here: the parser, and errors turned into exit codes."""

from __future__ import annotations

import argparse
import sys

from puma_mdm import arguments as A
from puma_mdm.cli import analyze, bench, configs, demo, evaluate, export, sample, solve, train
from puma_mdm.errors import PumaError

COMMANDS = (train, evaluate, solve, demo, bench, analyze, export, sample, configs)  # help order


def build_parser() -> argparse.ArgumentParser:
    """The ``puma`` parser; every command sets ``func``, which returns the exit code."""
    parser = A.Parser(
        prog="puma",
        description="Masked diffusion models trained with PUMA (progressive unmasking).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from puma_mdm.train.trainer import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad option (one `error:` line already printed)
        return int(stop.code or 0)
    try:
        return args.func(args)
    except PumaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return 130
