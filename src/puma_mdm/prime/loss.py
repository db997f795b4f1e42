"""MDM-Prime objectives and the honest likelihood bound (docs/algorithms.md §6).

Given a Prime batch (digit states ``y_t``, digit masks, token targets ``x0``, per-row weights
``w`` from :mod:`puma_mdm.prime.process`) and the carry-over-filtered logits:

* ``joint`` — the published training loss: ``(1/B) Σ_b w_b Σ_{i partly masked} −log p(x0_i | y_t)``,
  one term per token with at least one masked digit. A proper training signal, but with ℓ > 1
  *not* an upper bound on the NLL: ``−log p(x0_i | y_t)`` charges a token once for all its
  masked digits, and when digits are dependent that is less than the digit-wise chain the
  bound needs (on an enumerable toy with the exact posterior it falls below the entropy).
* ``marginal`` — the digit-wise MDM ELBO: ``(1/B) Σ_b w_b Σ_{masked digits (i, j)}
  −log Σ_{x consistent with y_t, digit_j(x) = y0_ij} p(x | y_t)``. Each digit is predicted
  from its marginal under the token distribution, so the digits form an ordinary MDM over
  ``L·ℓ`` positions and this *is* an upper bound on ``−log p(x0)`` per token (the one to report).

With ℓ = 1 both are the MDM loss, term for term.
"""

from __future__ import annotations

import torch

from puma_mdm.losses import masked_cross_entropy
from puma_mdm.masking import Batch
from puma_mdm.prime.encoding import PrimeCodec

FORMS = ("joint", "marginal")


def digit_nll(logits: torch.Tensor, x0: torch.Tensor, codec: PrimeCodec) -> torch.Tensor:
    """−log p(digit_j = digit_j(x0_i) | y_t) for every digit: (B, L, C) → (B, L, ℓ), in float32.

    Only the target digit's marginal is summed (it always contains ``x0_i``, so it is finite);
    marginals of values no consistent class has would be log 0 and poison the gradient."""
    log_probs = logits.float().log_softmax(-1)
    classes = codec.encode(torch.arange(codec.classes, device=logits.device))  # (C, ℓ)
    target = codec.encode(x0)  # (B, L, ℓ)
    members = target.unsqueeze(-1) == classes.T  # (B, L, ℓ, C): digit j of class x is the target's
    return -torch.logsumexp(log_probs.unsqueeze(-2).masked_fill(~members, -torch.inf), dim=-1)


def prime_loss(
    logits: torch.Tensor, batch: Batch, codec: PrimeCodec, form: str = "joint"
) -> torch.Tensor:
    """The Prime loss of a batch in the ``joint`` or ``marginal`` form (see the module doc)."""
    if form == "joint":
        return masked_cross_entropy(logits, batch.x0, batch.masked.any(-1), batch.weights)
    if form != "marginal":
        raise ValueError(f"unknown Prime loss form {form!r}; choose one of {FORMS}")
    nll = digit_nll(logits, batch.x0, codec)[batch.masked]
    rows = batch.masked.nonzero()[:, 0]
    row = torch.zeros(len(batch.x0), device=logits.device).index_add_(0, rows, nll)
    return (row * batch.weights).mean()
