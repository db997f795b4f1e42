"""Run untrusted Python programs (a model's generated code) and collect the number each returns.

All programs of a call go to one worker process, started as ``python -I`` (isolated: no user
site, no ``PYTHON*`` variables) with a scrubbed environment, its own session and a fresh
temporary directory as working directory, which is deleted afterwards. The worker forks one
confined child per program (see ``sandbox_worker.py``: resource limits, a wall-clock timeout,
no network, no processes, no writes outside the temporary directory), so one program's crash,
loop or memory bomb costs only its own result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WORKER = Path(__file__).with_name("sandbox_worker.py")


@dataclass(frozen=True)
class Outcome:
    """What a program's entry function returned: a number, or why there is none."""

    value: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Limits:
    """Per program: wall-clock ``timeout`` (s), address space and largest file written (MB)."""

    timeout: float = 2.0
    memory_mb: int = 512
    file_size_mb: int = 1


def _environment(home: str) -> dict[str, str]:
    """Only what an interpreter needs: no proxies, tokens or paths of the host's user."""
    return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}


def run_programs(
    programs: Sequence[str], entry: str = "solution", limits: Limits = Limits()
) -> list[Outcome]:
    """Execute each program and call its ``entry()``; one :class:`Outcome` per program."""
    if not programs:
        return []
    with tempfile.TemporaryDirectory(prefix="puma-sandbox-") as root:
        request = {
            "programs": list(programs),
            "entry": entry,
            "timeout": limits.timeout,
            "memory": limits.memory_mb << 20,
            "file_size": limits.file_size_mb << 20,
            "root": root,
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=root,
            env=_environment(root),
            start_new_session=True,
            text=True,
        )
        # each program is killed after its timeout; the slack covers forks and start-up
        deadline = len(programs) * (limits.timeout + 0.5) + 30
        try:
            out, _ = proc.communicate(json.dumps(request), timeout=deadline)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    found: dict[int, Outcome] = {}
    for line in out.splitlines():
        record = json.loads(line)
        found[record["i"]] = Outcome(record.get("value"), record.get("error"))
    lost = Outcome(error="the sandbox worker stopped before running this program")
    return [found.get(i, lost) for i in range(len(programs))]
