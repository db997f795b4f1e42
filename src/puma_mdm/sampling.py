"""Adaptive-order sampling of masked diffusion models (docs/algorithms.md §4).

Start from ``x_t`` (every position to generate holds the mask id); each step runs the model
once over the rows that still have masks, scores every masked position with an unmasking
*policy*, and reveals some of them:

* policies (higher score = revealed earlier): ``random`` (uniform scores: vanilla ancestral
  order), ``top_prob`` (max_v p(v)), ``margin`` (p₁ − p₂, top-1 minus top-2 probability),
  ``entropy`` (−H(p): the least uncertain first);
* how many: ``k`` per step (NFE = ⌈L_eff/k⌉), a fixed number of ``steps`` (reveal
  ⌈remaining / steps left⌉ per step), a ``threshold`` τ: every position whose max
  probability is ≥ τ, and always at least the policy's best one (parallel decoding), or an
  ``entropy_bound`` γ: in the policy's order, the longest run of positions ``U`` with
  ``Σ_{i∈U} H(p_i) − max_{i∈U} H(p_i) ≤ γ`` (the EB-sampler of Ben-Hamu et al. 2025, "Accelerated
  Sampling from Masked Diffusion Models via Entropy Bounded Unmasking": the summed entropy
  bounds the error of revealing ``U`` at once from independent marginals; at least one), or an
  ``entropy_sum`` γ: the same with ``Σ_{i∈U} H(p_i) ≤ γ``. The EB-sampler's bound is on the
  dependence between the revealed positions, exact for sampling; a greedy decoder also errs on
  each position by itself, and there the subtracted ``max H`` lets one position of any entropy
  ride along every step (docs/algorithms.md §4.3);
* which value: the argmax (``temperature=0``) or a sample from p^(1/T) by Gumbel-max in float64.

Everything is vectorised over the batch; positions that are not masked at the start
(prompts, given context) are never changed. Block-diffusion models are decoded block by block,
and autoregressive ones token by token, left to right (:func:`sample_blocks`); which applies to
a model is its kind's decision (:func:`puma_mdm.kinds.sample`).

Network calls can reuse keys and values (``cache``, :data:`CACHES`): ``prefix`` is exact for
block-causal and causal puma models — a finished block never changes, so it is encoded once,
in the same call that starts the next block, and each step forwards only the current block
(the same tokens as without the cache, up to float rounding); ``dual`` approximates it for
bidirectional models (Fast-dLLM's dual cache): a full forward every ``refresh`` steps caches
every position's keys and values, and the steps between forward only the positions that were
masked at the refresh, attending to the cached ones elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from puma_mdm.masking.base import pick_top
from puma_mdm.model import KVCache, Transformer

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
    (only when ``record_order=True``); ``cache``: the key-value cache used; ``row_nfe[b]``: the
    calls row ``b`` needed (the calls made while it still had masks: what decoding it alone
    would cost; with an adaptive rule ``nfe`` is the batch's slowest row)."""

    tokens: torch.Tensor
    nfe: int
    order: torch.Tensor | None = None
    cache: str = "none"
    row_nfe: torch.Tensor | None = None


