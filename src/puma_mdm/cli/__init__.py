"""``puma``: train, evaluate and sample masked diffusion models from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.bundled import bundled_config, bundled_config_names, config_path, default_model
from puma_mdm.cli.analyze import add_analyze_parser
from puma_mdm.cli.args import (
    add_cache_arguments,
    add_decoding_arguments,
    check_cache_option,
    check_table_options,
    decoding_options,
)
from puma_mdm.cli.bench import add_bench_parser
from puma_mdm.cli.export import add_export_parser
from puma_mdm.cli.sample import add_sample_parser
from puma_mdm.errors import PumaError

FRESH_ONLY = ("config", "out_dir", "data", "tokenizer", "overwrite")  # not with --resume


def cmd_train(args: argparse.Namespace) -> int:
    from puma_mdm.errors import CheckpointError
    from puma_mdm.train.config import load_config
    from puma_mdm.train.distributed import shutdown
    from puma_mdm.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in FRESH_ONLY if getattr(args, name)]
        if given:
            raise PumaError(
                f"{given[0]} cannot be used with --resume: a resumed run keeps its directory, "
                "config and data (start a new run for others)"
            )
        run = Path(args.resume)
        if not run.is_dir():
            raise CheckpointError(f"--resume {run}: no such run directory")
        if not (run / "config.yaml").is_file():
            raise CheckpointError(f"--resume {run}: no config.yaml there; is it a run directory?")
        cfg = load_config(run / "config.yaml", [*overrides, f"logging.out_dir={run}"])
    else:
        if args.config is None:
            raise PumaError("give --config FILE (or a bundled name, e.g. --config sort)")
        if args.out_dir:
            overrides.append(f"logging.out_dir={args.out_dir}")
        if args.data:
            overrides.append(f"task.options.data={args.data}")
        if args.tokenizer:
            overrides.append(f"task.options.tokenizer={args.tokenizer}")
        cfg = load_config(config_path(args.config), overrides)
    try:
        trainer = Trainer(cfg, resume=bool(args.resume), overwrite=args.overwrite)
        metrics = trainer.train()
    finally:
        shutdown()  # leave the torchrun process group, if any
    if trainer.dist.is_main:
        print(json.dumps({"out_dir": cfg.logging.out_dir, **metrics}))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Tokenize a task's training file once into memory-mapped shards (prepared.py)."""
    import resource

    from puma_mdm.tasks import build_task
    from puma_mdm.train.config import load_config

    cfg = load_config(config_path(args.config), list(args.overrides))
    task = build_task(cfg.task.name, cfg.task.options)
    manifest = task.prepare(force=args.force)
    rate = manifest["rows"] / manifest["seconds"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"{manifest['directory']}: {manifest['rows']} rows in {len(manifest['shards'])} shards, "
        f"{manifest['skipped']} skipped (longer than seq_len {manifest['seq_len']}); "
        f"{manifest['seconds']:.1f} s, {rate:.0f} problems/s; peak memory {peak_mb:.0f} MB "
        f"(this process), {workers_mb:.0f} MB (largest worker)"
    )
    return 0


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` (a trained model or run directory) and ``--task`` (default: its own)."""
    from puma_mdm.tasks import TASKS

    p.add_argument(
        "--model",
        default=str(default_model()),
        help="model or run directory (default: the shipped Sudoku model)",
    )
    p.add_argument(
        "--task",
        type=A.one_of(TASKS),
        help="task name (default: the task the model was trained on)",
    )
    add_trust_argument(p)


def add_overrides_argument(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("overrides", nargs="*", type=A.key_value, metavar="KEY=VALUE", help=help)


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``: the user's own decision, never read from the model directory."""
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow running Python code shipped in a Hugging Face model directory (auto_map)",
    )


DEFAULT_ENTROPY_BOUNDS = "0.01,0.1"


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from puma_mdm.policy_table import format_table, policy_table
    from puma_mdm.pretrained import load_trained, resolve_model_dir

    model, task = load_trained(
        args.model, expect_task=args.task, trust_remote_code=args.trust_remote_code
    )
    check_table_options(args.policies, args.ks, args.thresholds, args.entropy_bounds)
    check_cache_option(model, args)
    examples = task.load_examples(args.data) if args.data else task.eval_examples()
    examples = examples[: args.n]
    prime = getattr(model, "codec", None) is not None
    bounds = args.entropy_bounds
    if prime and bounds:  # digit-by-digit decoding has no entropy-bounded rule
        if bounds != A.list_of(A.positive_float)(DEFAULT_ENTROPY_BOUNDS):
            raise PumaError(
                "--entropy-bounds: MDM-Prime models are decoded digit by digit, without an "
                "entropy-bounded rule; drop the option"
            )
        bounds = []
    if not task.scores_outputs and not prime:  # text corpora: the NLL bound, no accuracy
        return report_likelihood(args, model, task, examples)
    print(f"{task.name}: {len(examples)} examples, model {resolve_model_dir(args.model)}")
    record = {"model": str(args.model), "data": args.data}
    if task.scores_outputs:
        record["rows"] = policy_table(
            model,
            task,
            examples,
            policies=args.policies,
            ks=args.ks,
            thresholds=args.thresholds,
            batch_size=args.batch_size,
            autocast_dtype=None if args.fp32 else torch.bfloat16,
            entropy_bounds=bounds,
            cache=args.cache,
            refresh=args.refresh,
        )
        print(format_table(record["rows"]))
    if prime:  # MDM-Prime: NLL bound, NFE, idle steps
        from puma_mdm.prime.evaluate import format_prime, prime_eval

        record["prime"] = prime_eval(
            model,
            task,
            examples,
            policies=args.policies,
            time_steps=args.time_steps or [task.seq_len],
            nll_samples=args.nll_samples,
            batch_size=args.batch_size,
            autocast_dtype=None if args.fp32 else torch.bfloat16,
        )
        print(format_prime(record["prime"]))
    out = Path(args.out) if args.out else resolve_model_dir(args.model) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return 0


def report_likelihood(args: argparse.Namespace, model, task, examples) -> int:
    from puma_mdm.evaluate import likelihood_report
    from puma_mdm.pretrained import resolve_model_dir

    report = likelihood_report(
        model, examples, task.mask_id, args.samples, args.batch_size, task.tokenizer.token_bytes()
    )
    print(
        f"{task.name}: {report['sequences']} sequences, {report['tokens']} tokens, "
        f"model {resolve_model_dir(args.model)}\n"
        f"NLL bound {report['nll']:.4f} ± {report['nll_stderr']:.4f} nats/token "
        f"({report['samples']} draws, continuous-time ELBO, antithetic t): perplexity "
        f"{report['perplexity']:.3f}, {report['bits_per_byte']:.4f} bits/byte"
    )
    out = Path(args.out) if args.out else resolve_model_dir(args.model) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(args.model), "data": args.data, **report}, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    from puma_mdm.plots import sudoku_order_png
    from puma_mdm.pretrained import load_trained
    from puma_mdm.solve import check_solvable, read_input, solve_with_model
    from puma_mdm.tasks.sudoku_formats import pretty

    options = decoding_options(args)
    puzzles = read_input(args.puzzle)
    check_solvable(puzzles)
    model, task = load_trained(
        args.model, expect_task="sudoku", trust_remote_code=args.trust_remote_code
    )
    check_cache_option(model, args)
    solutions = solve_with_model(model, task, puzzles, **options)
    for i, s in enumerate(solutions):
        if len(solutions) > 1:
            print(f"puzzle {i + 1}:")
        print(pretty(s.grid))
        if s.problems:
            print("the model's answer is INVALID: " + "; ".join(s.problems))
        else:
            print(f"solved (valid and agrees with every clue; {s.nfe} network calls)")
        if args.png:
            path = Path(args.png)
            if len(solutions) > 1:
                path = path.with_name(f"{path.stem}-{i + 1}{path.suffix}")
            sudoku_order_png(s.grid, s.puzzle, s.order, path, f"{args.policy} decoding order")
            print(f"decoding order written to {path}")
    return 0 if all(not s.problems for s in solutions) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from puma_mdm.demo import run_demo

    return run_demo(args, bundled_config("sudoku"), Path(args.model))


def cmd_configs(args: argparse.Namespace) -> int:
    for name in bundled_config_names():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from puma_mdm.sampling import POLICIES

    parser = A.Parser(
        prog="puma",
        description="Masked diffusion models trained with PUMA (progressive unmasking).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description=(
            "Train a model. Overrides are dot-list assignments, e.g. training.steps=2000 "
            "training.strategy=standard model.dim=256."
        ),
    )
    p.add_argument(
        "--config", help="YAML config file, or a bundled config name (see `puma configs`)"
    )
    p.add_argument("--out-dir", type=A.output_dir, help="run directory (overrides logging.out_dir)")
    p.add_argument(
        "--data",
        type=A.existing_path,
        help="text corpus (.txt/.jsonl file or directory): sets task.options.data",
    )
    p.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="text and math tasks: a saved Hugging Face tokenizer directory (or tokenizer.json): "
        "sets task.options.tokenizer",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out-dir (its checkpoints, model and logs)",
    )
    add_overrides_argument(p, "config overrides (dot-list)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "prepare",
        help="tokenize a task's training file once into memory-mapped shards",
        description=(
            "Tokenize the training file of a config's task (tinygsm) in parallel into shards "
            "that training streams per rank (task.options.prepared, default TRAIN_DATA.prepared; "
            "task.options.workers processes). `puma train` prepares them itself when missing."
        ),
    )
    p.add_argument("--config", required=True, help="YAML config file or bundled config name")
    p.add_argument("--force", action="store_true", help="replace shards that are already there")
    add_overrides_argument(p, "config overrides (dot-list)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "eval",
        help="accuracy and NFE of every unmasking policy and rule",
        description=(
            "Decode the held-out set with every policy (random, top_prob, margin, entropy) and "
            "k in {1,2,3}, plus threshold and entropy-bounded decoding; print a table and write "
            "JSON (one row per setting: policy, k, threshold, entropy_bound, cache, accuracy, "
            "nfe). Text-corpus "
            "models: the NLL bound per token, perplexity and bits per byte instead."
        ),
    )
    add_model_arguments(p)
    p.add_argument(
        "--data",
        type=A.existing_path,
        help="file of examples (puzzles, problems, text) instead of the held-out set",
    )
    p.add_argument("--n", type=A.positive_int, default=1000, help="number of examples evaluated")
    p.add_argument(
        "--policies",
        type=A.list_of(A.one_of(POLICIES)),
        default="random,top_prob,margin,entropy",
        help="comma-separated policies",
    )
    p.add_argument(
        "--ks",
        type=A.list_of(A.positive_int),
        default="1,2,3",
        help="comma-separated tokens-per-step values",
    )
    p.add_argument(
        "--thresholds",
        type=A.list_of(A.threshold, allow_empty=True),
        default="0.9",
        help="comma-separated confidence thresholds in (0, 1] ('' for none)",
    )
    p.add_argument(
        "--batch-size", type=A.positive_int, default=500, help="examples decoded at once"
    )
    p.add_argument(
        "--entropy-bounds",
        type=A.list_of(A.positive_float, allow_empty=True),
        default=DEFAULT_ENTROPY_BOUNDS,
        help="comma-separated entropy bounds γ (nats) of entropy-bounded decoding ('' for none)",
    )
    add_cache_arguments(p)
    p.add_argument("--fp32", action="store_true", help="decode in float32 instead of bf16 autocast")
    p.add_argument(
        "--samples",
        type=A.positive_int,
        default=4,
        help="text tasks: Monte-Carlo draws of the NLL bound",
    )
    p.add_argument(
        "--time-steps",
        type=A.list_of(A.positive_int),
        help="MDM-Prime models: comma-separated step counts T of the ancestral sampler whose "
        "NFE and idle steps are reported (default: the sequence length)",
    )
    p.add_argument(
        "--nll-samples",
        type=A.positive_int,
        default=1,
        help="MDM-Prime models: mask draws for the NLL bound",
    )
    p.add_argument("--out", type=A.output_file, help="JSON output file (default: MODEL/eval.json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "solve",
        help="solve Sudoku puzzles with a trained model",
        description=(
            "Solve a puzzle (81 characters, '.' or '0' for blanks) or every puzzle in a file "
            "(81-char lines, Kaggle CSV, sudoku-extreme CSV or Shah et al. format)."
        ),
    )
    p.add_argument("puzzle", type=A.utf8_text, help="the puzzle text, or a file of puzzles")
    p.add_argument(
        "--model",
        default=str(default_model()),
        help="model directory (default: the shipped Sudoku model)",
    )
    add_decoding_arguments(p, "cells")
    p.add_argument(
        "--png", type=A.output_file, help="write a picture of the decoding order to this file"
    )
    add_trust_argument(p)
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("demo", help="generate puzzles, train briefly, evaluate and solve")
    p.add_argument(
        "--steps", type=A.positive_int, default=800, help="training steps of the fresh model"
    )
    p.add_argument(
        "--n-eval", type=A.positive_int, default=500, help="held-out puzzles for the policy table"
    )
    p.add_argument(
        "--model",
        type=A.existing_path,
        default=str(default_model()),
        help="trained model to evaluate",
    )
    p.add_argument(
        "--out-dir",
        type=A.output_dir,
        default="runs/demo",
        help="where the demo writes its outputs",
    )
    add_overrides_argument(p, "overrides for the training")
    p.set_defaults(func=cmd_demo)

    add_bench_parser(sub)
    add_analyze_parser(sub)
    add_export_parser(sub)
    add_sample_parser(sub)

    p = sub.add_parser("configs", help="list the bundled configs")
    p.set_defaults(func=cmd_configs)
    return parser


def main(argv: list[str] | None = None) -> int:
    from puma_mdm.train.trainer import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad option (one `error:` line already printed)
        return int(stop.code or 0)
    try:
        return args.func(args)
    except PumaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return 130
