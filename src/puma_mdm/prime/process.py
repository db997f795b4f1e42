"""Digit-wise forward processes: random masking and PUMA over sub-tokens.

Every existing forward process works unchanged on the *digit sequences* ``y0`` (N, L·ℓ) of the
data (prompt tokens have all their digits in the prompt): random masking masks digits
independently (``n ~ U{1..L_eff·ℓ}`` digits, or each with probability ``t``), and the PUMA pool
stages the unmasked fraction of the ``L_eff·ℓ`` digits. :class:`DigitProcess` turns their
batches into what the Prime model and loss take — token targets ``x0`` (B, L), digit states
``x_t`` and digit masks ``masked`` (B, L, ℓ), token-level ``prompt_mask`` — and rescales the
weights by ``ℓ`` so the loss is per *token*: the NLL bound of ``L_eff·ℓ`` digits is
``L_eff·ℓ · E_n[(1/n) Σ_masked …]``, i.e. ``ℓ · E_n[(1/n) Σ_masked …]`` per token.

PUMA with Prime reveals the masked **digits** with the highest confidence, where a digit's
confidence is its largest *digit-marginal* probability ``max_v Σ_{x consistent, digit_j(x)=v}
p(x | y_t)`` under the carry-over-restricted token distribution: the probability that the
digit the model would write is right — PUMA's ``top_prob`` for tokens, taken to digits. For
ℓ = 1 it is exactly the token confidence. (The token's own max-probability would rank all its
digits alike, though a leading digit is often certain while the token is not.)
"""

from __future__ import annotations

import torch

from puma_mdm.masking import Batch, ExampleStream, ForwardProcess, mask_count
from puma_mdm.prime.encoding import PrimeCodec


def digit_stream(
    x0: torch.Tensor, prompt_mask: torch.Tensor, codec: PrimeCodec, seed: int = 0
) -> ExampleStream:
    """The examples as digit sequences, for any forward process to draw from."""
    return ExampleStream(*codec.digit_sequences(x0, prompt_mask), seed=seed)


def token_batch(batch: Batch, codec: PrimeCodec) -> Batch:
    """A batch over digit sequences (B, L·ℓ) → the Prime model's view (see the module doc)."""
    B, ell = len(batch.x0), codec.digits
    return Batch(
        x0=codec.decode(batch.x0.view(B, -1, ell)),
        x_t=batch.x_t.view(B, -1, ell),
        prompt_mask=batch.prompt_mask[:, ::ell],
        masked=batch.masked.view(B, -1, ell),
        weights=batch.weights * ell,
    )


def mask_digits(
    x0: torch.Tensor, prompt_mask: torch.Tensor, codec: PrimeCodec, generator: torch.Generator
) -> Batch:
    """The count form over digits: mask ``n ~ U{1..L_eff·ℓ}`` non-prompt digits, weight ``ℓ/n``."""
    digits, prompt = codec.digit_sequences(x0, prompt_mask)
    return token_batch(mask_count(digits, prompt, codec.mask_digit, generator), codec)


class DigitProcess:
    """Wraps a forward process built on :func:`digit_stream` (with mask id ``codec.mask_digit``)
    so that it serves Prime batches and, for PUMA, sees digit confidences."""

    def __init__(self, inner: ForwardProcess, codec: PrimeCodec) -> None:
        self.inner, self.codec = inner, codec

    def batch(self, step: int) -> Batch:
        return token_batch(self.inner.batch(step), self.codec)

    def update(self, logits: torch.Tensor) -> None:
        """Token logits (B, L, C) → digit log-marginals (B, L·ℓ, b): the pool ranks masked
        digits by their largest marginal probability."""
        marginals = self.codec.digit_log_marginals(logits.detach().float().log_softmax(-1))
        self.inner.update(marginals.flatten(1, 2))

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
