"""Stop a real ``puma train`` with SIGTERM, resume it, and get bit for bit the uninterrupted run."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from puma_mdm.cli import main
from puma_mdm.train.checkpoint import checkpoint_dirs
from tiny import logged as records

STEPS = 80
# Tiny, but with every source of randomness and state switched on: dropout, EMA, gradient
# accumulation, evaluations and checkpoints mid-run.
TINY = [
    "model.dim=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.dropout=0.1",
    "task.options.length=5",
    "task.options.n_train=2000",
    "task.options.n_eval=50",
    f"training.steps={STEPS}",
    "training.batch_size=16",
    "training.grad_accum=2",
    "training.warmup_steps=10",
    "training.ema=0.9",
    "training.autocast=fp32",
    "training.threads=1",
    "eval.every=25",
    "eval.examples=20",
    "logging.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.every=10",
    "checkpoint.keep_last=2",
]


def puma_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "puma_mdm.cli", "train", *args]


def last_step(run) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def wait_for_step(run, step: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while last_step(run) < step:
        assert proc.poll() is None, f"training ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.01)


def assert_same_weights(a, b) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.parametrize("strategy", ["standard", "progressive"])
def test_sigterm_and_resume_reproduce_the_uninterrupted_run(tmp_path, strategy):
    args = [*TINY, f"training.strategy={strategy}"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", "--config", "sort", "--out-dir", str(reference), *args]) == 0

    proc = subprocess.Popen(
        puma_train("--config", "sort", "--out-dir", str(run), *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run, 15, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"Resume with: puma train --resume {run}" in err
    stopped = last_step(run)
    assert 15 <= stopped < STEPS
    assert checkpoint_dirs(run)[-1].name == f"step-{stopped:08d}"
    assert not (run / "model").exists()

    resumed = subprocess.run(
        puma_train("--resume", str(run)), capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr

    # every step logged exactly once, with exactly the same loss, lr and evaluations
    assert records(run) == records(reference)
    assert len([r for r in records(run) if "loss" in r]) == STEPS
    for name in ("model", "best", f"checkpoints/step-{STEPS:08d}"):
        assert_same_weights(run / name, reference / name)
