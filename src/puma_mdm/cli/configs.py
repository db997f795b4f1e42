"""``puma configs``: the names of the bundled configs."""

from __future__ import annotations

import argparse

from puma_mdm.bundled import bundled_config_names


def cmd_configs(args: argparse.Namespace) -> int:
    for name in bundled_config_names():
        print(name)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``configs`` to the ``puma`` command's sub-parsers."""
    p = sub.add_parser("configs", help="list the bundled configs")
    p.set_defaults(func=cmd_configs)
