"""The sub-token codec of MDM-Prime (docs/algorithms.md §6).

A token id ``x < C`` is written as ``ℓ`` digits in base ``b``, most significant first:
``x = Σ_j d_j · b^(ℓ−1−j)``, where ``b`` is the smallest integer with ``b^ℓ ≥ C`` (found in
integer arithmetic, so ``C = 10¹²``, ``ℓ = 3`` gives ``b = 10⁴``, not a rounding artefact). The
digit value ``b`` is the mask. ``b^ℓ − C`` codes stand for no token; the carry-over filter gives
them, and every class that disagrees with an already revealed digit, zero probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from puma_mdm.errors import ConfigError


def integer_base(classes: int, digits: int) -> int:
    """The smallest integer ``b ≥ 2`` with ``b ** digits ≥ classes``."""
    if classes < 2 or digits < 1:
        raise ConfigError(f"prime: need ≥ 2 classes and ≥ 1 digit, got C={classes}, ℓ={digits}")
    base = max(2, round(classes ** (1.0 / digits)))  # a float guess, corrected exactly below
    while base**digits < classes:
        base += 1
    while base > 2 and (base - 1) ** digits >= classes:
        base -= 1
    return base


@dataclass(frozen=True)
class PrimeCodec:
    """Token ids ``< classes`` ↔ ``digits`` base-``base`` digits (the mask digit is ``base``)."""

    classes: int
    digits: int
    base: int = field(init=False)

    def __post_init__(self) -> None:
        base = integer_base(self.classes, self.digits)
        if base**self.digits >= 2**62:
            raise ConfigError(
                f"prime: {self.classes} classes in {self.digits} digits overflow 64-bit ids"
            )
        object.__setattr__(self, "base", base)

    @property
    def mask_digit(self) -> int:
        return self.base

    @property
    def unused_codes(self) -> int:
        """Digit strings that decode to no token: ``b^ℓ − C``."""
        return self.base**self.digits - self.classes

    def _powers(self, device: torch.device) -> torch.Tensor:
        """``b^(ℓ−1−j)`` for ``j = 0..ℓ−1`` (most significant first)."""
        exponents = torch.arange(self.digits - 1, -1, -1, device=device)
        return torch.full_like(exponents, self.base) ** exponents

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) → digits (..., ℓ): ``d_j = ⌊x / b^(ℓ−1−j)⌋ mod b``."""
        powers = self._powers(ids.device)
        return torch.div(ids.long().unsqueeze(-1), powers, rounding_mode="floor") % self.base

    def decode(self, digits: torch.Tensor) -> torch.Tensor:
        """digits (..., ℓ) → ids (...): ``Σ_j d_j · b^(ℓ−1−j)`` (mask digits are not allowed)."""
        return (digits.long() * self._powers(digits.device)).sum(-1)

    def consistent(self, digits: torch.Tensor) -> torch.Tensor:
        """Bool (..., C): class ``x`` agrees with every revealed (non-mask) digit of the state."""
        codes = self.encode(torch.arange(self.classes, device=digits.device))  # (C, ℓ)
        ok = torch.ones((*digits.shape[:-1], self.classes), dtype=torch.bool, device=digits.device)
        for j in range(self.digits):
            d = digits[..., j : j + 1]
            ok &= (d == self.mask_digit) | (d == codes[:, j])
        return ok

    def carry_over(self, logits: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
        """Logits (..., C) with every class inconsistent with ``digits`` (..., ℓ) set to −∞."""
        return logits.masked_fill(~self.consistent(digits), float("-inf"))

    def digit_log_marginals(self, log_probs: torch.Tensor) -> torch.Tensor:
        """log p(d_j = v) = log Σ_{x < C, digit_j(x) = v} p(x): (..., C) → (..., ℓ, b).

        Unused codes carry probability 0, so each digit's marginal sums to one."""
        b, ell = self.base, self.digits
        padded = F.pad(log_probs, (0, b**ell - self.classes), value=-torch.inf)
        if ell == 1:
            return padded.unsqueeze(-2)
        grid = padded.view(*log_probs.shape[:-1], *([b] * ell))  # axis −ℓ+j ↔ digit j
        axes = range(-ell, 0)
        marginals = [torch.logsumexp(grid, dim=[a for a in axes if a != j]) for j in axes]
        return torch.stack(marginals, dim=-2)

    def digit_sequences(
        self, x0: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token sequences (N, L) → digit sequences (N, L·ℓ); a prompt token's digits are all
        prompt digits."""
        return self.encode(x0).flatten(1), prompt_mask.repeat_interleave(self.digits, dim=1)
