"""Writing result and config files so that a killed process or a power cut never leaves a torn
one: write a temporary file, fsync it, rename it into place, fsync the directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or directory's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file and directory under ``directory``, the directory itself last."""
    for path in sorted(Path(directory).rglob("*"), reverse=True):
        if path.is_file() or path.is_dir():
            fsync_path(path)
    fsync_path(directory)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an exception
    the file is fsynced and renamed onto ``path`` (then the directory is fsynced), otherwise
    removed, so ``path`` is always the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        fsync_path(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically and durably (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(data, indent=2))
