"""``puma bench throughput``: training tokens/s per strategy and sampling puzzles/s per policy.

* Training: for each model size, strategy and precision (and, with ``compile``, each precision
  under torch.compile), a few timed steps after warm-up, the settings' steps alternating. The
  step is written out here with the trainer's own pieces (``process.batch``, forward under
  autocast, ``mdm_loss``, backward, clip, AdamW, ``process.update``) so that the forward
  process's share of it — ``batch()`` + ``update(logits)`` — is timed directly.
* Sampling: ``sample()`` for every policy at several batch sizes, with k=1 and with a confidence
  threshold, in fp32 and bf16 autocast; puzzles/s, NFE and accuracy.
* Reference: one measured fp32 forward of the reference-shaped model (162 tokens) at the largest
  sampling batch; the reference sampler's time is extrapolated as NFE (81 at k=1) × that forward
  and compared with our measured time for the same number of puzzles.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from puma_mdm.bench.common import AUTOCASTS, machine_info, sync
from puma_mdm.errors import PumaError
from puma_mdm.files import write_json
from puma_mdm.kinds import sample
from puma_mdm.losses import mdm_loss
from puma_mdm.model import Transformer
from puma_mdm.pretrained import load_trained
from puma_mdm.sampling import POLICIES
from puma_mdm.tasks import Examples, Task, build_task
from puma_mdm.train.config import load_config
from puma_mdm.train.distributed import resolve_device
from puma_mdm.train.trainer import Trainer, build_model

REFERENCE_NETWORK = ["model.dim=256", "model.n_layers=8", "model.n_heads=8", "model.mlp_hidden=768"]
REFERENCE = [*REFERENCE_NETWORK, "task.options.encoding=reference"]
# Model sizes as overrides of the base config (by default the bundled `sudoku` config).
SIZES = {
    "shipped": [],  # dim 128, 6 layers, 4 heads, 81-token infill encoding
    "reference-81": REFERENCE_NETWORK,  # the reference network on the 81-token encoding
    "reference": REFERENCE,  # the PUMA paper's Sudoku model: 162 tokens
}
# The PUMA reference code's fp32 training step at the reference shape on this machine class
# (2 cores), in seconds: quoted from docs/calibrations.md §1, not measured here (the code is
# not shipped).
REFERENCE_CODE_STEP = 1.69
STRATEGIES = ("standard", "progressive")


@dataclass
class Base:
    """What every model built here starts from: the base config, the overrides on top of it
    (sizes add theirs), and the directory for scratch files."""

    config: str | Path
    overrides: list[str]
    out_dir: Path


# -- training ----------------------------------------------------------------------------------


def timed_step(trainer: Trainer) -> tuple[float, float]:
    """One training step (as ``Trainer.train_step``, without grad accumulation or EMA). Returns
    its wall-clock seconds and those of the forward process's own work in it."""
    device, clip = trainer.device, trainer.cfg.training.grad_clip
    sync(device)
    start = time.perf_counter()
    batch = trainer.process.batch(trainer.step)
    sync(device)
    built = time.perf_counter()
    trainer.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=trainer.amp, enabled=trainer.amp is not None):
        logits = trainer.net(batch.x_t)
    mdm_loss(logits, batch).backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    sync(device)
    stepped = time.perf_counter()
    trainer.process.update(logits.detach())
    sync(device)
    end = time.perf_counter()
    trainer.step += 1
    return end - start, (built - start) + (end - stepped)