def check_sampling_args(
    policy: str,
    k: int | None,
    steps: int | None,
    threshold: float | None,
    temperature: float,
    entropy_bound: float | None = None,
    entropy_sum: float | None = None,
) -> None:
    """Raise ``ValueError`` naming the bad argument."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    if sum(x is not None for x in (k, steps, threshold, entropy_bound, entropy_sum)) > 1:
        raise ValueError("give at most one of k, steps, threshold, entropy_bound and entropy_sum")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k (tokens revealed per step) must be an integer ≥ 1, got {k!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if entropy_bound is not None and not (0.0 <= entropy_bound < float("inf")):
        raise ValueError(f"entropy_bound γ must be a finite number ≥ 0 (nats), got {entropy_bound}")
    if entropy_sum is not None and not (0.0 <= entropy_sum < float("inf")):
        raise ValueError(f"entropy_sum γ must be a finite number ≥ 0 (nats), got {entropy_sum}")
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")


def is_adaptive(
    threshold: float | None, entropy_bound: float | None, entropy_sum: float | None
) -> bool:
    """Whether one of the rules whose count per step depends on the model is given (then
    ``k`` is not used)."""
    return any(v is not None for v in (threshold, entropy_bound, entropy_sum))


CACHES = ("auto", "none", "prefix", "dual")  # ``auto`` is resolved per model kind (kinds.py)


def keep_casts(device_type: str) -> torch.autocast:
    """A region around a whole decode that leaves the autocast state as it is. Autocast keeps
    its bf16/fp16 copies of the weights only while some region is open; without this one each
    step's own region would cast every weight again (at batch 1, a fifth of a small model's
    cached call)."""
    return torch.autocast(
        device_type,
        dtype=torch.get_autocast_dtype(device_type),
        enabled=torch.is_autocast_enabled(device_type),
        cache_enabled=torch.is_autocast_cache_enabled(),
    )


def choose_values(
    log_probs: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """argmax, or a draw from softmax(log_probs / T) by the Gumbel-max trick in float64."""
    if temperature == 0:
        return log_probs.argmax(-1)
    u = torch.rand(log_probs.shape, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300))).to(log_probs.device)
    return (log_probs.double() / temperature + gumbel).argmax(-1)


def entropy_bounded(
    log_probs: torch.Tensor,
    scores: torch.Tensor,
    eligible: torch.Tensor,
    gamma: float,
    spare_largest: bool = True,
) -> torch.Tensor:
    """Boolean (B, L): per row, the longest run of eligible positions in descending ``scores``
    whose entropies satisfy ``Σ H − max H ≤ γ`` (``spare_largest``, the EB-sampler) or
    ``Σ H ≤ γ``; always at least one."""
    entropy = -(log_probs.exp() * log_probs).nan_to_num().sum(-1)
    order = scores.masked_fill(~eligible, float("-inf")).argsort(dim=1, descending=True)
    h = entropy.gather(1, order).masked_fill(~eligible.gather(1, order), 0.0)
    excess = h.cumsum(1) - (h.cummax(1).values if spare_largest else 0.0)
    count = ((excess <= gamma) & eligible.gather(1, order)).sum(1).clamp(min=1)
    return pick_top(scores, eligible, count)


@dataclass
class Decoding:
    """How each step reveals positions (see the module docstring)."""

    policy: str = "margin"
    k: int | None = None
    steps: int | None = None
    threshold: float | None = None
    entropy_bound: float | None = None
    temperature: float = 0.0
    generator: torch.Generator | None = None
    autocast_dtype: torch.dtype | None = None
    entropy_sum: float | None = None

    def __post_init__(self) -> None:
        rules = (self.k, self.steps, self.threshold, self.entropy_bound, self.entropy_sum)
        if all(v is None for v in rules):
            self.k = 1
        check_sampling_args(
            self.policy,
            self.k,
            self.steps,
            self.threshold,
            self.temperature,
            self.entropy_bound,
            self.entropy_sum,
        )

    @property
    def adaptive(self) -> bool:
        """Whether the number revealed per step depends on the model's outputs."""
        return is_adaptive(self.threshold, self.entropy_bound, self.entropy_sum)

    def reveal(self, log_probs: torch.Tensor, still: torch.Tensor, step: int):
        """(positions to reveal (A, L), their values (A, L)) for one step."""
        scores = POLICIES[self.policy](log_probs, self.generator)
        values = choose_values(log_probs, self.temperature, self.generator)
        remaining = still.sum(1)
        if self.threshold is not None:
            confident = (log_probs.amax(-1).exp() >= self.threshold) & still
            reveal = confident | pick_top(scores, still, torch.ones_like(remaining))
        elif self.entropy_bound is not None:
            reveal = entropy_bounded(log_probs, scores, still, self.entropy_bound)
        elif self.entropy_sum is not None:
            reveal = entropy_bounded(log_probs, scores, still, self.entropy_sum, False)
        elif self.steps is not None:
            count = torch.ceil(remaining / max(self.steps - step, 1)).long()
            reveal = pick_top(scores, still, count)
        else:
            reveal = pick_top(scores, still, remaining.clamp(max=self.k))
        return reveal, values


StepLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def denoise(
    step_logits: StepLogits,
    x: torch.Tensor,
    mask_id: int,
    decoding: Decoding,
    order: torch.Tensor | None = None,
    first_step: int = 0,
    row_nfe: torch.Tensor | None = None,
) -> int:
    """The one sampling loop: fill the masks of ``x`` (B, L; written in place, it may be a view)
    until none is left; return the number of network calls. ``step_logits(x, active)`` gives the
    logits (A, L, V) of rows ``active`` of ``x`` (an index tensor, or ``slice(None)``: every
    row); ``order`` (like ``x``) gets the step numbers; ``row_nfe`` (B,) adds one for every
    call a row still has masks at."""
    masked = x == mask_id
    nfe = 0
    # On a GPU with k or steps the number of network calls is known before the loop, which
    # then forwards every row (finished rows change nothing) without a host-device sync;
    # elsewhere each step forwards only the rows that still have masks.
    fixed = x.is_cuda and not decoding.adaptive
    if fixed:
        most = int(masked.sum(1).max()) if x.numel() else 0  # the one sync, before the loop
        calls = -(-most // decoding.k) if decoding.steps is None else min(decoding.steps, most)
    while nfe < calls if fixed else bool(masked.any()):
        pending = masked.any(1)
        # every row as a slice: the reads and writes below are then views, not copies
        every = fixed or bool(pending.all())
        active = slice(None) if every else pending.nonzero().flatten()
        with torch.autocast(
            x.device.type,
            dtype=decoding.autocast_dtype,
            enabled=decoding.autocast_dtype is not None,
        ):
            logits = step_logits(x, active)
        if mask_id < logits.shape[-1]:
            raise ValueError(
                f"mask id {mask_id} is inside the model's vocabulary of {logits.shape[-1]} "
                "output classes; pass the id the model was trained with as [MASK] (for puma "
                "models: model.mask_id, the vocabulary size)"
            )
        if row_nfe is not None:
            row_nfe += pending
        still = masked[active]
        reveal, values = decoding.reveal(logits.float().log_softmax(-1), still, nfe)
        x[active] = torch.where(reveal, values, x[active])
        masked[active] = still & ~reveal
        if order is not None:
            order[active] = torch.where(reveal, first_step + nfe, order[active])
        nfe += 1
    return nfe


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
    block_size: int = 0,
    eos_id: int | None = None,
    entropy_bound: float | None = None,
    cache: str = "none",
    refresh: int = 4,
    entropy_sum: float | None = None,
) -> SampleResult:
    """Fill every ``mask_id`` position of ``x_t`` (B, L) with ``model``, a map from ids (B, L)
    to logits (B, L, V). With none of ``k``, ``steps``, ``threshold``, ``entropy_bound``,
    ``entropy_sum`` given, ``k=1``. ``block_size`` > 0 decodes in blocks (:func:`sample_blocks`,
    with ``eos_id``); ``cache`` is ``none``, ``prefix`` (block-causal or causal Transformers)
    or ``dual`` (bidirectional Transformers, refreshed every ``refresh`` steps), see
    :data:`CACHES`. The model's kind picks the block size and cache: call
    :func:`puma_mdm.sample`, which checks them (:mod:`puma_mdm.kinds`)."""
    decoding = Decoding(
        policy,
        k,
        steps,
        threshold,
        entropy_bound,
        temperature,
        generator,
        autocast_dtype,
        entropy_sum,
    )
    if x_t.dim() != 2:
        raise ValueError(f"x_t must be (batch, length), got shape {tuple(x_t.shape)}")
    with keep_casts(x_t.device.type):
        if block_size:
            return sample_blocks(
                model, x_t, mask_id, block_size, eos_id, record_order, decoding, cache
            )
        x = x_t.clone()
        order = torch.full_like(x, -1) if record_order else None
        step_logits = DualCache(model, mask_id, refresh) if cache == "dual" else _full(model)
        row_nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        nfe = denoise(step_logits, x, mask_id, decoding, order, row_nfe=row_nfe)
    return SampleResult(tokens=x, nfe=nfe, order=order, cache=cache, row_nfe=row_nfe)


