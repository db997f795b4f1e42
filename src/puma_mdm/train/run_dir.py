"""One writer per run directory, and no run written over another by accident.

A run holds an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` (holding its PID) from the start of
training to its end, so a second ``puma train`` on the same directory is refused with the first
one's PID instead of interleaving logs and deleting checkpoints; the kernel drops the lock when
the process dies, however it dies. A fresh run refuses a directory that already holds a run unless
it is told to overwrite it, and then removes only what a run writes."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from puma_mdm.errors import PumaError

LOCK_NAME = ".lock"
# what a run writes into its directory (checkpoint.py, trainer.py, wandb, `puma eval`)
RUN_ENTRIES = (
    "config.yaml",
    "metrics.jsonl",
    "metrics.jsonl.tmp",
    "checkpoints",
    "model",
    "best",
    ".model.tmp",
    ".model.old",
    ".best.tmp",
    ".best.old",
    "tb",
    "wandb",
    "eval.json",
)


class RunDirError(PumaError):
    """A run directory that is in use, already holds a run, or cannot be written."""


class RunLock:
    """The exclusive lock of a run directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"--out-dir {self.run_dir} is a file, not a directory")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(
                f"cannot write the run directory {self.run_dir}: {err.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{self.run_dir} is in use by another training run (PID {holder}); wait for it "
                "to end or choose another --out-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    __del__ = release  # a Trainer dropped without train() (the benchmarks) frees its directory


def _present(run_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(run_dir).iterdir() if p.name != LOCK_NAME)


def check_fresh(run_dir: Path, overwrite: bool) -> None:
    """Make sure a new run does not write over an earlier one: a directory holding a run is
    refused unless ``overwrite``; files that are not a run's are refused always."""
    present = _present(run_dir)
    if not present:
        return
    foreign = [name for name in present if name not in RUN_ENTRIES]
    if foreign:
        raise RunDirError(
            f"--out-dir {run_dir} is not empty and holds files that are not a run's "
            f"({', '.join(foreign[:3])}); choose an empty or new directory"
        )
    if not overwrite:
        raise RunDirError(
            f"--out-dir {run_dir} already holds a run ({', '.join(present[:3])}); continue it "
            "with --resume, pass --overwrite to replace it, or choose another --out-dir"
        )


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote into ``run_dir`` (after :func:`check_fresh`)."""
    for name in _present(run_dir):
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
