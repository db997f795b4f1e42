"""Atomic, self-describing checkpoints.

Layout of a run directory::

    config.yaml                the resolved config of the run
    metrics.jsonl              one JSON object per logged step / evaluation
    checkpoints/step-00001000/ model.safetensors + config.json (the weights, loadable alone),
                               train_state.pt (optimiser, scheduler, EMA, step, and per rank
                               the forward-process state including the PUMA pool and the RNG
                               states), config.yaml, task.json, manifest.json
                               sharded/ (training.parallel=fsdp only): the sharded model,
                               optimiser and EMA state, one file per rank plus metadata,
                               written by every rank with torch.distributed.checkpoint
                               (multi-node runs need a run directory on a shared file system)
    model/                     the final (EMA, if enabled) weights + task.json
    best/                      the weights with the best evaluation accuracy so far

A checkpoint (and ``model/``, ``best/``) is written into a hidden temporary directory, its
``manifest.json`` (sha256 of every file) written last, every file and the directory fsynced, and
then renamed into place, so a crash mid-write leaves the previous checkpoints untouched (a leftover
``.step-*.tmp`` is ignored when loading and removed by the next save). Loading checks every file
against the manifest first. ``train_state.pt`` holds only tensors and plain containers and is
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from puma_mdm.errors import CheckpointError
from puma_mdm.files import fsync_path, fsync_tree
from puma_mdm.manifest import corrupt_files, write_manifest
from puma_mdm.model import Transformer

STATE_NAME = "train_state.pt"
SHARDS = "sharded"  # torch.distributed.checkpoint directory of an FSDP checkpoint
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def _seal(directory: Path, extra_files: dict[str, str]) -> None:
    """Add ``extra_files``, write the manifest over everything, fsync it all."""
    for name, text in extra_files.items():
        (directory / name).write_text(text)
    write_manifest(directory)
    fsync_tree(directory)


def write_model_dir(model: Transformer, target: Path, extra_files: dict[str, str]) -> None:
    """Write a loadable model directory atomically (temp dir + rename, replacing ``target``)."""
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _seal(tmp, extra_files)
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    fsync_path(target.parent)


def staging_path(run_dir: Path, step: int) -> Path:
    """The temporary directory a checkpoint is written into before it is renamed into place."""
    final = checkpoint_path(run_dir, step)
    return final.parent / f".{final.name}.tmp"


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """Clear what crashed saves left and create the empty staging directory."""
    tmp = staging_path(run_dir, step)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    for stale in tmp.parent.glob(".step-*.tmp"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    return tmp


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Transformer,
    train_state: dict,
    extra_files: dict[str, str],
    keep_last: int,
    staged: bool = False,
) -> Path:
    """Write ``checkpoints/step-{step:08d}`` atomically and prune all but the last ``keep_last``.
    With ``staged``, :func:`begin_checkpoint` was called and other files (FSDP shards) already
    lie in the temporary directory."""
    final = checkpoint_path(run_dir, step)
    root = final.parent
    tmp = staging_path(run_dir, step) if staged else begin_checkpoint(run_dir, step)
    model.save_pretrained(tmp)
    with open(tmp / STATE_NAME, "wb") as f:
        torch.save(train_state, f)
    _seal(tmp, extra_files)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_path(root)
    for old in checkpoint_dirs(run_dir)[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Load ``train_state.pt`` of a checkpoint directory (or of a run's latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such run or checkpoint directory: {path}")
    if not (path / STATE_NAME).is_file():
        found = checkpoint_dirs(path)
        if not found:
            raise CheckpointError(
                f"{path} holds no checkpoint (expected {path}/checkpoints/step-XXXXXXXX/); "
                "was the run started with this --out-dir?"
            )
        path = found[-1]
    problems = corrupt_files(path)
    if problems:
        raise CheckpointError(f"{problems[0]}{_fallback(path)}")
    try:
        state = torch.load(path / STATE_NAME, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path / STATE_NAME} is corrupt or unreadable ({_load_error(err)}){_fallback(path)}"
        ) from err
    return state, path


def _fallback(path: Path) -> str:
    """How to resume from the newest earlier checkpoint that passes its manifest check."""
    earlier = [p for p in checkpoint_dirs(path.parent.parent) if p.name < path.name]
    for good in reversed(earlier):
        if not corrupt_files(good):
            return f"; the previous good checkpoint is {good}: delete {path} to resume from it"
    return "; no earlier checkpoint is intact: start a new run"


def _load_error(err: Exception) -> str:
    """The informative first sentence of torch.load's long, multi-line error message."""
    text = str(err).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(err).__name__
