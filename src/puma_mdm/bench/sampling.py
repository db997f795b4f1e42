"""``puma bench sampling``: accuracy, network calls and wall-clock of every decoder, cached and
uncached, on trained models (Sudoku, math programs, text), at several batch sizes.

For each model, decoder (policy with ``k``, a confidence threshold or an entropy bound) and
batch size, the same examples are decoded once per cache kind that the model can use
(``none`` always; ``prefix`` for block-diffusion and autoregressive models; ``dual`` for
bidirectional ones), in the same process, one after the other, each first once untimed, so the
ratios compare steady-state decoding like with like. Each row records the accuracy (tasks that
score outputs), the mean network calls per batch, seconds, generated tokens per second, and
whether the tokens equal those of the uncached run. ``sampling.png`` plots accuracy against
network calls per model (the Pareto front of the uncached decoders drawn as a line).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from puma_mdm.bench.common import autocast_of, machine_info, sync
from puma_mdm.errors import PumaError
from puma_mdm.files import write_json
from puma_mdm.kinds import kind_of, sample
from puma_mdm.plots import plt, save_figure
from puma_mdm.pretrained import load_trained
from puma_mdm.sampling import CACHES, check_sampling_args
from puma_mdm.tasks.base import Examples

DECODER = re.compile(r"^(k|tau|eb|es)=([0-9.eE+-]+)$")
NAMES = {"k": "k", "tau": "threshold", "eb": "entropy_bound", "es": "entropy_sum"}


def parse_decoder(text: str) -> dict:
    """``k=2`` → {"k": 2}; ``tau=0.9`` → threshold; ``eb=0.3`` → entropy bound γ (EB-sampler);
    ``es=0.01`` → entropy sum γ."""
    match = DECODER.match(text.strip())
    if match is None:
        raise PumaError(f"--decoders: {text!r} is not k=N, tau=X, eb=X or es=X")
    kind, value = match.groups()
    try:
        options = {NAMES[kind]: int(value) if kind == "k" else float(value)}
        check_sampling_args(
            "margin",
            options.get("k"),
            None,
            options.get("threshold"),
            0.0,
            options.get("entropy_bound"),
            options.get("entropy_sum"),
        )
    except ValueError as err:
        raise PumaError(f"--decoders {text}: {err}") from None
    return options


def parse_model(text: str) -> tuple[str, str]:
    """``NAME=DIR`` → (name, directory)."""
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise PumaError(f"--model {text!r}: expected NAME=DIRECTORY, e.g. sudoku=runs/sudoku")
    return name, directory


def caches_for(model, caches: list[str]) -> list[str]:
    """The cache kinds of ``caches`` that ``model`` can use (``none`` first)."""
    kind, usable = kind_of(model), []
    for cache in caches:
        try:
            resolved = kind.check_cache(cache, 4, kind.decode_block)
        except ValueError:
            continue
        if resolved not in usable:
            usable.append(resolved)
    return sorted(usable, key=lambda c: c != "none")


def decode_all(
    model, task, examples: Examples, batch: int, options: dict, dtype, cache: str, refresh: int
) -> dict:
    """Decode ``examples`` in batches of ``batch``; wall-clock and process CPU time of the
    ``sample`` calls only (CPU time is the fairer ratio on a shared machine), after decoding
    every batch once untimed: the timed calls then meet only shapes seen before (oneDNN sets up
    a kernel per new shape; each uncached call of an autoregressive decode forwards a new prefix
    length, each call of a shrinking batch a new row count), so the rows compare steady-state
    decoding, not which run came first."""
    device = next(model.parameters()).device
    tokens, nfe, row_nfe, seconds, cpu, correct = [], 0, 0, 0.0, 0.0, 0
    eos = getattr(task, "eos_id", None)

    def decode(chunk: Examples, seed: int):
        return sample(
            model,
            task.masked_inputs(chunk),
            task.mask_id,
            autocast_dtype=dtype,
            eos_id=eos,
            cache=cache,
            refresh=refresh,
            generator=torch.Generator().manual_seed(seed),
            **options,
        )

    batches = [examples[start : start + batch] for start in range(0, len(examples), batch)]
    batches = [Examples(b.x0.to(device), b.prompt_mask.to(device)) for b in batches]
    for index, chunk in enumerate(batches):
        decode(chunk, index * batch)
    for index, chunk in enumerate(batches):
        sync(device)
        begin, begin_cpu = time.perf_counter(), time.process_time()
        result = decode(chunk, index * batch)
        sync(device)
        seconds += time.perf_counter() - begin
        cpu += time.process_time() - begin_cpu
        nfe += result.nfe
        row_nfe += int(result.row_nfe.sum())
        tokens.append(result.tokens.cpu())
        if task.scores_outputs:
            correct += int(task.correct(result.tokens, chunk).sum())
    generated = int((task.masked_inputs(examples) == task.mask_id).sum())
    return {
        "tokens": torch.cat(tokens),
        "accuracy": correct / len(examples) if task.scores_outputs else None,
        "nfe": nfe / len(batches),
        "nfe_per_example": row_nfe / len(examples),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "seconds_per_batch": seconds / len(batches),
        "tokens_per_s": generated / seconds,
    }


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both fewer calls and higher accuracy, by calls."""
    front, best = [], float("-inf")
    for nfe, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((nfe, acc))
            best = acc
    return front


