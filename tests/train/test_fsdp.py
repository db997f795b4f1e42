"""Two-process FSDP2 training on the CPU (gloo), launched with torchrun: sharded parameters,
optimiser state and EMA, sharded checkpoints, and an exact resume (every rank's PUMA pool
included). The same run under DDP is the reference for the numbers."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from puma_mdm.bundled import bundled_config
from puma_mdm.cli import main
from puma_mdm.train.checkpoint import SHARDS, checkpoint_path, load_checkpoint
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import logged, torchrun

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
    "training.ema=0.9",
    "training.autocast=fp32",
    "training.threads=1",
    "eval.every=10",
    "eval.examples=20",
    "logging.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.every=10",
]


def train(out: Path, parallel: str) -> dict:
    """Train the run under ``parallel``; how its parameters are held (the trainer itself is gone
    on return, as at the end of ``puma train``)."""
    cfg = load_config(
        bundled_config("sort"),
        [*TINY, f"training.parallel={parallel}", f"logging.out_dir={out / parallel}"],
    )
    trainer = Trainer(cfg)
    trainer.train()
    params = list(trainer.model.parameters())
    record = {"dtensor": all(isinstance(p, DTensor) for p in params)}
    if record["dtensor"]:
        record["local"] = sum(p.to_local().numel() for p in params)
    return record | {"global": sum(p.numel() for p in params)}


def worker(out: Path) -> int:
    """Runs on every rank under torchrun."""
    train(out, "ddp")
    record = train(out, "fsdp")
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    run, resumed = out / "fsdp", out / "resumed"
    if dist.get_rank() == 0:  # as if the FSDP run had died just after its step-20 checkpoint
        shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("model", "best"))
        shutil.rmtree(checkpoint_path(resumed, STEPS))
    dist.barrier()
    return main(["train", "--resume", str(resumed)])


def records(run: Path) -> list[dict]:
    return logged(run)


@pytest.mark.slow
def test_fsdp_shards_trains_like_ddp_and_resumes_exactly(tmp_path):
    # a hang, not a slow machine: under load this takes minutes
    out = torchrun(__file__, str(tmp_path), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run, resumed, ddp = tmp_path / "fsdp", tmp_path / "resumed", tmp_path / "ddp"

    # every parameter is a DTensor and each rank holds about half of them
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["dtensor"] for r in ranks)
    assert sum(r["local"] for r in ranks) == ranks[0]["global"]
    assert all(r["local"] < 0.6 * r["global"] for r in ranks)

    # the checkpoint: shards from both ranks, the full weights beside them
    ckpt = checkpoint_path(run, STEPS)
    assert len(list((ckpt / SHARDS).glob("*.distcp"))) == 2
    state, _ = load_checkpoint(run)
    assert state["parallel"] == "fsdp" and "optimizer" not in state and len(state["ranks"]) == 2
    pools = [r["process"]["x0"] for r in state["ranks"]]
    assert not torch.equal(pools[0], pools[1])  # each rank kept its own pool

    # sharding changes where the numbers live, not the numbers: FSDP follows the DDP run
    fsdp_loss = [r["loss"] for r in records(run) if "loss" in r]
    ddp_loss = [r["loss"] for r in records(ddp) if "loss" in r]
    assert len(fsdp_loss) == STEPS and fsdp_loss[-1] < fsdp_loss[0]
    assert torch.allclose(torch.tensor(fsdp_loss), torch.tensor(ddp_loss), rtol=1e-4, atol=1e-5)
    a, b = (load_file(r / "model" / "model.safetensors") for r in (run, ddp))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)

    # resuming both ranks from the step-20 shards reproduced the run exactly
    assert records(resumed) == records(run)
    c = load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    assert out.stdout.count('"out_dir"') == 1


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
