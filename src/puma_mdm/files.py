"""Writing result and config files so that a killed process or a power cut never leaves a torn
one: write a temporary file, fsync it, rename it into place, fsync the directory."""

from __future__ import annotations

import json
import os
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


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically and durably: to ``path.tmp`` first, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_path(path.parent)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(data, indent=2))
