"""Compare unmasking policies: whole-example accuracy and NFE for every (policy, k), for
threshold decoding and for the two entropy-bounded rules — the "Train for the Worst, Plan for
the Best" comparison, with the parallel decoders beside k = 1."""

from __future__ import annotations

import time

import torch

from puma_mdm.evaluate import evaluate
from puma_mdm.tasks.base import Examples, Task


def policy_table(
    model: torch.nn.Module,
    task: Task,
    examples: Examples,
    policies: list[str],
    ks: list[int],
    thresholds: list[float],
    batch_size: int = 500,
    autocast_dtype: torch.dtype | None = None,
    entropy_bounds: list[float] = (),
    cache: str = "auto",
    refresh: int = 4,
    entropy_sums: list[float] = (),
) -> list[dict]:
    """One row per decoding setting: policy, k, threshold, entropy bound or entropy sum γ, the
    cache used, accuracy, NFE per batch and per example, seconds."""
    settings = [(p, k, None, None, None) for p in policies for k in ks]
    settings += [(p, None, t, None, None) for p in policies for t in thresholds]
    settings += [(p, None, None, g, None) for p in policies for g in entropy_bounds]
    settings += [(p, None, None, None, g) for p in policies for g in entropy_sums]
    rows = []
    for policy, k, threshold, gamma, total in settings:
        start = time.perf_counter()
        result = evaluate(
            model,
            task,
            examples,
            policy=policy,
            k=k,
            threshold=threshold,
            entropy_bound=gamma,
            entropy_sum=total,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            cache=cache,
            refresh=refresh,
        )
        rows.append(
            {
                "policy": policy,
                "k": k,
                "threshold": threshold,
                "entropy_bound": gamma,
                "entropy_sum": total,
                "cache": result["cache"],
                "accuracy": result["accuracy"],
                "nfe": result["nfe"],
                "nfe_per_example": result["nfe_per_example"],
                "n": result["n"],
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of ``policy_table`` rows."""
    lines = [
        f"{'policy':<10} {'decoding':<14} {'accuracy':>9} {'NFE':>6} {'NFE/ex':>7} {'seconds':>8}"
    ]
    for r in rows:
        if r["k"] is not None:
            decoding = f"k={r['k']}"
        elif r["threshold"] is not None:
            decoding = f"τ≥{r['threshold']}"
        elif r["entropy_bound"] is not None:
            decoding = f"ΣH−maxH≤{r['entropy_bound']}"
        else:
            decoding = f"ΣH≤{r['entropy_sum']}"
        lines.append(
            f"{r['policy']:<10} {decoding:<14} {100 * r['accuracy']:>8.1f}% "
            f"{r['nfe']:>6.1f} {r['nfe_per_example']:>7.1f} {r['seconds']:>8.1f}"
        )
    return "\n".join(lines)
