"""What to report for an MDM-Prime model: the NLL bound (digit-marginal form, with the joint
form beside it, labelled as what it is) and, per decoding setting, accuracy, network calls per
example and the idle-step fraction."""

from __future__ import annotations

import time

import torch

from puma_mdm.modes import evaluating
from puma_mdm.prime.loss import prime_loss
from puma_mdm.prime.model import PrimeTransformer
from puma_mdm.prime.process import mask_digits
from puma_mdm.prime.sampling import sample_tokens
from puma_mdm.tasks.base import Examples, Task


@torch.no_grad()
def prime_nll_bound(
    model: PrimeTransformer,
    examples: Examples,
    samples: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Per-token NLL in nats on random digit masks (count form, ``samples`` draws):
    ``nll`` — the digit-marginal upper bound (report this); ``nll_joint`` — the published
    training loss on the same masks, *not* a bound when ℓ > 1 (equal to ``nll`` when ℓ = 1)."""
    with evaluating(model):
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        totals = {"nll": 0.0, "nll_joint": 0.0}
        count = 0
        for _ in range(samples):
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                batch = mask_digits(
                    chunk.x0.to(device), chunk.prompt_mask.to(device), model.codec, generator
                )
                logits = model(batch.x_t)
                for key, form in (("nll", "marginal"), ("nll_joint", "joint")):
                    totals[key] += float(prime_loss(logits, batch, model.codec, form)) * len(chunk)
                count += len(chunk)
    return {key: value / count for key, value in totals.items()}


@torch.no_grad()
def decode_report(
    model: PrimeTransformer,
    task: Task,
    examples: Examples,
    batch_size: int = 256,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    **decoding,
) -> dict[str, float]:
    """Decode every example from its prompt with :func:`sample_tokens` (``decoding``: policy,
    k, threshold, time_steps, temperature); return accuracy, network calls per example
    (``nfe``), the fraction of idle steps and the seconds taken."""
    with evaluating(model):
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        correct, row_nfe, idle, horizon = 0, 0, 0, 0
        start_time = time.perf_counter()
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            chunk = Examples(chunk.x0.to(device), chunk.prompt_mask.to(device))
            result = sample_tokens(
                model,
                task.masked_inputs(chunk),
                task.mask_id,
                model.codec,
                generator=generator,
                autocast_dtype=autocast_dtype,
                **decoding,
            )
            if task.scores_outputs:  # text corpora have no right answer
                correct += int(task.correct(result.tokens, chunk).sum())
            row_nfe += int(result.row_nfe.sum())
            idle += int(result.idle.sum())
            horizon += int(result.horizon.sum())
    return {
        "accuracy": correct / len(examples) if task.scores_outputs else None,
        "nfe": row_nfe / len(examples),
        "idle_fraction": idle / max(horizon, 1),
        "n": len(examples),
        "seconds": round(time.perf_counter() - start_time, 2),
    }


def expected_idle_fraction(examples: Examples, digits: int, time_steps: int) -> float:
    """E[idle fraction] of the ``time_steps`` reverse process: a step is idle when none of a
    row's ``N`` masked digits picks it, probability ``(1 − 1/T)^N``; averaged over rows."""
    n = (~examples.prompt_mask).sum(1).double() * digits
    return float(((1 - 1 / time_steps) ** n).mean())


def prime_eval(
    model: PrimeTransformer,
    task: Task,
    examples: Examples,
    policies: list[str],
    time_steps: list[int],
    nll_samples: int = 1,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """The Prime report: codec, NLL bound (and joint form), and one row per (policy, T) of
    ancestral (``time_steps``) decoding with accuracy, NFE per example and idle fraction."""
    codec = model.codec
    report = {
        "digits": codec.digits,
        "base": codec.base,
        "unused_codes": codec.unused_codes,
        **prime_nll_bound(model, examples, samples=nll_samples, batch_size=batch_size),
        "nll_samples": nll_samples,
        "ancestral": [],
    }
    for policy in policies:
        for steps in time_steps:
            row = decode_report(
                model,
                task,
                examples,
                batch_size=batch_size,
                autocast_dtype=autocast_dtype,
                policy=policy,
                time_steps=steps,
            )
            expected = expected_idle_fraction(examples, codec.digits, steps)
            report["ancestral"].append(
                {"policy": policy, "time_steps": steps, **row, "idle_expected": expected}
            )
    return report


def format_prime(report: dict) -> str:
    """A text summary of :func:`prime_eval`."""
    lines = [
        f"MDM-Prime: ℓ = {report['digits']} digits in base {report['base']} "
        f"({report['unused_codes']} unused codes)",
        f"NLL bound (digit-marginal form): {report['nll']:.4f} nats/token; joint form (the "
        f"training loss, not a bound for ℓ > 1): {report['nll_joint']:.4f}",
    ]
    if report["ancestral"]:
        lines.append(
            f"{'policy':<10} {'T':>5} {'accuracy':>9} {'NFE/example':>12} {'idle':>7} "
            f"{'(expected)':>10} {'seconds':>8}"
        )
    for r in report["ancestral"]:
        accuracy = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(
            f"{r['policy']:<10} {r['time_steps']:>5} {accuracy:>9} "
            f"{r['nfe']:>12.1f} {100 * r['idle_fraction']:>6.1f}% "
            f"{100 * r['idle_expected']:>9.1f}% {r['seconds']:>8.1f}"
        )
    return "\n".join(lines)
