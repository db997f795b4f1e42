"""The tiny training run several test modules start from: the sort toy, fp32, no evaluation,
no checkpoints, quiet logs. Tests append their own overrides (later ones win). And
:func:`torchrun`, which runs a test file as two CPU processes."""

import os
import subprocess
import sys
from pathlib import Path

TINY_RUN = [
    "model.dim=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "task.name=sort",
    "task.options.length=5",
    "task.options.n_train=4000",
    "task.options.n_eval=100",
    "training.batch_size=32",
    "training.lr=3e-3",
    "training.warmup_steps=10",
    "training.autocast=fp32",
    "eval.every=0",
    "eval.examples=50",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.log_every=10",
    "checkpoint.every=0",
]

# metrics.jsonl entries that measure the machine, not the run (they differ between equal runs)
WALL_CLOCK = ("tokens_per_s", "train_seconds")


def logged(run) -> list[dict]:
    """A run's metrics.jsonl records without their wall-clock entries."""
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in rows]


def torchrun(script: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``script args`` under ``torchrun --standalone --nproc_per_node=2``, with this directory
    importable (as pytest makes it), output captured."""
    here = str(Path(__file__).parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
        "PYTHONFAULTHANDLER": "1",  # a rank that aborts prints where (in the captured stderr)
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, script, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
