"""A mixed batch: part PUMA pool, part fresh random masks (docs/algorithms.md §3).

A PUMA pool of ``B`` sequences trains each sequence for about ``K`` consecutive steps, so fresh
data enters at only ``B/K`` sequences per step and consecutive batches are strongly correlated.
The mixed batch keeps the pool's aligned (confidence-ordered) masks on ``B_p`` rows and draws the
other ``B_r = B − B_p`` rows fresh from the stream with random masking every step:

    batch = [ pool (B_p rows) | random masking (B_r rows) ]

Each row keeps its own forward process's weight (``1/n_b``), so the loss is the same estimator
as either process alone; only the pool's rows are advanced by ``update``.
"""

from __future__ import annotations

import torch

from puma_mdm.masking.base import Batch
from puma_mdm.masking.progressive import ProgressivePool
from puma_mdm.masking.random import RandomMasking


class MixedBatch:
    """``pool`` rows first, then ``fresh`` rows; both share the data stream."""

    def __init__(self, pool: ProgressivePool, fresh: RandomMasking) -> None:
        self.pool, self.fresh = pool, fresh

    def batch(self, step: int) -> Batch:
        a, b = self.pool.batch(step), self.fresh.batch(step)
        return Batch(
            *(torch.cat([getattr(a, f), getattr(b, f)]) for f in Batch.__dataclass_fields__)
        )

    def update(self, logits: torch.Tensor) -> None:
        self.pool.update(logits[: self.pool.batch_size])

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict(), "fresh": self.fresh.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        self.fresh.load_state_dict(state["fresh"])


def split_rows(batch_size: int, fresh_fraction: float) -> tuple[int, int]:
    """(pool rows, fresh rows) for a batch of ``batch_size``: fresh = round(fraction·B), and
    each part keeps at least one row when the fraction is strictly between 0 and 1."""
    if not 0.0 <= fresh_fraction < 1.0:
        raise ValueError(f"fresh_fraction must be in [0, 1), got {fresh_fraction}")
    fresh = round(fresh_fraction * batch_size)
    if fresh_fraction > 0:
        fresh = min(max(fresh, 1), batch_size - 1)
    return batch_size - fresh, fresh
