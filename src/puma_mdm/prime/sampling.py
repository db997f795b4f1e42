"""Sampling an MDM-Prime model digit by digit, with idle steps that cost nothing.

The state is the digit grid ``y`` (B, L, ℓ). Each step decides how many masked digits each row
reveals, which ones (a policy from :data:`puma_mdm.sampling.POLICIES`, applied to the digits'
marginals ``p(d_j = v | y) = Σ_{x consistent, digit_j(x)=v} p(x | y)``), and their values: one
draw ``x̂ ~ p(x | y)`` per token (argmax at temperature 0) whose digits are written. ``x̂`` agrees
with every revealed digit (carry-over), so digits revealed together or apart always spell a
class ``< C``: every decoded id is a real token.

How many per row and step:

* ``k`` digits, a fixed number of ``steps`` (⌈remaining / steps left⌉), or a ``threshold`` τ on
  the digit confidence (all ≥ τ, at least the best one), as for tokens — never idle;
* ``time_steps = T``: the masked-diffusion reverse process with a linear schedule, each masked
  digit revealed at step ``s`` with probability ``1/(T − s)``, i.e. at a uniform step of ``T``.
  A step that reveals nothing is **idle**: the state is unchanged, so the previous output is
  reused and the network is not called. With ``N`` digits to generate the expected idle
  fraction is ``(1 − 1/T)^N`` — splitting tokens into digits (larger ``N``) makes idle steps
  rare, which is MDM-Prime's point.

The network runs only on rows that reveal something this step and whose state changed since
their last call; ``row_nfe`` counts each row's calls (``= T − idle`` under ``time_steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from puma_mdm.masking.base import pick_top
from puma_mdm.prime.encoding import PrimeCodec
from puma_mdm.sampling import POLICIES, SampleResult, check_sampling_args, choose_values


@dataclass
class PrimeSampleResult(SampleResult):
    """``tokens`` (B, L) decoded; ``digits`` (B, L, ℓ); ``nfe``: batched network calls;
    ``row_nfe`` (B,): calls that included each row (as :class:`SampleResult`); ``idle`` (B,):
    steps in which the row changed nothing; ``horizon`` (B,): the row's steps (``T`` under
    ``time_steps``); ``order``: the step at which each token's last digit was revealed (−1 for
    given tokens)."""

    digits: torch.Tensor | None = None
    idle: torch.Tensor | None = None
    horizon: torch.Tensor | None = None

    @property
    def idle_fraction(self) -> float:
        return float(self.idle.sum()) / max(int(self.horizon.sum()), 1)


def reveal_counts(
    remaining: torch.Tensor,
    step: int,
    k: int | None,
    steps: int | None,
    time_steps: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Digits each row reveals at ``step`` (``threshold`` decoding decides later)."""
    if time_steps is not None:
        p = torch.full(remaining.shape, 1.0 / max(time_steps - step, 1), dtype=torch.float64)
        count = torch.binomial(remaining.double().cpu(), p, generator=generator)
        return count.long().to(remaining.device)
    if steps is not None:
        return torch.ceil(remaining / max(steps - step, 1)).long()
    return remaining.clamp(max=k)


