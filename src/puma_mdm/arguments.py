"""Command-line values checked where they enter: ``argparse`` types that turn a bad value into
one ``error:`` line and exit code 2 before any work starts, and the parser that prints it so."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``error: puma eval: ...``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _number(kind: type, text: str):
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        value = _number(float, text)
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{value} is not in {bracket}{low}, {high}]")
        return value

    parse.__name__ = "number"
    return parse


threshold = float_in(0.0, 1.0, low_open=True)
nonnegative_float = float_in(0.0, math.inf)
positive_float = float_in(0.0, math.inf, low_open=True)


def device_problem(name: str) -> str | None:
    """Why ``name`` (auto, cpu, cuda, cuda:N) cannot be used on this machine, or None."""
    import torch

    if name in ("auto", "cpu"):
        return None
    index = name.removeprefix("cuda:") if name.startswith("cuda:") else "0"
    if not (name == "cuda" or name.startswith("cuda:")) or not index.isdigit():
        return f"{name!r} is not a device: use auto, cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        return f"{name!r}: this machine has no CUDA device (use cpu or auto)"
    if int(index) >= torch.cuda.device_count():
        return f"{name!r}: there are only {torch.cuda.device_count()} CUDA device(s)"
    return None


def device(text: str) -> str:
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def utf8_text(text: str) -> str:
    """Text that can be encoded (a command line with bytes that are not UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("the text is not valid UTF-8") from None
    return text


def one_of(choices) -> Callable[[str], str]:
    """A name from ``choices`` (shown in the error)."""
    names = sorted(choices)

    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(names)}")
        return text

    parse.__name__ = "name"
    return parse


def list_of(item: Callable[[str], object], allow_empty: bool = False) -> Callable[[str], list]:
    """Comma-separated values, each checked by ``item``."""

    def parse(text: str) -> list:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if not values and not allow_empty:
            raise argparse.ArgumentTypeError("give at least one value")
        return values

    parse.__name__ = "list"
    return parse


def output_file(text: str) -> str:
    """A file this process can create or replace (its directory may not exist yet)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    _check_writable(path.parent, text)
    return text


def output_dir(text: str) -> str:
    """A directory this process can create or write into."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    _check_writable(path, text)
    return text


def _check_writable(directory: Path, text: str) -> None:
    existing = directory.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {existing} is not writable")


def existing_path(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return text


def key_value(text: str) -> str:
    """A dot-list override ``key=value``."""
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form key=value")
    return text
