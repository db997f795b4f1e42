"""``puma bench blocks``: the block-diffusion training step, one vectorised forward over
``[x_t | x0]`` against one forward per block (masking/block.py).

Both give the same loss and gradients (tests/masking/test_block.py); this measures which is faster.
For each block size the two forms alternate step by step on the same model and masks, so a
noisy machine slows both alike, and the ratio ``loop ÷ vectorised`` is taken within one run.
Writes ``blocks.json`` and ``blocks.png`` into the output directory.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from puma_mdm.bench.common import autocast_of, machine_info, sync
from puma_mdm.errors import PumaError
from puma_mdm.files import write_json
from puma_mdm.losses import mdm_loss
from puma_mdm.masking.block import block_logits, check_blocks, mask_blocks
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.plots import save_figure
from puma_mdm.train.distributed import resolve_device

FORMS = ("vectorised", "loop")


def time_block_steps(
    model: Transformer,
    x0: torch.Tensor,
    block_size: int,
    repeats: int,
    dtype: torch.dtype | None,
    generator: torch.Generator,
) -> dict[str, float]:
    """Median seconds of a forward + backward step per form; the forms alternate step by step
    on the same masked batch, after one untimed step each."""
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :block_size] = True
    device = x0.device
    times: dict[str, list[float]] = {form: [] for form in FORMS}
    for _ in range(repeats + 1):
        batch = mask_blocks(x0, prompt, model.cfg.mask_id, block_size, generator)
        for form in FORMS:
            model.zero_grad(set_to_none=True)
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = block_logits(model, batch.x_t, batch.x0, block_size, form == "vectorised")
            mdm_loss(logits, batch).backward()
            sync(device)
            times[form].append(time.perf_counter() - start)
    return {form: statistics.median(seconds[1:]) for form, seconds in times.items()}


def plot_blocks(rows: list[dict], path: Path) -> Path:
    """Seconds per step against block size, one line per form."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sizes = [row["block_size"] for row in rows]
    for form in FORMS:
        ax.plot(sizes, [row[f"{form}_seconds"] for row in rows], marker="o", label=form)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("block size S")
    ax.set_ylabel("seconds per training step")
    ax.set_ylim(bottom=0)
    ax.set_title("Block diffusion: one forward over [x_t | x0] vs one per block")
    ax.legend()
    return save_figure(fig, path)


def run_blocks_bench(
    out_dir: str | Path,
    length: int = 160,
    block_sizes: Sequence[int] = (4, 16, 40),
    batch_size: int = 32,
    dim: int = 128,
    n_layers: int = 4,
    vocab_size: int = 64,
    repeats: int = 5,
    precision: str = "bf16",
    device: str = "auto",
    threads: int = 0,
) -> dict:
    """Time both forms for every block size; write ``blocks.json`` and ``blocks.png``."""
    dtype = autocast_of(precision)
    if repeats < 1 or batch_size < 1:
        raise PumaError(f"--repeats and --batch-size must be ≥ 1, got {repeats}, {batch_size}")
    if not block_sizes:
        raise PumaError("--block-sizes is empty; give at least one block size")
    for size in block_sizes:
        try:
            check_blocks(length, size)
        except ValueError as err:
            raise PumaError(f"--block-sizes: {err}") from None
    if threads:
        torch.set_num_threads(threads)
    try:
        device_ = resolve_device(device)
    except RuntimeError as err:
        raise PumaError(f"--device {device!r}: {err}; use auto, cpu or cuda") from None
    model_cfg = ModelConfig(
        vocab_size=vocab_size, seq_len=length, dim=dim, n_layers=n_layers, n_heads=4
    )
    model = Transformer(model_cfg).to(device_)
    generator = torch.Generator(device_).manual_seed(0)
    x0 = torch.randint(0, vocab_size, (batch_size, length), generator=generator, device=device_)
    rows = []
    for size in block_sizes:
        seconds = time_block_steps(model, x0, size, repeats, dtype, generator)
        rows.append(
            {
                "block_size": size,
                "blocks": length // size,
                "vectorised_seconds": seconds["vectorised"],
                "loop_seconds": seconds["loop"],
                "loop_over_vectorised": seconds["loop"] / seconds["vectorised"],
            }
        )
        print(
            f"L={length} S={size:<4} vectorised {seconds['vectorised']:.3f} s  "
            f"loop {seconds['loop']:.3f} s per step  "
            f"(loop ÷ vectorised {rows[-1]['loop_over_vectorised']:.2f})"
        )
    report = {
        "benchmark": "blocks",
        "settings": {
            "length": length,
            "batch_size": batch_size,
            "model": {"dim": dim, "n_layers": n_layers, "vocab_size": vocab_size},
            "parameters": sum(p.numel() for p in model.parameters()),
            "repeats": repeats,
            "precision": precision,
            "device": str(device_),
            "timing": "median of the timed steps; the two forms alternate step by step",
        },
        "machine": machine_info(),
        "rows": rows,
    }
    out_dir = Path(out_dir)
    write_json(out_dir / "blocks.json", report)
    plot_blocks(rows, out_dir / "blocks.png")
    print(f"wrote {out_dir / 'blocks.json'} and {out_dir / 'blocks.png'}")
    return report
