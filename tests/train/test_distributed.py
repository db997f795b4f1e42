"""Two-process data-parallel training on the CPU (gloo), launched with torchrun.

The test launches this file as the worker script: every rank trains the same run, the replicas'
parameters are all-gathered for the test to compare, and the run is then resumed from an
earlier checkpoint through ``puma train --resume`` (which must reproduce it exactly)."""

import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from puma_mdm.bundled import bundled_config
from puma_mdm.cli import main
from puma_mdm.manifest import write_manifest
from puma_mdm.model import Transformer
from puma_mdm.tasks import build_task
from puma_mdm.train.checkpoint import STATE_NAME, checkpoint_path, load_checkpoint
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import logged as records
from tiny import torchrun

STEPS = 30
TINY = [
    "model.dim=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "task.options.length=5",
    "task.options.n_train=1000",
    "task.options.n_eval=50",
    "training.strategy=progressive",
    f"training.steps={STEPS}",
    "training.batch_size=16",
    "training.grad_accum=2",
    "training.lr=1e-2",
    "training.warmup_steps=5",
    "training.autocast=fp32",
    "training.threads=1",
    "eval.every=10",
    "eval.examples=20",
    "logging.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.every=10",
]


def trained_parameters(run: Path) -> torch.Tensor:
    """Train the run; its parameters, flat (the trainer itself is gone on return, as at the end
    of ``puma train``)."""
    trainer = Trainer(load_config(bundled_config("sort"), [*TINY, f"logging.out_dir={run}"]))
    trainer.train()
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def worker(out: Path) -> int:
    """Runs on every rank under torchrun."""
    run, resumed = out / "run", out / "resumed"
    flat = trained_parameters(run)
    replicas = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(replicas, flat)
    if dist.get_rank() == 0:
        torch.save(replicas, out / "replicas.pt")
        # as if the run had died just after its step-20 checkpoint
        shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("model", "best"))
        shutil.rmtree(checkpoint_path(resumed, STEPS))
    dist.barrier()
    return main(["train", "--resume", str(resumed)])


def test_two_replicas_train_in_lockstep_and_resume_exactly(tmp_path):
    # a hang, not a slow machine: under load this takes minutes
    out = torchrun(__file__, str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run, resumed = tmp_path / "run", tmp_path / "resumed"

    # both replicas hold the same weights, and rank 0 saved exactly those
    replicas = torch.load(tmp_path / "replicas.pt")
    assert len(replicas) == 2 and torch.equal(replicas[0], replicas[1])
    saved = Transformer.from_pretrained(checkpoint_path(run, STEPS))
    assert torch.equal(torch.cat([p.detach().flatten() for p in saved.parameters()]), replicas[0])

    # only rank 0 logged: one line per step; the losses (averaged over ranks) went down
    losses = [r["loss"] for r in records(run) if "loss" in r]
    assert len(losses) == STEPS
    assert sum(losses[-10:]) / 10 < sum(losses[:3]) / 3, losses
    evals = [r for r in records(run) if "eval/n" in r]
    assert [r["eval/n"] for r in evals] == [20, 20, 20]  # sharded, counted over both ranks
    assert evals[-1]["eval/nll"] < evals[0]["eval/nll"] - 0.1, evals

    # each rank kept its own pool, fed from its own shard (rows rank::2) with its own seed
    state, _ = load_checkpoint(run)
    ranks = state["ranks"]
    assert [r["process"]["stream"]["seed"] for r in ranks] == [0, 1]
    task = build_task("sort", {"length": 5, "n_train": 1000, "n_eval": 50})
    train = task.train_examples().x0
    for rank, r in enumerate(ranks):
        shard = {tuple(row) for row in train[rank::2].tolist()}
        assert all(tuple(row) in shard for row in r["process"]["x0"].tolist())
    assert not torch.equal(ranks[0]["process"]["x0"], ranks[1]["process"]["x0"])

    # resuming both ranks from step 20 reproduced the run exactly (only rank 0 printed)
    assert records(resumed) == records(run)
    a, b = (load_file(r / "model" / "model.safetensors") for r in (run, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert out.stdout.count('"out_dir"') == 1


def test_resume_needs_the_same_number_of_processes(tmp_path, capsys):
    """A checkpoint written by 2 processes cannot continue in 1 (each rank has its own pool)."""
    run = tmp_path / "run"
    main(["train", "--config", "sort", "--out-dir", str(run), *TINY, "training.steps=1"])
    path = checkpoint_path(run, 1) / STATE_NAME
    state = torch.load(path, weights_only=True)
    state["ranks"] = state["ranks"] * 2
    torch.save(state, path)
    write_manifest(path.parent)  # as if really written by 2 processes
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "training.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "written by 2 process(es), this run has 1" in err and err.count("\n") == 1


def test_python_dash_m_puma_mdm_train():
    out = subprocess.run(
        [sys.executable, "-m", "puma_mdm.train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--resume" in out.stdout


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
