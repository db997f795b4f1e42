"""``puma train`` and ``puma prepare``: a run from a config, and its data tokenized ahead."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.bundled import config_path
from puma_mdm.cli.args import add_overrides_argument
from puma_mdm.errors import CheckpointError, PumaError

FRESH_ONLY = ("config", "out_dir", "data", "tokenizer", "overwrite")  # not with --resume


def cmd_train(args: argparse.Namespace) -> int:
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
        metrics, is_main = run_training(
            Trainer(cfg, resume=bool(args.resume), overwrite=args.overwrite)
        )
    finally:
        shutdown()  # leave the torchrun process group, if any
    if is_main:
        print(json.dumps({"out_dir": cfg.logging.out_dir, **metrics}))
    return 0


def run_training(trainer) -> tuple[dict, bool]:
    """Train; return the final metrics and whether this is the main rank. Every rank waits for
    the others before it returns (a rank that tears its gloo connections down while a peer
    still reads them aborts that peer; not on errors, where a peer may never arrive), and the
    trainer is left unreferenced, so :func:`shutdown` can free its distributed state before
    the process group goes."""
    metrics = trainer.train()
    trainer.dist.barrier()
    return metrics, trainer.dist.is_main


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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``prepare`` to the ``puma`` command's sub-parsers."""
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
