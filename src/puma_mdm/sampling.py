"""Adaptive-order sampling of masked diffusion models (DESIGN.md §4).

Start from ``x_t`` (every position to generate holds the mask id); each step runs the model
once over the rows that still have masks, scores every masked position with an unmasking
*policy*, and reveals some of them:

* policies (higher score = revealed earlier): ``random`` (uniform scores: vanilla ancestral
  order), ``top_prob`` (max_v p(v)), ``margin`` (p₁ − p₂, top-1 minus top-2 probability),
  ``entropy`` (−H(p): the least uncertain first);
* how many: ``k`` per step (NFE = ⌈L_eff/k⌉), a fixed number of ``steps`` (reveal
  ⌈remaining / steps left⌉ per step), or a ``threshold`` τ: every position whose max
  probability is ≥ τ, and always at least the policy's best one (parallel decoding);
* which value: the argmax (``temperature=0``) or a sample from p^(1/T) by Gumbel-max in float64.

Everything is vectorised over the batch; positions that are not masked at the start
(prompts, given context) are never changed. Block-diffusion models (``cfg.block_size``) are
decoded block by block, and autoregressive ones (``cfg.causal``) token by token, left to right
(:func:`sample_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from puma_mdm.masking.base import pick_top

POLICIES: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {}


def register_policy(name: str):
    """Add a scoring rule ``(log_probs (B, L, V) float, generator) → scores (B, L)``."""

    def wrap(fn):
        POLICIES[name] = fn
        return fn

    return wrap


@register_policy("random")
def _random(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(log_probs.shape[:2], generator=generator).to(log_probs.device)


@register_policy("top_prob")
def _top_prob(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return log_probs.amax(-1).exp()


@register_policy("margin")
def _margin(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    top2 = log_probs.topk(2, dim=-1).values.exp()
    return top2[..., 0] - top2[..., 1]


@register_policy("entropy")
def _entropy(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Lowest entropy first, so the score is −H (the reference code picks the highest: a bug).
    return (log_probs.exp() * log_probs).nan_to_num().sum(-1)


@dataclass
class SampleResult:
    """``tokens``: the completed sequences; ``nfe``: network calls made; ``order[b, i]``: the
    step (0-based) at which position ``i`` was decoded, −1 for positions given at the start
    (only when ``record_order=True``)."""

    tokens: torch.Tensor
    nfe: int
    order: torch.Tensor | None = None


def check_sampling_args(
    policy: str, k: int | None, steps: int | None, threshold: float | None, temperature: float
) -> None:
    """Raise ``ValueError`` naming the bad argument."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    if sum(x is not None for x in (k, steps, threshold)) > 1:
        raise ValueError("give at most one of k, steps and threshold")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k (tokens revealed per step) must be an integer ≥ 1, got {k!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")


def choose_values(
    log_probs: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """argmax, or a draw from softmax(log_probs / T) by the Gumbel-max trick in float64."""
    if temperature == 0:
        return log_probs.argmax(-1)
    u = torch.rand(log_probs.shape, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300))).to(log_probs.device)
    return (log_probs.double() / temperature + gumbel).argmax(-1)