def _full(model) -> StepLogits:
    return lambda x, active: model(x[active])


def sample_blocks(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    mask_id: int,
    block_size: int,
    eos_id: int | None = None,
    record_order: bool = False,
    decoding: Decoding | None = None,
    cache: str = "none",
) -> SampleResult:
    """Decode blocks of ``block_size`` positions left to right. Block ``n`` is filled by
    :func:`denoise` (any policy and rule in ``decoding``) with the prefix ``x[:, :end_n]`` as
    the model's input: its block-causal (or causal) attention means later blocks are out of its
    view anyway. With ``cache='prefix'`` the finished prefix is encoded once
    (:class:`PrefixCache`). Finished blocks and prompt positions are never changed. With
    ``eos_id``, once a row has generated ``<eos>`` its later masked positions become ``<eos>``
    (the padding convention) without network calls; decoding stops when no masks are left.
    ``nfe`` counts every network call; ``order`` numbers steps across blocks."""
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    decoding = decoding or Decoding()
    x = x_t.clone()
    generated = x_t == mask_id
    order = torch.full_like(x, -1) if record_order else None
    prefix = PrefixCache(model, x) if cache == "prefix" else None
    nfe, row_nfe = 0, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[1], block_size):
        if eos_id is not None:
            ended = ((x[:, :start] == eos_id) & generated[:, :start]).any(1, keepdim=True)
            x[:, start:] = x[:, start:].masked_fill(ended & (x[:, start:] == mask_id), eos_id)
        if not bool((x == mask_id).any()):
            break
        end = min(start + block_size, x.shape[1])
        if not bool((x[:, start:end] == mask_id).any()):
            continue
        if prefix is not None:
            step_logits = prefix.block(start, end)
        else:
            step_logits = _prefix_forward(model, x, start, end)
        part = None if order is None else order[:, start:end]
        nfe += denoise(step_logits, x[:, start:end], mask_id, decoding, part, nfe, row_nfe)
    return SampleResult(tokens=x, nfe=nfe, order=order, cache=cache, row_nfe=row_nfe)


def _prefix_forward(model, x: torch.Tensor, start: int, end: int) -> StepLogits:
    """Logits of block ``[start, end)`` from a forward over the whole prefix ``x[:, :end]``."""
    return lambda block, active: model(x[active, :end])[:, start:]


def visible(pattern: torch.Tensor, first: int, last: int) -> torch.Tensor | None:
    """The attention of positions ``[first, last)`` to ``[0, last)`` in ``pattern`` (L, L); None
    where they see all of it (a whole block, or one position of a causal model): no mask to
    build."""
    mask = pattern[first:last, :last]
    return None if bool(mask.all()) else mask


