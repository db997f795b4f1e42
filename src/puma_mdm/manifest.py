"""A ``manifest.json`` in every model and checkpoint directory: the sha256 of each of its files,
written last and checked before anything in the directory is read, so a flipped byte in the
weights, the optimiser state or a config is an error naming the file instead of a silently
wrong model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from puma_mdm.files import write_json

MANIFEST_NAME = "manifest.json"
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.endswith(".tmp")
    )


def write_manifest(directory: str | Path) -> None:
    """Record the sha256 of every file under ``directory`` (call after the last file is written)."""
    directory = Path(directory)
    hashes = {p.relative_to(directory).as_posix(): sha256(p) for p in _files(directory)}
    write_json(directory / MANIFEST_NAME, {"sha256": hashes})


def corrupt_files(directory: str | Path) -> list[str] | None:
    """Problems found by checking ``directory`` against its manifest: one line per file that is
    missing or whose bytes changed (empty when intact); None when it has no manifest (written
    before manifests existed)."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        hashes = json.loads(path.read_text())["sha256"]
        items = [(str(name), str(digest)) for name, digest in hashes.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return [f"{path} is not a valid manifest"]
    problems = []
    for name, digest in items:
        file = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"{path} names a file outside its directory ({name!r})")
        elif not file.is_file():
            problems.append(f"{file} is missing (listed in {MANIFEST_NAME})")
        elif sha256(file) != digest:
            problems.append(f"{file} is corrupt (its sha256 differs from {MANIFEST_NAME})")
    return problems
