"""The MDM-Prime network: the Transformer with a digit embedding in and carry-over out.

Input: digit states ``y`` (B, L, ℓ), each digit ``< b`` or the mask digit ``b``. One table of
``b + 1`` rows of width ``D/ℓ`` embeds every digit; a token's ``ℓ`` digit embeddings are
concatenated into one ``D``-vector, so attention still runs over ``L`` tokens. Output: ``C``
logits per token, with every class that disagrees with a revealed digit (and every unused
code: the head has only ``C`` rows) at −∞, i.e. ``p(x | y)`` lives on the consistent classes.
"""

from __future__ import annotations

import torch
from torch import nn

from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.prime.encoding import PrimeCodec


def codec_of(cfg: ModelConfig) -> PrimeCodec:
    return PrimeCodec(cfg.vocab_size, cfg.prime_digits)


class DigitEmbedding(nn.Embedding):
    """(B, L, ℓ) digits → (B, L, D): ``b + 1`` rows of width ``D/ℓ``, concatenated per token."""

    def __init__(self, codec: PrimeCodec, dim: int) -> None:
        super().__init__(codec.base + 1, dim // codec.digits)

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        return super().forward(digits).flatten(-2)


class PrimeTransformer(Transformer):
    """Maps digit states (B, L, ℓ) to carry-over-filtered logits (B, L, C). With ℓ = 1 it has
    the same parameters (and, from the same seed, the same initial weights) as the plain
    :class:`Transformer`, and the same outputs wherever a token is masked."""

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.prime_digits < 1:
            raise ValueError("PrimeTransformer needs cfg.prime_digits ≥ 1")
        super().__init__(cfg)
        self.codec = codec_of(cfg)

    digit_input = True

    @staticmethod
    def token_embedding(cfg: ModelConfig) -> nn.Module:
        return DigitEmbedding(codec_of(cfg), cfg.dim)

    def forward(self, digits: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if digits.dim() != 3 or digits.shape[-1] != self.codec.digits:
            raise ValueError(
                f"an MDM-Prime model takes digit states (B, L, {self.codec.digits}), got shape "
                f"{tuple(digits.shape)}; encode token ids with model.codec.encode"
            )
        return self.codec.carry_over(super().forward(digits, attn_mask), digits)
