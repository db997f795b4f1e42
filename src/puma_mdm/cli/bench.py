"""``puma bench speedup | throughput | prime | blocks | sampling | calls``: argument parsing; the
work is in bench/: speedup.py, throughput.py, prime.py, blocks.py, sampling.py and calls.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.bundled import config_path, default_model
from puma_mdm.cli.args import add_overrides_argument
from puma_mdm.errors import PumaError


def resolve_config(config: str | None, task: str | None) -> Path:
    """``--config`` (a file or bundled name), else the bundled config named after the task."""
    return config_path(config or task or "sudoku")


def task_of(config: Path, overrides: list[str]) -> str:
    from puma_mdm.train.config import load_config

    return load_config(config, overrides).task.name


def check_task(config: Path, overrides: list[str], task: str | None) -> None:
    name = task_of(config, overrides)
    if task is not None and name != task:
        raise PumaError(f"--task {task}: the config {config} trains task {name!r}")


def cmd_speedup(args: argparse.Namespace) -> int:
    from puma_mdm.bench.speedup import DEFAULT_TARGETS, merge_reports, run_speedup

    targets = args.targets
    if args.grid or args.resume or (args.merge and is_study(args.merge[0])):
        return cmd_study(args)
    if args.merge:
        merge_reports(args.merge, args.out_dir, targets)
        return 0
    config = resolve_config(args.config, args.task)
    check_task(config, args.overrides, args.task)
    run_speedup(
        config,
        args.overrides,
        args.out_dir,
        seeds=args.seeds,
        first_seed=args.first_seed,
        steps=args.steps,
        budget_minutes=args.budget_minutes,
        eval_every=args.eval_every,
        eval_examples=args.eval_examples,
        targets=DEFAULT_TARGETS if targets is None else targets,
    )
    return 0


def is_study(path: str) -> bool:
    return (Path(path) / "study.json").is_file()


def cmd_study(args: argparse.Namespace) -> int:
    """``--grid`` / ``--resume`` / ``--merge`` of study directories (bench/study.py)."""
    from puma_mdm.bench.study import resume_study, run_study, write_summary

    if args.merge:
        not_studies = [d for d in args.merge if not is_study(d)]
        if not_studies:
            raise PumaError(
                f"--merge: {not_studies[0]} holds no study.json (mixing study "
                "directories with speedup.json reports is not supported)"
            )
        write_summary(args.merge, args.out_dir)
        return 0
    if args.overrides or args.config or args.task:
        raise PumaError(
            "--grid/--resume take their settings from the study file; put "
            "overrides into its `common` list instead of the command line"
        )
    if args.resume:
        resume_study(args.resume, jobs=args.jobs)
        return 0
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    regimes = args.regimes or None
    run_study(args.grid, args.out_dir, seeds, jobs=args.jobs, regimes=regimes)
    return 0


def shipped_model() -> Path | None:
    """The Sudoku model shipped inside the package, when there is one."""
    path = default_model()
    return path if (path / "config.json").is_file() else None


def cmd_throughput(args: argparse.Namespace) -> int:
    from puma_mdm.bench.throughput import REFERENCE, SIZES, run_throughput

    config = resolve_config(args.config, None)
    sudoku = task_of(config, args.overrides) == "sudoku"
    run_throughput(
        config,
        args.overrides,
        args.out_dir,
        sizes={name: SIZES[name] for name in args.sizes},
        strategies=args.strategies,
        autocasts=args.autocast,
        train_steps=args.train_steps,
        warmup_steps=args.warmup_steps,
        model_dir=args.model or shipped_model(),
        sample_batches=args.sample_batches,
        policies=args.policies,
        threshold=args.threshold,
        min_seconds=args.min_seconds,
        reference=REFERENCE if sudoku else None,  # the reference comparison is Sudoku's
        threads=args.threads,
        compile=args.compile,
    )
    return 0


def cmd_prime(args: argparse.Namespace) -> int:
    from puma_mdm.bench.prime import run_prime_bench

    config = resolve_config(args.config, args.task)
    check_task(config, args.overrides, args.task)
    run_prime_bench(
        config,
        args.overrides,
        args.out_dir,
        digits=args.digits,
        steps=args.steps,
        time_steps=args.time_steps or None,
        eval_examples=args.eval_examples,
        nll_samples=args.nll_samples,
        policy=args.policy,
    )
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from puma_mdm.bench.blocks import run_blocks_bench

    run_blocks_bench(
        args.out_dir,
        length=args.length,
        block_sizes=args.block_sizes,
        batch_size=args.batch_size,
        repeats=args.repeats,
        precision=args.precision,
        device=args.device,
        threads=args.threads,
    )
    return 0


def cmd_sampling(args: argparse.Namespace) -> int:
    from puma_mdm.bench.sampling import run_sampling_bench

    models = args.model
    if not models:
        if shipped_model() is None:
            raise PumaError("give --model NAME=DIR: this install has no shipped Sudoku model")
        models = [f"sudoku={shipped_model()}"]
    run_sampling_bench(
        models,
        decoders=args.decoders,
        batch_sizes=args.batch_sizes,
        examples=args.examples,
        single_examples=args.single_examples,
        out_dir=args.out_dir,
        policy=args.policy,
        caches=tuple(args.caches),
        refresh=args.refresh,
        precision=args.precision,
        threads=args.threads,
    )
    return 0


def cmd_calls(args: argparse.Namespace) -> int:
    from puma_mdm.bench.calls import run_calls_bench

    if not args.model:
        raise PumaError("give --model NAME=DIR: a block-diffusion or autoregressive model")
    run_calls_bench(
        args.model,
        widths=args.widths,
        seq_lens=args.seq_lens,
        batch_sizes=args.batch_sizes,
        out_dir=args.out_dir,
        repeats=args.repeats,
        every=args.every,
        precision=args.precision,
        threads=args.threads,
    )
    return 0


def add_timing_arguments(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--threads``, as the timing benchmarks take them."""
    from puma_mdm.bench.common import AUTOCASTS

    p.add_argument(
        "--precision", type=A.one_of(AUTOCASTS), default="bf16", help="fp32 or bf16 (autocast)"
    )
    p.add_argument(
        "--threads", type=A.nonnegative_int, default=0, help="torch threads (0: torch's default)"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` (``speedup``, ``throughput``, ``prime``, ``blocks``, ``sampling``,
    ``calls``) to the ``puma`` command's sub-parsers; each sub-command sets ``func``."""
    from puma_mdm.bench.common import AUTOCASTS
    from puma_mdm.bench.throughput import SIZES, STRATEGIES
    from puma_mdm.sampling import CACHES, POLICIES

    bench = sub.add_parser(
        "bench",
        help="benchmarks: PUMA's training speed-up, training and sampling throughput, MDM-Prime, "
        "block-diffusion training, decoders and caches",
        description="Benchmarks. Results go to JSON (and a PNG for speedup and blocks) in "
        "--out-dir.",
    )
    benchmarks = bench.add_subparsers(
        dest="benchmark",
        required=True,
        metavar="BENCHMARK",
        help="speedup, throughput, prime, blocks, sampling or calls",
    )

    p = benchmarks.add_parser(
        "speedup",
        help="steps and seconds to reach accuracy targets, standard vs progressive",
        description=(
            "Train the standard and the progressive (PUMA) strategy with identical settings "
            "(only training.strategy differs), interleaved in one process, for several seeds; "
            "report steps and training seconds to first reach each accuracy target (margin "
            "policy, k=1, held-out set) and the speed-up standard ÷ progressive."
        ),
    )
    p.add_argument("--task", help="task; picks the bundled config of that name (default sudoku)")
    p.add_argument("--config", help="YAML config file or bundled config name (default: the task's)")
    p.add_argument(
        "--steps", type=A.positive_int, help="steps per arm (sets training.steps, the LR schedule)"
    )
    p.add_argument(
        "--budget-minutes",
        type=A.positive_float,
        help="stop an arm once its training time exceeds this",
    )
    p.add_argument(
        "--seeds", type=A.positive_int, default=3, help="number of seeds, each both arms"
    )
    p.add_argument(
        "--first-seed", type=A.nonnegative_int, default=0, help="the first seed (then +1, +2, …)"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=A.existing_path,
        metavar="REPORT",
        help="instead of training, pool the complete seeds of these speedup.json files "
        "(or their directories), or of `puma train` run directories (each one arm of one "
        "seed, e.g. the two arms of docs/paper-scale.md), into --out-dir",
    )
    p.add_argument(
        "--grid",
        metavar="STUDY",
        help="run a study: a grid of regimes (a YAML file or a bundled study, e.g. "
        "sudoku-regimes), each arm a resumable `puma train` run; writes summary.json",
    )
    p.add_argument(
        "--resume",
        type=A.existing_path,
        metavar="DIR",
        help="continue the study in DIR after a stop",
    )
    p.add_argument(
        "--regimes",
        type=A.list_of(A.utf8_text),
        help="with --grid: only these regimes (comma-separated)",
    )
    p.add_argument(
        "--jobs", type=A.positive_int, default=1, help="with --grid: arms trained at once"
    )
    p.add_argument(
        "--eval-every", type=A.positive_int, default=250, help="steps between evaluations"
    )
    p.add_argument(
        "--eval-examples", type=A.positive_int, default=200, help="held-out examples evaluated"
    )
    p.add_argument(
        "--targets",
        type=A.list_of(A.threshold),
        help="comma-separated accuracy targets in (0, 1] (default 0.5,0.7,0.8,0.9; with "
        "--merge: read the pooled curves at these targets instead of the runs' own)",
    )
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/bench-speedup",
        help="where results are written",
    )
    add_overrides_argument(p, "config overrides (dot-list)")
    p.set_defaults(func=cmd_speedup)

    p = benchmarks.add_parser(
        "throughput",
        help="training tokens/s per strategy and sampling puzzles/s per policy",
        description=(
            "Time training steps (standard and progressive, fp32 and bf16) at several model "
            "sizes, sampling at several batch sizes for every policy (k=1 and threshold), and "
            "compare with the reference sampler's estimated time (81 fp32 forwards at k=1)."
        ),
    )
    p.add_argument("--config", default="sudoku", help="base config, file or bundled name")
    p.add_argument(
        "--sizes",
        type=A.list_of(A.one_of(SIZES), allow_empty=True),
        default="shipped,reference-81,reference",
        help="model sizes to train: shipped, reference-81, reference ('' to skip training)",
    )
    p.add_argument(
        "--strategies",
        type=A.list_of(A.one_of(STRATEGIES)),
        default="standard,progressive",
        help="strategies to train",
    )
    p.add_argument(
        "--autocast",
        type=A.list_of(A.one_of(AUTOCASTS)),
        default="fp32,bf16",
        help="precisions: fp32, bf16",
    )
    p.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd training per precision"
    )
    p.add_argument(
        "--train-steps", type=A.positive_int, default=5, help="timed training steps per setting"
    )
    p.add_argument(
        "--warmup-steps", type=A.nonnegative_int, default=2, help="untimed steps before timing"
    )
    p.add_argument(
        "--model",
        type=A.existing_path,
        help="trained model directory for sampling (default: the shipped model)",
    )
    p.add_argument(
        "--sample-batches",
        type=A.list_of(A.positive_int, allow_empty=True),
        default="1,64,512",
        help="sampling batch sizes ('' to skip sampling)",
    )
    p.add_argument(
        "--policies",
        type=A.list_of(A.one_of(POLICIES)),
        default="random,top_prob,margin,entropy",
        help="unmasking policies sampled",
    )
    p.add_argument(
        "--threshold", type=A.threshold, default=0.9, help="confidence threshold decoding"
    )
    p.add_argument(
        "--min-seconds",
        type=A.positive_float,
        default=2.0,
        help="time each sampling setting ≥ this",
    )
    p.add_argument(
        "--threads", type=A.nonnegative_int, default=0, help="torch threads (0: training.threads)"
    )
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/bench-throughput",
        help="where throughput.json is written",
    )
    add_overrides_argument(p, "config overrides (dot-list)")
    p.set_defaults(func=cmd_throughput)

    p = benchmarks.add_parser(
        "prime",
        help="MDM-Prime with ℓ digits per token: NLL bound, NFE and idle steps per ℓ",
        description=(
            "Train one arm per digit count ℓ (only model.prime.digits differs; ℓ = 1 is the "
            "plain MDM), then report on the held-out set: the NLL bound (digit-marginal form) "
            "and the joint form beside it, and NFE and idle-step fraction of ancestral decoding."
        ),
    )
    p.add_argument("--task", help="task; picks the bundled config of that name (default sudoku)")
    p.add_argument("--config", help="YAML config file or bundled config name (default: the task's)")
    p.add_argument(
        "--digits",
        type=A.list_of(A.positive_int),
        default="1,2,4",
        help="comma-separated digit counts ℓ",
    )
    p.add_argument(
        "--steps", type=A.positive_int, help="training steps per arm (sets training.steps)"
    )
    p.add_argument(
        "--time-steps",
        type=A.list_of(A.positive_int, allow_empty=True),
        default="",
        help="ancestral steps T, comma-separated (default: length)",
    )
    p.add_argument(
        "--policy",
        type=A.one_of(POLICIES),
        default="random",
        help="unmasking policy of the ancestral decoder",
    )
    p.add_argument(
        "--eval-examples", type=A.positive_int, default=500, help="held-out examples evaluated"
    )
    p.add_argument(
        "--nll-samples", type=A.positive_int, default=4, help="mask draws for the NLL bound"
    )
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/bench-prime",
        help="where prime.json is written",
    )
    add_overrides_argument(p, "config overrides (dot-list)")
    p.set_defaults(func=cmd_prime)

    p = benchmarks.add_parser(
        "blocks",
        help="block-diffusion training step: one forward over [x_t | x0] vs one per block",
        description=(
            "Time a block-diffusion training step (forward + backward) in its two exact forms, "
            "one vectorised forward over [x_t | x0] and a loop of one forward per block, "
            "alternating step by step, for several block sizes (math.yaml's model shape)."
        ),
    )
    p.add_argument("--length", type=A.positive_int, default=160, help="sequence length L")
    p.add_argument(
        "--block-sizes",
        type=A.list_of(A.positive_int),
        default="4,16,40",
        help="block sizes S, each dividing L",
    )
    p.add_argument("--batch-size", type=A.positive_int, default=32, help="sequences per step")
    p.add_argument(
        "--repeats", type=A.positive_int, default=5, help="timed steps per form and block size"
    )
    p.add_argument(
        "--device", type=A.device, default="auto", help="auto (cuda if present), cpu or cuda"
    )
    add_timing_arguments(p)
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/bench-blocks",
        help="where blocks.json is written",
    )
    p.set_defaults(func=cmd_blocks)

    p = benchmarks.add_parser(
        "sampling",
        help="accuracy, network calls and wall-clock of every decoder, cached and uncached",
        description=(
            "Decode held-out examples of trained models with every decoder (k tokens per call, "
            "a confidence threshold, the entropy bound and sum) at several batch sizes, once per "
            "cache kind each model can use (none; prefix for block and autoregressive models; dual "
            "for bidirectional ones); write sampling.json and sampling.png (accuracy against "
            "network calls)."
        ),
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=DIR",
        help="a trained model (or run directory) and its label; repeat for several (default: "
        "sudoku=the shipped model)",
    )
    p.add_argument(
        "--decoders",
        type=A.list_of(str),
        default="k=1,k=2,k=3,tau=0.9,eb=0.1,eb=0.3,eb=1,es=0.01,es=0.05",
        help="comma-separated decoders: k=N tokens per call, tau=X threshold, eb=X entropy "
        "bound (EB-sampler, Σ H − max H ≤ X), es=X entropy sum (Σ H ≤ X)",
    )
    p.add_argument(
        "--policy",
        type=A.one_of(POLICIES),
        default="margin",
        help="unmasking policy of every decoder",
    )
    p.add_argument(
        "--batch-sizes",
        type=A.list_of(A.positive_int),
        default="1,64",
        help="comma-separated batch sizes",
    )
    p.add_argument(
        "--examples",
        type=A.positive_int,
        default=256,
        help="held-out examples decoded at batch sizes > 1",
    )
    p.add_argument(
        "--single-examples",
        type=A.positive_int,
        default=8,
        help="held-out examples decoded at batch size 1",
    )
    p.add_argument(
        "--caches",
        type=A.list_of(A.one_of(CACHES)),
        default="none,prefix,dual",
        help="cache kinds (each where usable)",
    )
    p.add_argument(
        "--refresh", type=A.positive_int, default=4, help="dual cache: calls between refreshes"
    )
    add_timing_arguments(p)
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/bench-sampling",
        help="where results are written",
    )
    p.set_defaults(func=cmd_sampling)

    p = benchmarks.add_parser(
        "calls",
        help="the cost of one network call against the positions it forwards, with and without "
        "the prefix cache",
        description=(
            "Time an uncached call (the whole prefix) against a cached one (the current block) at "
            "every block end of block-diffusion and autoregressive models; report the floor (the "
            "cheapest call over one block) and a whole decode's speed-up from the cache, measured "
            "and at most; write calls.json and calls.png."
        ),
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=DIR",
        help="a trained block-diffusion or autoregressive model and its label; repeat for several",
    )
    p.add_argument(
        "--widths",
        type=A.list_of(A.positive_int, allow_empty=True),
        default="",
        help="comma-separated widths (dim) of randomly initialised copies of each model to time "
        "as well",
    )
    p.add_argument(
        "--seq-lens",
        type=A.list_of(A.positive_int, allow_empty=True),
        default="",
        help="comma-separated sequence lengths of randomly initialised copies (with --widths: "
        "every pair)",
    )
    p.add_argument(
        "--batch-sizes",
        type=A.list_of(A.positive_int),
        default="1,64",
        help="comma-separated batch sizes",
    )
    p.add_argument(
        "--repeats", type=A.positive_int, default=15, help="timed call pairs per block end"
    )
    p.add_argument(
        "--every",
        type=A.positive_int,
        default=16,
        help="for autoregressive models: time every N-th position",
    )
    add_timing_arguments(p)
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/bench-calls",
        help="where calls.json and calls.png are written",
    )
    p.set_defaults(func=cmd_calls)
