"""Tiny saved models of the sort task (random weights, any kind), for the benchmarks' tests."""

import torch

from puma_mdm.files import write_json
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.tasks import build_task

SORT = {"length": 4, "n_train": 50, "n_eval": 16}


def saved(tmp_path, name: str, **kind) -> str:
    """A one-layer model of width 16 with ``kind``'s config fields, saved with its task record
    in ``tmp_path / name``; returns ``NAME=DIR`` as the benchmarks take it."""
    task = build_task("sort", SORT)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=task.vocab_size, seq_len=task.seq_len, dim=16, n_layers=1, **kind)
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / name)
    write_json(tmp_path / name / "task.json", {"name": "sort", "options": SORT})
    return f"{name}={tmp_path / name}"