def measure_training(
    base: Base,
    size: str,
    size_overrides: list[str],
    strategy: str,
    settings: Sequence[tuple[str, bool]],
    steps: int,
    warmup: int,
) -> list[dict]:
    """Median seconds/step, tokens/s and the forward process's share for one size and strategy
    in each setting (precision, torch.compile or not). The settings' steps alternate, so
    machine noise hits all of them; each row's ``speedup_vs_fp32`` is measured against the
    eager fp32 row of this interleaved run."""
    trainers = {}
    scratch = base.out_dir / "scratch" / f"{size}-{strategy}"  # one run directory per trainer
    for autocast, compiled in settings:
        cfg = load_config(
            base.config,
            [
                *base.overrides,
                *size_overrides,
                f"training.strategy={strategy}",
                f"training.autocast={autocast}",
                f"training.compile={str(compiled).lower()}",
                f"logging.out_dir={scratch / f'{autocast}-{compiled}'}",
                "logging.tensorboard=false",
                "logging.progress=false",
            ],
        )
        torch.manual_seed(0)
        trainers[autocast + ("+compile" if compiled else "")] = Trainer(cfg, overwrite=True)
    for _ in range(warmup):
        for trainer in trainers.values():
            timed_step(trainer)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for _ in range(steps):
        for name, trainer in trainers.items():
            times[name].append(timed_step(trainer))
    rows = []
    for name, trainer in trainers.items():
        cfg = trainer.cfg
        step_s = statistics.median(t for t, _ in times[name])
        process_s = statistics.median(p for _, p in times[name])
        rows.append(
            {
                "size": size,
                "strategy": strategy,
                "setting": name,
                "autocast": cfg.training.autocast,
                "compile": cfg.training.compile,
                "parameters": trainer.model.num_parameters(),
                "dim": cfg.model.dim,
                "n_layers": cfg.model.n_layers,
                "batch_size": cfg.training.batch_size,
                "seq_len": trainer.task.seq_len,
                "seconds_per_step": step_s,
                "tokens_per_s": cfg.training.batch_size * trainer.task.seq_len / step_s,
                "forward_process_seconds": process_s,
                "forward_process_fraction": process_s / step_s,
                "step_seconds": [round(t, 5) for t, _ in times[name]],
            }
        )
        if trainer.device.type == "cuda":  # the peak of every setting timed so far
            rows[-1]["cuda_peak_memory_mb"] = (
                torch.cuda.max_memory_allocated(trainer.device) / 2**20
            )
    if "fp32" in trainers:
        fp32 = rows[list(trainers).index("fp32")]["seconds_per_step"]
        for row in rows:
            row["speedup_vs_fp32"] = fp32 / row["seconds_per_step"]
    return rows


# -- sampling ----------------------------------------------------------------------------------


def cycle(examples: Examples, start: int, n: int) -> Examples:
    """``n`` consecutive examples from ``start``, wrapping around the set."""
    return examples[torch.arange(start, start + n) % len(examples)]


