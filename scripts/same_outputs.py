"""Check that a refactor changed nothing a model computes.

Run it once from each checkout, then compare:

    PYTHONPATH=/old/checkout/src python scripts/same_outputs.py record /tmp/before
    PYTHONPATH=$PWD/src          python scripts/same_outputs.py record /tmp/after
    python scripts/same_outputs.py compare /tmp/before /tmp/after

``record`` trains a tiny run of every kind and strategy (sort task, 30 steps, fp32, one thread)
and decodes 64 held-out puzzles with the shipped Sudoku model under five decoders; ``compare``
exits 1 unless every weight and every decoded token is bit-identical. Run ``record`` from the
checkout's root (it reads the shipped model from src/puma_mdm/assets).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

COMMON = [
    "task.name=sort",
    "training.steps=30",
    "training.batch_size=16",
    "model.dim=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "eval.every=0",
    "eval.examples=32",
    "logging.tensorboard=false",
    "logging.progress=false",
    "checkpoint.every=0",
    "training.device=cpu",
    "training.autocast=fp32",
]
RUNS = {
    "puma": ["training.strategy=progressive"],
    "standard": ["training.strategy=standard"],
    "mixed": ["training.strategy=progressive", "training.puma.fresh_fraction=0.5"],
    "collapse": ["training.puma.mode=confidence_collapse"],
    "block": ["training.block_size=4", "training.strategy=progressive"],
    "block-standard": ["training.block_size=4", "training.strategy=standard"],
    "arm": ["training.strategy=arm"],
    "prime": ["model.prime.digits=2"],
}
DECODERS = {
    "margin": {"policy": "margin", "k": 1},
    "top_prob": {"policy": "top_prob", "k": 1},
    "entropy": {"policy": "entropy", "k": 1},
    "threshold": {"threshold": 0.9},
    "entropy_bound": {"entropy_bound": 0.1},
}


def record(out: Path) -> None:
    from puma_mdm.pretrained import load_trained
    from puma_mdm.train.config import load_config
    from puma_mdm.train.trainer import Trainer

    try:
        from puma_mdm import sample  # the kind-aware sampler, where it exists
    except ImportError:
        from puma_mdm.sampling import sample

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, extra in RUNS.items():
        cfg = load_config(None, [*COMMON, f"logging.out_dir={out}/{name}", *extra])
        trainer = Trainer(cfg, overwrite=True)
        trainer.train()
        tensors |= {f"{name}/{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    model, task = load_trained("src/puma_mdm/assets/sudoku")
    examples = task.eval_examples()[:64]
    for name, options in DECODERS.items():
        result = sample(model, task.masked_inputs(examples), task.mask_id, **options)
        tensors[f"sudoku/{name}"] = result.tokens
    torch.save(tensors, out / "outputs.pt")


def compare(a: Path, b: Path) -> int:
    x, y = torch.load(a / "outputs.pt"), torch.load(b / "outputs.pt")
    differ = sorted(set(x) ^ set(y)) + [k for k in x if k in y and not torch.equal(x[k], y[k])]
    groups = sorted({k.split("/")[0] for k in x})
    for group in groups:
        bad = [k for k in differ if k.split("/")[0] == group]
        print(f"{group:16s} {'identical' if not bad else f'DIFFERENT ({len(bad)} tensors)'}")
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 3:
        record(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
