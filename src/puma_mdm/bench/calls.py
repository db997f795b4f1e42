"""``puma bench calls``: what one network call costs against the positions it forwards, with and
without the exact ``prefix`` cache — where caching a block or autoregressive model can pay.

Decoding block ``[e − w, e)`` (``w`` = the block size; one token for an ARM) calls the network
once per step. Uncached, a call forwards the whole prefix ``x[:, :e]``; cached, it forwards the
``w`` block positions against the stored keys and values of ``x[:, :e − w]``
(:class:`~puma_mdm.sampling.PrefixCache`). For every block end ``e`` (every ``--every``-th
position for an ARM, and the smallest end, where the uncached call forwards ``w`` positions, or
2 for an ARM) both calls are timed on the same random tokens, alternating, and their medians
kept, after an untimed sweep. A cached call costs at least about as much as the cheapest call
that forwards ``w`` positions, the *floor* (the uncached call at the smallest end, or any
cached call: those also attend to the prefix); so the cache speeds a call up by at most about
``uncached(e) / floor``. Where the floor is most of a call (operator dispatch and the set-up of
small matrix products: small networks at batch 1; the weights of wider ones), that bound is
small; where the cost grows with the positions (large batches, long sequences), it approaches
``e / w``. ``decode_ratio`` = Σₑ uncached(e) / Σₑ cached(e) is the speed-up a k = 1 decode of
the whole sequence would get if nothing but the network calls cost time, ``decode_ceiling`` the
same with every cached call at the floor. ``--widths`` and
``--seq-lens`` add randomly initialised copies of each model at other widths and sequence
lengths (timing does not depend on the weights). Writes ``calls.json`` and ``calls.png``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from puma_mdm.bench.common import autocast_of, machine_info, sync
from puma_mdm.bench.sampling import parse_model
from puma_mdm.errors import PumaError
from puma_mdm.files import write_json
from puma_mdm.kinds import kind_of
from puma_mdm.model import KVCache, ModelConfig, Transformer
from puma_mdm.modes import evaluating
from puma_mdm.plots import plt, save_figure
from puma_mdm.pretrained import load_trained
from puma_mdm.sampling import keep_casts, visible

WARMUP = 5  # untimed calls of each kind per block end (allocator, oneDNN kernels, caches)


def seconds(call, device: torch.device) -> float:
    """Wall-clock seconds of one run of ``call``."""
    sync(device)
    begin = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - begin


def block_ends(cfg: ModelConfig, every: int) -> tuple[int, list[int]]:
    """(positions a cached call forwards, the block ends ``e`` to time, smallest first)."""
    width = cfg.block_size or 1
    step = cfg.block_size or every
    first = max(width, 2)  # an ARM's position 0 is a prompt: its first decoded token is 1
    return width, sorted({first, *range(step, cfg.seq_len + 1, step)} - {0})


def cached_step(
    model: Transformer, x: torch.Tensor, cache: KVCache, end: int, width: int
) -> Callable[[], torch.Tensor]:
    """The cached call of a decoding step of the block that ends at ``end``, as
    :class:`~puma_mdm.sampling.PrefixCache` makes it: the ``width`` positions that end there
    (at ``end − 1`` for a shifted model, whose logits of position ``i`` come from ``i − 1``)
    forwarded against the keys and values of every position before them. Those are added to
    ``cache`` now (it must hold no position at or past them); the call itself commits nothing,
    so it can be repeated."""
    pattern = model.attention_mask(x.shape[1], x.device)
    last = end - 1 if model.cfg.shift else end
    first, done = last - width, cache.length
    if done < first:  # what a block's first call caches
        fill = visible(pattern, done, first)
        model.encode(x[:, done:first], slice(done, first), fill, cache=cache)
        cache.commit(first - done)
    mask = visible(pattern, first, last)
    return lambda: model.encode(x[:, first:last], slice(first, last), mask, cache=cache)


@torch.no_grad()
def time_calls(
    model: Transformer,
    batch: int,
    dtype: torch.dtype | None,
    repeats: int,
    every: int,
    seed: int = 0,
) -> list[dict]:
    """One row per block end: the median seconds of an uncached call (the prefix) and a cached
    one (:func:`cached_step`)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    width, ends = block_ends(cfg, every)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=generator).to(device)
    rows = []
    with (
        evaluating(model),
        keep_casts(device.type),
        torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
    ):
        # a whole untimed sweep first: a process's first calls are slow at any shape
        for timed in (False, True):
            cache = KVCache(len(model.blocks), cfg.seq_len)
            for end in ends:

                def uncached(end=end):
                    return model(x[:, :end])

                cached = cached_step(model, x, cache, end, width)
                for _ in range(WARMUP):
                    for call in (uncached, cached):
                        call()
                if not timed:
                    continue
                pairs = [
                    (seconds(uncached, device), seconds(cached, device)) for _ in range(repeats)
                ]
                plain, fast = (statistics.median(p) for p in zip(*pairs, strict=True))
                rows.append(
                    {
                        "end": end,
                        "forwarded_uncached": end,
                        "forwarded_cached": width,
                        "uncached_s": plain,
                        "cached_s": fast,
                        "ratio": plain / fast,
                    }
                )
    return rows


