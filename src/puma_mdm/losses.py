"""Training objectives."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from puma_mdm.masking.base import Batch

LOSS_NORMS = ("sequence", "token")


def masked_cross_entropy(
    logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(1/B) Σ_b w_b Σ_{i masked} −log p_θ(x0_i | x_t).

    Only masked positions are scored (prompt positions are never masked). Cross-entropy is
    computed in float32 even under autocast. ``weights`` may also be (B, L), one per position
    (block diffusion weighs each block)."""
    ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")
    if weights.dim() == 2:
        ce, weights = ce * weights[masked], torch.ones(len(x0), device=logits.device)
    row = torch.zeros(len(x0), device=logits.device).index_add_(0, masked.nonzero()[:, 0], ce)
    return (row * weights).mean()


def mdm_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The MDM loss of a batch from any forward process (its weights pick the ELBO form)."""
    return masked_cross_entropy(logits, batch.x0, batch.masked, batch.weights)


def normalize_loss(batch: Batch, norm: str) -> Batch:
    """Choose how the masked cross-entropies of a batch are averaged.

    * ``sequence``: keep the forward process's weights ``w_b = 1/n_b``. Every sequence counts
      equally, and the loss is an unbiased estimate of the per-token NLL bound (the ELBO).
    * ``token``: ``w_b = B / Σ_b n_b``, so the loss is the plain mean over all masked tokens
      of the batch. Heavily masked states (where decoding starts) get more of the gradient;
      not a likelihood bound, so report likelihoods with ``nll_bound`` either way.

    Apply it to the whole batch before splitting it for gradient accumulation: the micro-batch
    losses then add up to exactly the full-batch loss."""
    if norm == "sequence":
        return batch
    if norm != "token":
        raise ValueError(f"unknown loss normalisation {norm!r}; choose one of {LOSS_NORMS}")
    total = batch.masked.sum().clamp(min=1).float()
    return replace(batch, weights=torch.full_like(batch.weights, len(batch.x0)) / total)
