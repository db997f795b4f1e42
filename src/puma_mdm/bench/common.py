"""Helpers the benchmarks share: the precisions they time, machine description, device sync."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch

from puma_mdm.errors import PumaError

# Precisions the benchmarks time: name → autocast dtype (None: no autocast, fp32).
AUTOCASTS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def autocast_of(precision: str) -> torch.dtype | None:
    """The autocast dtype of a benchmark's ``--precision``; a :class:`PumaError` for an unknown
    one."""
    if precision not in AUTOCASTS:
        raise PumaError(f"--precision must be one of {sorted(AUTOCASTS)}, got {precision!r}")
    return AUTOCASTS[precision]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """Where and when the numbers were measured."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings include it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
