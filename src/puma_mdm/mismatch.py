"""The mismatch meter (docs/algorithms.md §7): a model's loss on the masks its own adaptive decoder
produces, stage by stage, against random masks with as many masked positions.

Each held-out example is decoded from its prompt (policy and ``k`` or threshold as in
``sample``) with its decode order recorded. The decoder's input before step ``s`` has masked
exactly the positions decoded at step ``≥ s``, so every intermediate state is rebuilt from the
order and the final tokens, without re-running the sampler. For a state with ``n`` of its
``L_eff`` non-prompt positions still masked:

* **stage** = ``(L_eff − n) / L_eff``, the fraction already unmasked, in bin ``⌊stage·K⌋`` of ``K``;
* **decoder masks**: ``(1/n) Σ_{i masked} −log p_θ(x0_i | x_t)`` where ``x_t`` is ``x0`` with the
  decoder's mask: ground-truth tokens everywhere else, so it differs from the next curve only
  in *which* positions are masked — the inference-time masks PUMA trains on;
* **random masks**: the same loss with ``n`` non-prompt positions chosen uniformly, averaged over
  ``draws`` draws;
* **decoder states**: the same loss on the decoder's real input, its own (possibly wrong) tokens
  at the revealed positions; its excess over the decoder-mask loss is what the model's own
  mistakes cost.

Losses are scored against the ground truth ``x0``: on held-out data it is the answer the model
should give, whereas scoring against the model's own output would reward confident mistakes.
The states of one example are not independent, so each example's states in a bin are averaged
first; a bin reports the mean and standard error over examples, and the gap
``decoder masks − random masks`` is paired per example. ``overall`` does the same over all of an
example's states (with ``k = 1``: one state per masked count ``n = L_eff … 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from puma_mdm.errors import PumaError
from puma_mdm.kinds import sample
from puma_mdm.masking.base import pick_top, random_scores
from puma_mdm.modes import evaluating
from puma_mdm.sampling import check_sampling_args
from puma_mdm.tasks.base import Examples

CURVES = ("decoder_masks", "random_masks", "decoder_states")


@dataclass
class DecoderStates:
    """State ``j`` is the decoder's input for example ``example[j]`` at step ``step[j]``;
    ``masked[j]`` (bool, L) its still-masked positions."""

    example: torch.Tensor
    step: torch.Tensor
    masked: torch.Tensor


def decoder_states(order: torch.Tensor) -> DecoderStates:
    """Every intermediate state of a decode, from ``SampleResult.order`` (B, L): a row takes part
    in steps ``0 … max(order)`` (each reveals at least one position) and before step ``s`` the
    positions with ``order ≥ s`` are masked."""
    steps = order.amax(1) + 1  # 0 for rows with nothing to decode
    example = torch.arange(len(order), device=order.device).repeat_interleave(steps)
    first = torch.cumsum(steps, 0) - steps
    step = torch.arange(len(example), device=order.device) - first[example]
    return DecoderStates(example, step, order[example] >= step.unsqueeze(1))


def random_masks_like(
    masked: torch.Tensor, free: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Masks with each row's count of ``masked``, positions drawn uniformly among ``free``."""
    scores = random_scores(masked.shape, generator, masked.device)
    return pick_top(scores, free, masked.sum(1))