def forward_seconds(model: Transformer, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Wall-clock of one no-grad forward over ``x`` (after a small warm-up forward)."""
    device = x.device
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(x[:8])
        sync(device)
        start = time.perf_counter()
        model(x)
        sync(device)
    return time.perf_counter() - start


def measure_sampling(
    model: Transformer,
    task: Task,
    examples: Examples,
    policy: str,
    batch: int,
    threshold: float | None,
    autocast: str,
    min_seconds: float,
) -> dict:
    """Puzzles/s of ``sample()`` at one setting: batches of successive held-out puzzles until
    ``min_seconds`` have passed (at least one batch)."""
    device = next(model.parameters()).device
    dtype = AUTOCASTS[autocast]
    generator = torch.Generator().manual_seed(0)
    warm_up = task.masked_inputs(cycle(examples, 0, batch)).to(device)
    forward_seconds(model, warm_up, dtype)
    calls, nfe, correct, elapsed = 0, 0, 0, 0.0
    while calls == 0 or elapsed < min_seconds:
        chunk = cycle(examples, calls * batch, batch)
        x_t = task.masked_inputs(chunk).to(device)
        sync(device)
        start = time.perf_counter()
        result = sample(
            model,
            x_t,
            task.mask_id,
            policy=policy,
            k=None if threshold is not None else 1,
            threshold=threshold,
            generator=generator,
            autocast_dtype=dtype,
        )
        sync(device)
        elapsed += time.perf_counter() - start
        calls += 1
        nfe += result.nfe
        correct += int(task.correct(result.tokens.cpu(), chunk).sum())
    return {
        "policy": policy,
        "decoding": f"threshold={threshold}" if threshold is not None else "k=1",
        "autocast": autocast,
        "batch_size": batch,
        "calls": calls,
        "seconds_per_batch": elapsed / calls,
        "puzzles_per_s": calls * batch / elapsed,
        "nfe": nfe / calls,
        "accuracy": correct / (calls * batch),
    }


def sampling_model(
    model_dir: str | Path | None, base: Base, device: torch.device
) -> tuple[Transformer, Task]:
    """The trained model in ``model_dir``, or a random-init model of the base config's shape."""
    if model_dir is not None:
        return load_trained(model_dir, device=device)
    cfg = load_config(base.config, base.overrides)
    task = build_task(cfg.task.name, cfg.task.options)
    torch.manual_seed(0)
    return build_model(cfg, task).to(device).eval(), task


def reference_forward(
    base: Base, reference: Sequence[str], batch: int, device: torch.device
) -> dict:
    """One measured fp32 forward of the reference-shaped model (random init) over ``batch``
    masked held-out puzzles; the reference sampler at k=1 runs one such forward per cell to
    fill (its NFE), so its time is extrapolated as NFE × forward."""
    cfg = load_config(base.config, [*base.overrides, *reference])
    task = build_task(cfg.task.name, cfg.task.options)
    torch.manual_seed(0)
    model = build_model(cfg, task).to(device).eval()
    examples = task.eval_examples()
    x = task.masked_inputs(cycle(examples, 0, batch)).to(device)
    seconds = forward_seconds(model, x, None)
    nfe = int((~examples.prompt_mask).sum(1).max())
    return {
        "parameters": model.num_parameters(),
        "dim": cfg.model.dim,
        "n_layers": cfg.model.n_layers,
        "seq_len": task.seq_len,
        "batch_size": batch,
        "forward_seconds_measured": seconds,
        "nfe": nfe,
        "sampler_seconds_extrapolated": nfe * seconds,
    }


# -- the benchmark -----------------------------------------------------------------------------


def check_settings(
    strategies: Sequence[str],
    autocasts: Sequence[str],
    train_steps: int,
    warmup_steps: int,
    sample_batches: Sequence[int],
    policies: Sequence[str],
) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise PumaError(msg)

    need(set(strategies) <= set(STRATEGIES), f"strategies must be among {STRATEGIES}")
    need(set(autocasts) <= set(AUTOCASTS), f"autocast must be among {tuple(AUTOCASTS)}")
    need(set(policies) <= set(POLICIES), f"policies must be among {tuple(POLICIES)}")
    need(train_steps >= 1, f"--train-steps must be ≥ 1, got {train_steps}")
    need(warmup_steps >= 0, f"--warmup-steps must be ≥ 0, got {warmup_steps}")
    need(all(b >= 1 for b in sample_batches), "--sample-batches must all be ≥ 1")


def run_throughput(
    config: str | Path,
    overrides: list[str],
    out_dir: str | Path,
    sizes: dict[str, list[str]] | None = None,
    strategies: Sequence[str] = STRATEGIES,
    autocasts: Sequence[str] = tuple(AUTOCASTS),
    train_steps: int = 5,
    warmup_steps: int = 2,
    model_dir: str | Path | None = None,
    sample_batches: Sequence[int] = (1, 64, 512),
    policies: Sequence[str] = tuple(POLICIES),
    threshold: float = 0.9,
    min_seconds: float = 2.0,
    reference: Sequence[str] | None = REFERENCE,
    threads: int = 0,
    compile: bool = False,
) -> dict:
    """Measure training and sampling throughput; write ``throughput.json`` into ``out_dir``
    after every measurement. Empty ``sizes`` or ``sample_batches`` skip that part;
    ``reference`` (overrides giving the reference model's shape) None skips the reference
    comparison. ``threads`` (0 = the config's ``training.threads``, else torch's default)
    applies to both parts. ``compile`` adds a torch.compile'd training run per precision."""
    sizes = SIZES if sizes is None else sizes
    check_settings(strategies, autocasts, train_steps, warmup_steps, sample_batches, policies)
    cfg = load_config(config, overrides)
    threads = threads or cfg.training.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = resolve_device(cfg.training.device)
    out_dir = Path(out_dir)
    base = Base(config, [*overrides, f"training.threads={threads}"], out_dir)
    json_path = out_dir / "throughput.json"
    report = {
        "benchmark": "throughput",
        "machine": machine_info(),
        "settings": {
            "config": str(config),
            "overrides": list(overrides),
            "sizes": sizes,
            "train_steps": train_steps,
            "compile": compile,
            "warmup_steps": warmup_steps,
            "sample_batches": list(sample_batches),
            "threshold": threshold,
            "model": str(model_dir) if model_dir else "random init, shape of the base config",
        },
        "provenance": {
            "training": "measured: median over train_steps steps after warmup_steps; "
            "forward_process_* = measured time of process.batch() + process.update(logits); "
            "precisions alternate step by step and speedup_vs_fp32 compares them within that "
            "run; reference_code_over_ours = REFERENCE_CODE_STEP (1.69 s, the reference code's "
            "fp32 step quoted from docs/calibrations.md §1, not measured here) / ours",
            "sampling": "measured: sample() wall-clock over whole batches of held-out puzzles",
            "reference": "forward_seconds_measured is measured; sampler_seconds_extrapolated = "
            "nfe × that forward (the reference sampler's full fp32 forwards, its Python per-row "
            "loop not counted); ours_seconds is measured, with our sampling model "
            "(sampling_model), so the ratio includes its smaller size and encoding",
        },
        "training": [],
        "sampling_model": None,
        "sampling": [],
        "reference": None,
    }
    settings = [(a, c) for a in autocasts for c in (False, True) if compile or not c]
    for size, size_overrides in sizes.items():
        for strategy in strategies:
            rows = measure_training(
                base, size, size_overrides, strategy, settings, train_steps, warmup_steps
            )
            for row in rows:
                report["training"].append(row)
                if size == "reference":
                    row["reference_code_over_ours"] = REFERENCE_CODE_STEP / row["seconds_per_step"]
                print(
                    f"train {size:<13} {strategy:<11} {row['setting']:<12} "
                    f"{row['seconds_per_step']:7.3f} s/step {row['tokens_per_s']:9.0f} tok/s  "
                    f"{row.get('speedup_vs_fp32', 1.0):5.2f}× fp32  "
                    f"forward process {row['forward_process_fraction']:6.1%}",
                    flush=True,
                )
                write_json(json_path, report)
    if sample_batches:
        model, task = sampling_model(model_dir, base, device)
        examples = task.eval_examples()
        shape = model.cfg
        report["sampling_model"] = {
            "parameters": model.num_parameters(),
            "dim": shape.dim,
            "n_layers": shape.n_layers,
            "seq_len": shape.seq_len,
        }
        for batch in sample_batches:
            for autocast in autocasts:
                for policy in policies:
                    for tau in (None, threshold):
                        row = measure_sampling(
                            model, task, examples, policy, batch, tau, autocast, min_seconds
                        )
                        report["sampling"].append(row)
                        print(
                            f"sample batch {batch:<4} {autocast:<4} {policy:<8} "
                            f"{row['decoding']:<13} {row['puzzles_per_s']:9.2f} puzzles/s  "
                            f"NFE {row['nfe']:5.1f}  accuracy {row['accuracy']:6.1%}",
                            flush=True,
                        )
                        write_json(json_path, report)
    if sample_batches and reference is not None:
        ref = reference_forward(base, reference, max(sample_batches), device)
        ref["comparison"] = compare(ref, report["sampling"])
        report["reference"] = ref
        write_json(json_path, report)
        print(
            f"reference sampler ({ref['seq_len']} tokens, {ref['batch_size']} puzzles, fp32, "
            f"k=1): {ref['nfe']} × {ref['forward_seconds_measured']:.2f} s measured forward = "
            f"{ref['sampler_seconds_extrapolated']:.1f} s (extrapolated)"
        )
        for c in ref["comparison"]:
            print(
                f"  ours {c['policy']:<8} {c['decoding']:<13} {c['autocast']:<4} "
                f"{c['ours_seconds']:8.2f} s measured: the reference takes "
                f"{c['reference_over_ours']:.1f}× as long"
            )
    print(f"wrote {json_path}")
    return report


def compare(ref: dict, sampling: list[dict]) -> list[dict]:
    """Our measured time for the reference's batch of puzzles, per sampling setting, against
    the reference sampler's extrapolated time."""
    return [
        {
            "policy": r["policy"],
            "decoding": r["decoding"],
            "autocast": r["autocast"],
            "puzzles": r["batch_size"],
            "ours_seconds": r["seconds_per_batch"],
            "reference_over_ours": ref["sampler_seconds_extrapolated"] / r["seconds_per_batch"],
        }
        for r in sampling
        if r["batch_size"] == ref["batch_size"]
    ]