@torch.no_grad()
def sample(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    mask_id: int,
    policy: str = "margin",
    k: int | None = None,
    steps: int | None = None,
    threshold: float | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    record_order: bool = False,
    autocast_dtype: torch.dtype | None = None,
    block_size: int | None = None,
    eos_id: int | None = None,
) -> SampleResult:
    """Fill every ``mask_id`` position of ``x_t`` (B, L). With none of ``k``, ``steps``,
    ``threshold`` given, ``k=1``. ``model`` maps ids (B, L) to logits (B, L, V). An MDM-Prime
    model (one with a ``codec``) is sampled digit by digit (:mod:`puma_mdm.prime.sampling`).
    ``block_size`` (default: 1 for a causal model, else the model's ``cfg.block_size``, 0 = the
    whole sequence at once) and ``eos_id`` are as in :func:`sample_blocks`."""
    if block_size is None:
        cfg = getattr(model, "cfg", None)
        block_size = 1 if getattr(cfg, "causal", False) else getattr(cfg, "block_size", 0)
    decoding = dict(
        policy=policy,
        k=k,
        steps=steps,
        threshold=threshold,
        temperature=temperature,
        generator=generator,
        record_order=record_order,
        autocast_dtype=autocast_dtype,
    )
    if block_size:
        return sample_blocks(model, x_t, mask_id, block_size, eos_id, **decoding)
    codec = getattr(model, "codec", None)
    if codec is not None:
        from puma_mdm.prime.sampling import sample_tokens

        return sample_tokens(model, x_t, mask_id, codec, **decoding)
    if k is None and steps is None and threshold is None:
        k = 1
    check_sampling_args(policy, k, steps, threshold, temperature)
    if x_t.dim() != 2:
        raise ValueError(f"x_t must be (batch, length), got shape {tuple(x_t.shape)}")
    x = x_t.clone()
    masked = x == mask_id
    order = torch.full_like(x, -1) if record_order else None
    device_type = x.device.type
    nfe = 0
    # On a GPU with k or steps the number of network calls is known before the loop, which
    # then forwards every row (finished rows change nothing) without a host-device sync;
    # elsewhere each step forwards only the rows that still have masks.
    fixed = x.is_cuda and threshold is None
    if fixed:
        most = int(masked.sum(1).max()) if x.numel() else 0  # the one sync, before the loop
        calls = -(-most // k) if steps is None else min(steps, most)
    while nfe < calls if fixed else bool(masked.any()):
        active = slice(None) if fixed else masked.any(1).nonzero().flatten()
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x[active])
        if mask_id < logits.shape[-1]:
            raise ValueError(
                f"mask id {mask_id} is inside the model's vocabulary of {logits.shape[-1]} "
                "output classes; pass the id the model was trained with as [MASK] (for puma "
                "models: model.mask_id, the vocabulary size)"
            )
        log_probs = logits.float().log_softmax(-1)
        scores = POLICIES[policy](log_probs, generator)
        values = choose_values(log_probs, temperature, generator)
        still = masked[active]
        remaining = still.sum(1)
        if threshold is not None:
            confident = (log_probs.amax(-1).exp() >= threshold) & still
            reveal = confident | pick_top(scores, still, torch.ones_like(remaining))
        else:
            if steps is not None:
                count = torch.ceil(remaining / max(steps - nfe, 1)).long()
            else:
                count = remaining.clamp(max=k)
            reveal = pick_top(scores, still, count)
        rows = x[active]
        x[active] = torch.where(reveal, values, rows)
        masked[active] = still & ~reveal
        if order is not None:
            order[active] = torch.where(reveal, nfe, order[active])
        nfe += 1
    return SampleResult(tokens=x, nfe=nfe, order=order)


def sample_blocks(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    mask_id: int,
    block_size: int,
    eos_id: int | None = None,
    record_order: bool = False,
    **options,
) -> SampleResult:
    """Decode blocks of ``block_size`` positions left to right. Block ``n`` is filled by
    :func:`sample` (any policy, ``k``, ``steps`` or ``threshold`` in ``options``) run on the
    prefix ``x[:, :end_n]`` only: the model's block-causal (or causal) attention means later
    blocks are out of its view anyway. Finished blocks and prompt positions are never changed.
    With ``eos_id``, once a row has generated ``<eos>`` its later masked positions become
    ``<eos>`` (the padding convention) without network calls; decoding stops when no masks are
    left. ``nfe`` counts every network call; ``order`` numbers steps across blocks."""
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    x = x_t.clone()
    generated = x_t == mask_id
    order = torch.full_like(x, -1) if record_order else None
    nfe = 0
    for start in range(0, x.shape[1], block_size):
        if eos_id is not None:
            ended = ((x[:, :start] == eos_id) & generated[:, :start]).any(1, keepdim=True)
            x[:, start:] = x[:, start:].masked_fill(ended & (x[:, start:] == mask_id), eos_id)
        if not bool((x == mask_id).any()):
            break
        end = start + block_size
        if not bool((x[:, start:end] == mask_id).any()):
            continue
        result = sample(
            model, x[:, :end], mask_id, record_order=record_order, block_size=0, **options
        )
        x[:, start:end] = result.tokens[:, start:]
        if order is not None:
            part = result.order[:, start:]
            order[:, start:end] = torch.where(part >= 0, part + nfe, -1)
        nfe += result.nfe
    return SampleResult(tokens=x, nfe=nfe, order=order)