def plot_sampling(rows: list[dict], path: Path) -> Path | None:
    """Accuracy against network calls per example (what decoding one at a time costs), one
    panel per scored model, at the largest batch."""
    scored = sorted({r["model"] for r in rows if r["accuracy"] is not None})
    if not scored:
        return None
    fig, axes = plt.subplots(1, len(scored), figsize=(5.2 * len(scored), 4.0), squeeze=False)
    for ax, name in zip(axes[0], scored, strict=True):
        mine = [r for r in rows if r["model"] == name]
        batch = max(r["batch_size"] for r in mine)
        mine = [r for r in mine if r["batch_size"] == batch]
        for cache, marker in (("none", "o"), ("prefix", "s"), ("dual", "^")):
            pts = [r for r in mine if r["cache"] == cache]
            if not pts:
                continue
            ax.scatter(
                [r["nfe_per_example"] for r in pts],
                [100 * r["accuracy"] for r in pts],
                marker=marker,
                label=f"cache={cache}",
                alpha=0.8,
            )
            for r in pts:
                ax.annotate(r["decoder"], (r["nfe_per_example"], 100 * r["accuracy"]), fontsize=7)
        uncached = [r for r in mine if r["cache"] == "none"]
        front = pareto([(r["nfe_per_example"], 100 * r["accuracy"]) for r in uncached])
        if front:
            ax.plot(*zip(*front, strict=True), color="grey", lw=1, label="Pareto front (uncached)")
        ax.set_xlabel(f"network calls per example (batches of {batch})")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def run_sampling_bench(
    models: list[str],
    decoders: list[str],
    batch_sizes: list[int],
    examples: int,
    single_examples: int,
    out_dir: str | Path,
    policy: str = "margin",
    caches: tuple[str, ...] = ("none", "prefix", "dual"),
    refresh: int = 4,
    precision: str = "bf16",
    threads: int = 0,
) -> dict:
    """Run every (model, decoder, batch size, usable cache); write ``sampling.json`` and
    ``sampling.png`` into ``out_dir``."""
    dtype = autocast_of(precision)
    if not models or not decoders or not batch_sizes:
        raise PumaError("--model, --decoders and --batch-sizes each need at least one value")
    if min(batch_sizes) < 1 or examples < 1 or single_examples < 1:
        raise PumaError("--batch-sizes, --examples and --single-examples must be ≥ 1")
    if not isinstance(refresh, int) or refresh < 1:
        raise PumaError(f"--refresh must be ≥ 1, got {refresh}")
    try:
        check_sampling_args(policy, None, None, None, 0.0)
    except ValueError as err:
        raise PumaError(f"--policy: {err}") from None
    unknown = sorted(set(caches) - set(CACHES))
    if unknown:
        raise PumaError(f"--caches: unknown kind(s) {unknown}; choose from {list(CACHES)}")
    parsed = [(d, parse_decoder(d)) for d in decoders]
    named = [parse_model(m) for m in models]
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for name, directory in named:
        model, task = load_trained(directory)
        usable = caches_for(model, list(caches))
        pool = task.eval_examples()
        for batch in batch_sizes:
            n = min(len(pool), max(batch, single_examples if batch == 1 else examples))
            subset = pool[:n]
            for label, options in parsed:
                reference = None
                for cache in usable:
                    out = decode_all(
                        model,
                        task,
                        subset,
                        batch,
                        {"policy": policy, **options},
                        dtype,
                        cache,
                        refresh,
                    )
                    tokens = out.pop("tokens")
                    if cache == "none":
                        reference = tokens
                    row = {
                        "model": name,
                        "task": task.name,
                        "decoder": label,
                        "policy": policy,
                        **{key: options.get(key) for key in NAMES.values()},
                        "cache": cache,
                        "refresh": refresh if cache == "dual" else None,
                        "batch_size": batch,
                        "examples": n,
                        **out,
                        "identical_to_uncached": None
                        if reference is None
                        else bool(torch.equal(tokens, reference)),
                    }
                    rows.append(row)
                    acc = "" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}% "
                    print(
                        f"{name:<12} {label:<9} batch {batch:<4} cache {cache:<6} {acc}"
                        f"NFE {row['nfe']:.1f} ({row['nfe_per_example']:.1f} per example)  "
                        f"{row['seconds']:.2f} s  "
                        f"{row['tokens_per_s']:.0f} tokens/s",
                        flush=True,
                    )
    speedups = cache_speedups(rows)
    report = {
        "benchmark": "sampling",
        "settings": {
            "models": dict(named),
            "policy": policy,
            "decoders": decoders,
            "batch_sizes": batch_sizes,
            "examples": examples,
            "single_examples": single_examples,
            "precision": precision,
            "refresh": refresh,
            "timing": "wall-clock and process CPU time of sample() over all batches, after "
            "decoding them once untimed; the caches of one decoder run one after the other on "
            "the same examples",
        },
        "machine": machine_info(),
        "rows": rows,
        "cache_speedups": speedups,
    }
    out_dir = Path(out_dir)
    write_json(out_dir / "sampling.json", report)
    picture = plot_sampling(rows, out_dir / "sampling.png")
    print(f"wrote {out_dir / 'sampling.json'}" + (f" and {picture}" if picture else ""))
    return report


def cache_speedups(rows: list[dict]) -> list[dict]:
    """Uncached ÷ cached seconds (wall-clock and CPU) for each (model, decoder, batch)
    measured both ways."""
    out = []
    key = ("model", "decoder", "batch_size")
    bases = {tuple(r[k] for k in key): r for r in rows if r["cache"] == "none"}
    for row in rows:
        base = bases.get(tuple(row[k] for k in key))
        if row["cache"] == "none" or base is None:
            continue
        out.append(
            {
                "model": row["model"],
                "decoder": row["decoder"],
                "batch_size": row["batch_size"],
                "cache": row["cache"],
                "speedup": base["seconds"] / row["seconds"],
                "cpu_speedup": base["cpu_seconds"] / row["cpu_seconds"],
                "identical_to_uncached": row["identical_to_uncached"],
                "accuracy_change": None
                if row["accuracy"] is None
                else row["accuracy"] - base["accuracy"],
            }
        )
    return out