def summarise(rows: list[dict]) -> dict:
    """The floor (the cheapest call that forwards one block: the uncached call at the smallest
    end or any cached call), the mean cached call, and a whole decode's speed-up: measured, and
    at most (every cached call at the floor)."""
    floor = min(rows[0]["uncached_s"], *(r["cached_s"] for r in rows))
    uncached = sum(r["uncached_s"] for r in rows)
    cached = statistics.fmean(r["cached_s"] for r in rows)
    return {
        "floor_s": floor,
        "mean_uncached_s": uncached / len(rows),
        "mean_cached_s": cached,
        "decode_ratio": uncached / (cached * len(rows)),
        "decode_ceiling": uncached / (floor * len(rows)),
    }


def variants(model: Transformer, widths: list[int], seq_lens: list[int]) -> list[Transformer]:
    """``model``, then randomly initialised copies of its architecture at every other
    (width, sequence length) of ``widths`` × ``seq_lens`` (its own where one is empty; the MLP
    at its default ratio unless set)."""
    own = model.cfg
    shapes = [(d, n) for d in widths or [own.dim] for n in seq_lens or [own.seq_len]]
    out = [model]
    for dim, seq_len in dict.fromkeys(shapes):
        if (dim, seq_len) == (own.dim, own.seq_len):
            continue
        cfg = replace(own, dim=dim, seq_len=seq_len, position_tables=dict(own.position_tables))
        try:
            cfg.validate()
        except ValueError as err:
            raise PumaError(f"--widths/--seq-lens {dim}/{seq_len}: {err}") from None
        out.append(Transformer(cfg).to(next(model.parameters()).device))
    return out


def plot_calls(results: list[dict], path: Path) -> Path:
    """Milliseconds per call against the block end, uncached (solid) and cached (dashed), one
    panel per batch size."""
    batches = sorted({r["batch_size"] for r in results})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 4.0), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        for result in (r for r in results if r["batch_size"] == batch):
            ends = [r["end"] for r in result["calls"]]
            label = f"{result['model']} (dim {result['dim']}, length {result['seq_len']})"
            line = ax.plot(ends, [1e3 * r["uncached_s"] for r in result["calls"]], label=label)
            ax.plot(
                ends,
                [1e3 * r["cached_s"] for r in result["calls"]],
                ls="--",
                color=line[0].get_color(),
            )
        ax.set_xlabel("block end e (uncached call forwards e positions)")
        ax.set_ylabel("ms per call (solid: uncached, dashed: prefix cache)")
        ax.set_title(f"batch {batch}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def run_calls_bench(
    models: list[str],
    widths: list[int],
    seq_lens: list[int],
    batch_sizes: list[int],
    out_dir: str | Path,
    repeats: int = 15,
    every: int = 16,
    precision: str = "bf16",
    threads: int = 0,
) -> dict:
    """Time every (model, width, sequence length, batch size); write ``calls.json`` and
    ``calls.png``."""
    dtype = autocast_of(precision)
    if not models or not batch_sizes:
        raise PumaError("--model and --batch-sizes each need at least one value")
    if min(batch_sizes) < 1 or repeats < 1 or every < 1:
        raise PumaError("--batch-sizes, --repeats and --every must be ≥ 1")
    named = [parse_model(m) for m in models]
    if threads:
        torch.set_num_threads(threads)
    results = []
    for name, directory in named:
        trained, _ = load_trained(directory)
        if kind_of(trained).exact_cache != "prefix":
            raise PumaError(
                f"--model {name}: a {kind_of(trained).name!r} model has no exact prefix cache "
                "(block-diffusion and autoregressive models do)"
            )
        for model in variants(trained, widths, seq_lens):
            for batch in batch_sizes:
                calls = time_calls(model, batch, dtype, repeats, every)
                result = {
                    "model": name,
                    "dim": model.cfg.dim,
                    "seq_len": model.cfg.seq_len,
                    "parameters": model.num_parameters(),
                    "trained": model is trained,
                    "batch_size": batch,
                    **summarise(calls),
                    "calls": calls,
                }
                results.append(result)
                print(
                    f"{name:<12} dim {model.cfg.dim:<5} length {model.cfg.seq_len:<5} "
                    f"batch {batch:<4} call: uncached "
                    f"{1e3 * result['mean_uncached_s']:.3f} ms (mean), cached "
                    f"{1e3 * result['mean_cached_s']:.3f} ms, floor "
                    f"{1e3 * result['floor_s']:.3f} ms; decode ratio "
                    f"{result['decode_ratio']:.2f}× (ceiling {result['decode_ceiling']:.2f}×)",
                    flush=True,
                )
    report = {
        "benchmark": "calls",
        "settings": {
            "models": dict(named),
            "widths": widths,
            "seq_lens": seq_lens,
            "batch_sizes": batch_sizes,
            "repeats": repeats,
            "every": every,
            "precision": precision,
            "timing": f"median of alternating uncached and cached calls on the same random "
            f"tokens, after an untimed sweep of every block end and {WARMUP} untimed calls of "
            "each per block end",
        },
        "machine": machine_info(),
        "results": results,
    }
    out_dir = Path(out_dir)
    write_json(out_dir / "calls.json", report)
    picture = plot_calls(results, out_dir / "calls.png")
    print(f"wrote {out_dir / 'calls.json'} and {picture}")
    return report