def mean_masked_ce(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    masked: torch.Tensor,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per row: ``(1/n) Σ_{i masked} −log p_θ(x0_i | x_t)``, in float32, ``batch_size`` rows per
    forward."""
    out = []
    for start in range(0, len(x_t), batch_size):
        rows = slice(start, start + batch_size)
        with torch.autocast(
            x_t.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            logits = model(x_t[rows])
        ce = F.cross_entropy(logits.float().transpose(1, 2), x0[rows], reduction="none")
        out.append((ce * masked[rows]).sum(1) / masked[rows].sum(1))
    return torch.cat(out) if out else torch.zeros(0, device=x_t.device)


def _mean_se(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "se": None}
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()), "se": se}


def _per_example(example: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` per distinct ``example`` (in ascending example order)."""
    _, inverse = np.unique(example, return_inverse=True)
    return np.bincount(inverse, weights=values) / np.bincount(inverse)


@dataclass
class Mismatch:
    """One record per decoder state (``example``, ``stage`` fraction unmasked, its ``bin`` of
    ``bins``, and a loss per curve in ``losses``), plus the decoded ``tokens`` (N, L)."""

    example: np.ndarray
    stage: np.ndarray
    bin: np.ndarray
    losses: dict[str, np.ndarray]
    bins: int
    tokens: torch.Tensor

    def _stats(self, select: np.ndarray) -> dict:
        example = self.example[select]
        means = {name: _per_example(example, v[select]) for name, v in self.losses.items()}
        stats = {name: _mean_se(m) for name, m in means.items()}
        stats["gap"] = _mean_se(means["decoder_masks"] - means["random_masks"])
        return {"examples": len(np.unique(example)), "states": int(select.sum()), **stats}

    def summary(self) -> dict:
        """Per-bin and overall mean ± standard error (over examples) of every curve and of the
        gap decoder masks − random masks; JSON-ready."""
        per_bin = [
            {"bin": j, "stage": [j / self.bins, (j + 1) / self.bins], **self._stats(self.bin == j)}
            for j in range(self.bins)
        ]
        overall = self._stats(np.ones_like(self.bin, dtype=bool))
        return {"bins": per_bin, "overall": overall}


@torch.no_grad()
def measure_mismatch(
    model: torch.nn.Module,
    examples: Examples,
    mask_id: int,
    policy: str = "margin",
    k: int | None = 1,
    threshold: float | None = None,
    bins: int = 8,
    draws: int = 4,
    batch_size: int = 256,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> Mismatch:
    """Decode ``examples`` from their prompts and score every intermediate state (see the
    module docstring). ``threshold`` replaces ``k``; ``batch_size`` examples are decoded at once
    and ``batch_size`` states go through each scoring forward."""
    try:
        check_sampling_args(policy, None if threshold is not None else k, None, threshold, 0.0)
    except ValueError as err:
        raise PumaError(str(err)) from None
    for name, value in (("bins", bins), ("draws", draws), ("batch_size", batch_size)):
        if value < 1:
            raise PumaError(f"{name} must be ≥ 1, got {value}")
    if len(examples) == 0:
        raise PumaError("no examples to measure on")
    with evaluating(model):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        sample_gen = torch.Generator().manual_seed(seed)
        mask_gen = torch.Generator().manual_seed(seed + 1)
        records: dict[str, list] = {name: [] for name in ("example", "stage", "bin", *CURVES)}
        tokens = []
        for start in range(0, len(examples), batch_size):
            x0 = examples.x0[start : start + batch_size].to(device)
            free = ~examples.prompt_mask[start : start + batch_size].to(device)
            result = sample(
                model,
                x0.masked_fill(free, mask_id),
                mask_id,
                policy=policy,
                k=None if threshold is not None else k,
                threshold=threshold,
                generator=sample_gen,
                record_order=True,
                autocast_dtype=autocast_dtype,
            )
            tokens.append(result.tokens.cpu())
            states = decoder_states(result.order)
            s_x0, s_free, masked = x0[states.example], free[states.example], states.masked

            def loss(x_t: torch.Tensor, masked: torch.Tensor, s_x0=s_x0) -> torch.Tensor:
                return mean_masked_ce(model, x_t, s_x0, masked, batch_size, autocast_dtype)

            own = result.tokens[states.example]
            records["decoder_masks"].append(loss(s_x0.masked_fill(masked, mask_id), masked))
            records["decoder_states"].append(loss(own.masked_fill(masked, mask_id), masked))
            random_loss = torch.zeros(len(masked), device=device)
            for _ in range(draws):
                other = random_masks_like(masked, s_free, mask_gen)
                random_loss += loss(s_x0.masked_fill(other, mask_id), other) / draws
            records["random_masks"].append(random_loss)
            l_eff, unmasked = s_free.sum(1), (s_free & ~masked).sum(1)
            records["example"].append(states.example + start)
            records["stage"].append(unmasked / l_eff)
            records["bin"].append(unmasked * bins // l_eff)
    flat = {name: torch.cat(parts).cpu().numpy() for name, parts in records.items()}
    return Mismatch(
        example=flat["example"],
        stage=flat["stage"],
        bin=flat["bin"],
        losses={name: flat[name] for name in CURVES},
        bins=bins,
        tokens=torch.cat(tokens),
    )


def _fmt(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return f"{'—':>15}"
    se = f"± {stat['se']:.3f}" if stat["se"] is not None else " " * 7
    return f"{stat['mean']:>7.3f} {se}"


def format_mismatch(summary: dict) -> str:
    """A fixed-width text table of ``Mismatch.summary()``."""
    head = ["stage", "states", "decoder masks", "random masks", "gap", "decoder states"]
    lines = [f"{head[0]:<11} {head[1]:>6} " + " ".join(f"{h:>15}" for h in head[2:])]
    rows = [(f"{r['stage'][0]:.2f}–{r['stage'][1]:.2f}", r) for r in summary["bins"]]
    for label, r in [*rows, ("overall", summary["overall"])]:
        cells = " ".join(_fmt(r[name]) for name in ("decoder_masks", "random_masks", "gap"))
        lines.append(f"{label:<11} {r['states']:>6} {cells} {_fmt(r['decoder_states'])}")
    return "\n".join(lines)