@torch.no_grad()
def sample_digits(
    model: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    codec: PrimeCodec,
    policy: str = "margin",
    k: int | None = None,
    steps: int | None = None,
    threshold: float | None = None,
    time_steps: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    record_order: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> PrimeSampleResult:
    """Reveal every mask digit of ``y`` (B, L, ℓ). ``model`` maps digit states to
    carry-over-filtered logits (B, L, C). With none of ``k``, ``steps``, ``threshold``,
    ``time_steps`` given, ``k=1``."""
    if time_steps is not None:
        if not isinstance(time_steps, int) or time_steps < 1:
            raise ValueError(f"time_steps must be an integer ≥ 1, got {time_steps!r}")
        if k is not None or steps is not None or threshold is not None:
            raise ValueError("time_steps decides how many digits to reveal; drop k/steps/threshold")
    elif k is None and steps is None and threshold is None:
        k = 1
    check_sampling_args(policy, k, steps, threshold, temperature)
    if y.dim() != 3 or y.shape[-1] != codec.digits:
        raise ValueError(f"y must be (batch, length, {codec.digits}), got {tuple(y.shape)}")
    B, L, ell = y.shape
    y = y.clone()
    masked = (y == codec.mask_digit).view(B, L * ell)
    device = y.device
    log_probs = torch.zeros(B, L, codec.classes, device=device)  # each row's last output
    fresh = torch.zeros(B, dtype=torch.bool, device=device)  # output matches the state
    row_nfe = torch.zeros(B, dtype=torch.long, device=device)
    changes = torch.zeros(B, dtype=torch.long, device=device)  # steps that revealed something
    alive = torch.zeros(B, dtype=torch.long, device=device)  # steps begun with digits masked
    order = torch.full((B, L), -1, dtype=torch.long, device=device) if record_order else None
    nfe, step = 0, 0
    while bool(masked.any()):
        remaining = masked.sum(1)
        alive += remaining > 0
        count = (
            remaining.clone()  # threshold: the model decides, below
            if threshold is not None
            else reveal_counts(remaining, step, k, steps, time_steps, generator)
        )
        act = (count > 0).nonzero().flatten()
        stale = act[~fresh[act]]
        if len(stale):
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits = model(y[stale])
            log_probs[stale] = logits.float().log_softmax(-1)
            fresh[stale] = True
            row_nfe[stale] += 1
            nfe += 1
        if len(act):
            lp = log_probs[act]
            marginals = codec.digit_log_marginals(lp).flatten(1, 2)  # (A, L·ℓ, b)
            still = masked[act]
            scores = POLICIES[policy](marginals, generator)
            if threshold is not None:
                confident = (marginals.amax(-1).exp() >= threshold) & still
                reveal = confident | pick_top(scores, still, torch.ones_like(count[act]))
            else:
                reveal = pick_top(scores, still, count[act])
            values = codec.encode(choose_values(lp, temperature, generator)).flatten(1)
            rows = y[act].view(len(act), L * ell)
            y[act] = torch.where(reveal, values, rows).view(len(act), L, ell)
            masked[act] = still & ~reveal
            fresh[act] = False
            changes[act] += 1
            if order is not None:
                done = ~masked[act].view(len(act), L, ell).any(-1)
                newly = done & still.view(len(act), L, ell).any(-1)
                order[act] = torch.where(newly, step, order[act])
        step += 1
    # under time_steps a row's process lasts T steps, however early its last digit came
    horizon = alive if time_steps is None else time_steps * (alive > 0)
    return PrimeSampleResult(
        tokens=codec.decode(y),
        nfe=nfe,
        order=order,
        digits=y,
        row_nfe=row_nfe,
        idle=horizon - changes,
        horizon=horizon,
    )


def sample_tokens(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    mask_id: int,
    codec: PrimeCodec,
    **options,
) -> PrimeSampleResult:
    """Token-level entry point: fill every ``mask_id`` token of ``x_t`` (B, L) digit by digit
    (given tokens keep all their digits). ``options`` are those of :func:`sample_digits`."""
    if x_t.dim() != 2:
        raise ValueError(f"x_t must be (batch, length), got shape {tuple(x_t.shape)}")
    if mask_id < codec.classes:
        raise ValueError(
            f"mask id {mask_id} is one of the model's {codec.classes} classes; pass the id the "
            "model was trained with as [MASK] (model.mask_id, the vocabulary size)"
        )
    masked = x_t == mask_id
    y = codec.encode(x_t.masked_fill(masked, 0)).masked_fill(masked.unsqueeze(-1), codec.mask_digit)
    return sample_digits(model, y, codec, **options)
