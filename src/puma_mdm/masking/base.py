"""What every forward process hands the trainer, and the helpers they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Batch:
    """One training batch.

    ``x_t`` is ``x0`` with the positions in ``masked`` replaced by the mask id; ``weights[b]``
    multiplies the summed cross-entropy of row ``b`` (e.g. ``1/n_b``), or ``weights[b, i]``
    that of position ``i`` (block diffusion)."""

    x0: torch.Tensor
    x_t: torch.Tensor
    prompt_mask: torch.Tensor
    masked: torch.Tensor
    weights: torch.Tensor


class ForwardProcess(Protocol):
    """Produces noisy batches; may look at the model's output on them (PUMA does)."""

    def batch(self, step: int) -> Batch: ...

    def update(self, logits: torch.Tensor) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_mask_id(x0: torch.Tensor, mask_id: int) -> None:
    """The mask id must be a token the data never uses (puma models use ``vocab_size``)."""
    hits = (x0 == mask_id).nonzero()
    if len(hits):
        row, col = hits[0].tolist()
        raise ValueError(
            f"mask id {mask_id} is inside the data's vocabulary (example {row}, position {col} "
            f"holds it); use an id no token has, e.g. the vocabulary size {int(x0.max()) + 1}"
        )


def rank_within_rows(scores: torch.Tensor) -> torch.Tensor:
    """rank[b, i] = position of ``scores[b, i]`` in row ``b`` sorted descending (0 = highest).
    Ties are broken by the lower index first, so results are deterministic."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def pick_top(scores: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): the ``count[b]`` eligible positions of row ``b`` with the highest score."""
    scores = scores.masked_fill(~eligible, float("-inf"))
    return (rank_within_rows(scores) < count.unsqueeze(1)) & eligible


def random_scores(shape: torch.Size, generator: torch.Generator, device: torch.device):
    """Uniform scores drawn on ``generator``'s device (a CPU generator: bit-reproducible on
    any device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def generator_from(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory, without blocking."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
