"""Accuracy of a model's decoder on a task's held-out examples, and NLL bounds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

from puma_mdm.kinds import kind_of, sample
from puma_mdm.modes import evaluating
from puma_mdm.sampling import is_adaptive
from puma_mdm.tasks.base import Examples, Task


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    examples: Examples,
    policy: str = "margin",
    k: int | None = 1,
    threshold: float | None = None,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    seed: int = 0,
    entropy_bound: float | None = None,
    cache: str = "auto",
    refresh: int = 4,
    entropy_sum: float | None = None,
) -> dict[str, float]:
    """Decode every example from its prompt; return accuracy (fraction judged correct by the
    task), the mean number of network calls per batch (``nfe``) and per example
    (``nfe_per_example``: what decoding one at a time costs; the two differ for the adaptive
    rules, where a batch runs until its slowest row is done), the count and the cache used
    (``auto`` resolved). ``k`` applies when no adaptive rule (``threshold``, ``entropy_bound``,
    ``entropy_sum``) is given; ``cache`` and ``refresh`` are :func:`~puma_mdm.sampling.sample`'s."""
    adaptive = is_adaptive(threshold, entropy_bound, entropy_sum)
    with evaluating(model):
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        correct, nfe, row_nfe, batches, used = 0, 0, 0, 0, cache
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            chunk = Examples(chunk.x0.to(device), chunk.prompt_mask.to(device))
            result = sample(
                model,
                task.masked_inputs(chunk),
                task.mask_id,
                policy=policy,
                k=None if adaptive else k,
                threshold=threshold,
                entropy_bound=entropy_bound,
                entropy_sum=entropy_sum,
                generator=generator,
                autocast_dtype=autocast_dtype,
                eos_id=getattr(task, "eos_id", None),
                cache=cache,
                refresh=refresh,
            )
            correct += int(task.correct(result.tokens, chunk).sum())
            nfe += result.nfe
            row_nfe += int(result.row_nfe.sum())
            batches += 1
            used = result.cache
    return {
        "accuracy": correct / len(examples),
        "nfe": nfe / batches,
        "nfe_per_example": row_nfe / len(examples),
        "n": len(examples),
        "cache": used,
    }


def nll_bound(
    model: torch.nn.Module,
    examples: Examples,
    mask_id: int,
    samples: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    form: str = "count",
) -> float:
    """Per-token NLL upper bound (nats) on random masks, averaged over ``samples`` draws of the
    ELBO: ``count`` form E_n[(1/n) Σ_masked −log p(x0_i | x_t)], or ``continuous`` form
    E_t[(1/(t·L_eff)) Σ_masked −log p(x0_i | x_t)] with antithetic t across each batch.
    Block models are scored block by block (their ELBO); an ARM gives its exact NLL."""
    return kind_of(model).nll_bound(model, examples, mask_id, samples, batch_size, seed, form)


def likelihood_report(
    model: torch.nn.Module,
    examples: Examples,
    mask_id: int,
    samples: int = 8,
    batch_size: int = 256,
    token_bytes: Sequence[int] | None = None,
) -> dict[str, float]:
    """The continuous-time NLL bound per token over ``samples`` independent Monte-Carlo draws
    (antithetic t within each batch): mean, standard error of the mean, perplexity exp(NLL),
    and bits per byte when ``token_bytes`` (bytes each id spells) is given."""
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    draws = [
        nll_bound(model, examples, mask_id, batch_size=batch_size, seed=s, form="continuous")
        for s in range(samples)
    ]
    nll = statistics.fmean(draws)
    targets = examples.x0[~examples.prompt_mask]
    report = {
        "nll": nll,
        "nll_stderr": statistics.stdev(draws) / math.sqrt(samples) if samples > 1 else math.nan,
        "perplexity": math.exp(nll),
        "tokens": len(targets),
        "sequences": len(examples),
        "samples": samples,
    }
    if token_bytes is not None:
        n_bytes = int(torch.as_tensor(token_bytes)[targets].sum())
        report["bits_per_byte"] = nll * len(targets) / n_bytes / math.log(2)
    return report
