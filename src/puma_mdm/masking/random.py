"""Random masking: the baseline MDM forward process (docs/algorithms.md §3).

Two forms of the same ELBO, both over the ``L_eff`` non-prompt positions of each sequence:

* ``count``: draw ``n ~ U{1..L_eff}``, mask ``n`` positions uniformly, weight ``1/n``.
  This is the any-order-autoregressive form; ``(1/n) Σ_masked CE`` is an unbiased estimate
  of the per-token NLL bound.
* ``continuous``: draw ``t ∈ (0, 1]`` (antithetic / low-discrepancy across the batch), mask
  each position with probability ``t``, weight ``1/(t·L_eff)``. Since
  ``∫₀¹ t⁻¹ C(L,n) tⁿ(1−t)^{L−n} dt = 1/n``, both forms have the same expectation.
"""

from __future__ import annotations

import torch

from puma_mdm.masking.base import Batch, generator_from, pick_top, random_scores
from puma_mdm.masking.stream import ExampleStream

FORMS = ("count", "continuous")


def mask_count(
    x0: torch.Tensor, prompt_mask: torch.Tensor, mask_id: int, generator: torch.Generator
) -> Batch:
    """Mask ``n ~ U{1..L_eff}`` uniformly chosen non-prompt positions per row, weight ``1/n``."""
    free = ~prompt_mask
    l_eff = free.sum(1)
    u = torch.rand(len(x0), generator=generator, dtype=torch.float64).to(x0.device)
    n = (u * l_eff).long().clamp(max=l_eff - 1) + 1
    masked = pick_top(random_scores(x0.shape, generator, x0.device), free, n)
    x_t = x0.masked_fill(masked, mask_id)
    return Batch(x0, x_t, prompt_mask, masked, 1.0 / n.float())


def mask_continuous(
    x0: torch.Tensor,
    prompt_mask: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> Batch:
    """Mask each non-prompt position with probability ``t``; weight ``1/(t·L_eff)``.

    With ``antithetic`` the batch's times are ``t_b = (u + b/B) mod 1`` for one ``u``: evenly
    spread, which lowers the estimator's variance without biasing it."""
    B = len(x0)
    if antithetic:
        u = torch.rand(1, generator=generator, dtype=torch.float64)
        t = (u + torch.arange(B, dtype=torch.float64) / B) % 1.0
    else:
        t = torch.rand(B, generator=generator, dtype=torch.float64)
    t = t.clamp(min=t_min).float().to(x0.device)
    free = ~prompt_mask
    masked = (random_scores(x0.shape, generator, x0.device) < t.unsqueeze(1)) & free
    x_t = x0.masked_fill(masked, mask_id)
    return Batch(x0, x_t, prompt_mask, masked, 1.0 / (t * free.sum(1)))


class RandomMasking:
    """The ``standard`` strategy: a fresh batch from the stream every step, randomly masked."""

    def __init__(
        self,
        stream: ExampleStream,
        batch_size: int,
        mask_id: int,
        seed: int = 0,
        form: str = "count",
        device: torch.device | str = "cpu",
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown random-masking form {form!r}; choose one of {FORMS}")
        stream.check_mask_id(mask_id)
        self.stream, self.batch_size, self.mask_id = stream, batch_size, mask_id
        self.form, self.device = form, torch.device(device)
        self.generator = generator_from(seed)

    def batch(self, step: int) -> Batch:
        x0, prompt = (t.to(self.device) for t in self.stream.take(self.batch_size))
        if self.form == "count":
            return mask_count(x0, prompt, self.mask_id, self.generator)
        return mask_continuous(x0, prompt, self.mask_id, self.generator)

    def update(self, logits: torch.Tensor) -> None:
        """Random masking ignores the model's output."""

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.generator.set_state(state["rng"])