class PrefixCache:
    """Exact key-value caching for block-causal and causal puma models.

    The cache holds every row's keys and values of positions ``< c`` (whole blocks: what later
    positions see never changes once decoded). The first call of block ``[start, end)`` forwards
    ``x[:, c:end]`` for every row against the cache and keeps the keys and values of the now
    finished ``[c, start)``; later calls forward only the block, for the active rows. For a
    shifted model (ARM) the logits of position ``i`` are computed at ``i−1``, so the forward
    covers ``[start−1, end−1)`` and an ARM forwards one token per step."""

    def __init__(self, model: Transformer, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.cache = KVCache(len(model.blocks), x.shape[1])
        self.shift = model.cfg.shift
        self.mask = model.attention_mask(x.shape[1], x.device)

    def _logits(
        self, ids: torch.Tensor, first: int, cache: KVCache, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Unshifted logits of ``ids`` at positions ``first..``, attending to ``cache`` first."""
        positions = slice(first, first + ids.shape[1])
        return self.model.encode(ids, positions, mask, cache=cache)

    def block(self, start: int, end: int) -> StepLogits:
        lo, hi = (start - 1, end - 1) if self.shift else (start, end)
        width = end - start
        step_mask = visible(self.mask, max(lo, 0), hi)

        def step_logits(block: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
            c = self.cache.length
            if c < start:  # a new block: encode the finished positions [c, start) once
                raw = self._logits(self.x[:, c:hi], c, self.cache, visible(self.mask, c, hi))
                self.cache.commit(start - c)
                raw = raw[active]
                first = c
            else:
                every = isinstance(active, slice) or len(active) == len(self.x)
                first = max(lo, 0)
                # every row after the whole cache: the fresh entries go past the cached ones,
                # which a forward through the cache itself leaves as they are
                same = every and first == c
                view = (
                    self.cache
                    if same
                    else self.cache.view(None if every else active, first, hi - first)
                )
                raw = self._logits(self.x[active, first:hi], first, view, step_mask)
            if lo < 0:  # a shifted model's position 0 has no predecessor: uniform logits
                raw = torch.cat((torch.zeros_like(raw[:, :1]), raw), dim=1)
                first = -1
            return raw[:, lo - first : lo - first + width]

        return step_logits


class DualCache:
    """Approximate key-value caching for bidirectional models (after Fast-dLLM's dual cache).

    Every ``refresh`` calls, a full forward over the active rows caches every position's keys and
    values and fixes each row's *window*: its positions masked at that moment. The calls in
    between forward only the window (padded per row by repeating its first position), whose
    fresh keys and values replace the cached ones there; the positions outside it reuse theirs
    from the refresh, although the window's tokens have changed since. ``refresh=1`` is exact."""

    def __init__(self, model: Transformer, mask_id: int, refresh: int) -> None:
        self.model, self.mask_id, self.refresh = model, mask_id, refresh
        self.calls = 0

    def _refresh(self, ids: torch.Tensor, active: torch.Tensor, mask_id: int) -> torch.Tensor:
        self.cache = KVCache(len(self.model.blocks))
        logits = self.model.encode(ids, slice(None, ids.shape[1]), None, cache=self.cache)
        self.cache.commit(ids.shape[1])
        masked = ids == mask_id
        width = int(masked.sum(1).max())
        window = (~masked).int().argsort(dim=1, stable=True)[:, :width]
        pad = torch.arange(width, device=ids.device) >= masked.sum(1, keepdim=True)
        self.window = torch.where(pad, window[:, :1], window)
        self.rows = active
        return logits

    def __call__(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        ids = x[active]
        self.calls += 1
        if (self.calls - 1) % self.refresh == 0:
            return self._refresh(ids, active, self.mask_id)
        if isinstance(active, slice):  # every row (so every row was active at the refresh)
            sel, rows = active, None
        else:
            every = isinstance(self.rows, slice)
            sel = active if every else torch.searchsorted(self.rows, active)
            rows = None if len(sel) == len(self.window) else sel
        window = self.window[sel]
        view = self.cache.view(rows)
        for layer in view.layers:
            layer.scatter = window
        raw = self.model.encode(ids.gather(1, window), window, None, cache=view)
        out = raw.new_zeros(ids.shape[0], ids.shape[1], raw.shape[-1])
        return out.scatter(1, window.unsqueeze(-1).expand_as(raw), raw)
