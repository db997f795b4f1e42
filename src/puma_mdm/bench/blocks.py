"""Block-diffusion training step: one vectorised forward over ``[x_t | x0]`` against one forward
per block (masking/block.py). Both give the same loss and gradients (tests/test_block.py);
this measures which is faster. Run ``python -m puma_mdm.bench.blocks --help``."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from puma_mdm.losses import mdm_loss
from puma_mdm.masking.block import block_logits, mask_blocks
from puma_mdm.model import ModelConfig, Transformer


def time_block_step(
    length: int,
    block_size: int,
    batch_size: int = 32,
    dim: int = 128,
    n_layers: int = 4,
    vocab: int = 64,
    repeats: int = 5,
    bf16: bool = True,
) -> dict[str, float]:
    """Median seconds of a forward + backward step, ``vectorised`` and ``loop``."""
    cfg = ModelConfig(vocab_size=vocab, seq_len=length, dim=dim, n_layers=n_layers, n_heads=4)
    model = Transformer(cfg)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, vocab, (batch_size, length), generator=gen)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :block_size] = True
    result = {}
    for name, vectorised in (("vectorised", True), ("loop", False)):
        times = []
        for _ in range(repeats + 1):  # the first step warms up
            batch = mask_blocks(x0, prompt, vocab, block_size, gen)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = block_logits(model, batch.x_t, batch.x0, block_size, vectorised)
            mdm_loss(logits, batch).backward()
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times[1:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--block-sizes", default="4,16,40")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size in (int(s) for s in args.block_sizes.split(",")):
        t = time_block_step(args.length, size, args.batch_size, repeats=args.repeats)
        print(
            f"L={args.length} S={size}: vectorised {t['vectorised']:.3f} s, loop {t['loop']:.3f} s"
            f" per step ({t['loop'] / t['vectorised']:.2f}x)"
        )


if __name__ == "__main__":
    main()
