"""``puma analyze mismatch``: argument parsing and output; the measurement is in mismatch.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.cli.args import add_model_arguments, add_policy_arguments


def cmd_mismatch(args: argparse.Namespace) -> int:
    import torch

    from puma_mdm.mismatch import format_mismatch, measure_mismatch
    from puma_mdm.plots import mismatch_png
    from puma_mdm.pretrained import load_trained, resolve_model_dir

    model, task = load_trained(
        args.model, expect_task=args.task, trust_remote_code=args.trust_remote_code
    )
    examples = task.load_examples(args.data) if args.data else task.eval_examples()
    examples = examples[: args.n]
    settings = {
        "model": str(resolve_model_dir(args.model)),
        "task": task.name,
        "data": args.data,
        "n": len(examples),
        "policy": args.policy,
        "k": None if args.threshold is not None else args.k,
        "threshold": args.threshold,
        "bins": args.bins,
        "draws": args.draws,
        "seed": args.seed,
        "precision": "bf16" if args.bf16 else "fp32",
    }
    result = measure_mismatch(
        model,
        examples,
        task.mask_id,
        policy=args.policy,
        k=args.k,
        threshold=args.threshold,
        bins=args.bins,
        draws=args.draws,
        batch_size=args.batch_size,
        seed=args.seed,
        autocast_dtype=torch.bfloat16 if args.bf16 else None,
    )
    accuracy = float(task.correct(result.tokens, examples).float().mean())
    steps = len(result.example) / len(examples)
    summary = {**settings, "accuracy": accuracy, "mean_steps": steps, **result.summary()}
    decoding = f"k={args.k}" if args.threshold is None else f"threshold {args.threshold}"
    print(
        f"{task.name}: {len(examples)} examples, {args.policy} {decoding}, accuracy "
        f"{accuracy:.1%}, {steps:.1f} steps per example; loss in nats (± standard error)"
    )
    print(format_mismatch(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    title = f"{resolve_model_dir(args.model).name}: {args.policy} {decoding}, {len(examples)} ex."
    mismatch_png(summary, plot, title)
    print(f"wrote {out} and {plot}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``analyze`` (with ``mismatch``) to the ``puma`` command's sub-parsers."""
    analyze = sub.add_parser("analyze", help="measurements on a trained model")
    analyses = analyze.add_subparsers(
        dest="analysis", required=True, metavar="ANALYSIS", help="mismatch"
    )
    p = analyses.add_parser(
        "mismatch",
        help="loss on the decoder's own masks vs random masks, stage by stage",
        description=(
            "Decode held-out examples with the model's adaptive decoder, rebuild the masked "
            "state before every step, and compare the model's loss (mean cross-entropy against "
            "the ground truth on the masked positions) on those masks with its loss on random "
            "masks with as many masked positions, per stage (fraction unmasked, --bins bins). "
            "Writes JSON and a PNG."
        ),
    )
    add_model_arguments(p)
    p.add_argument(
        "--data",
        type=A.existing_path,
        help="example file to use instead of the task's held-out set",
    )
    p.add_argument("--n", type=A.positive_int, default=200, help="number of examples")
    add_policy_arguments(p, "positions")
    p.add_argument(
        "--bins", type=A.positive_int, default=8, help="stage bins K (fraction unmasked)"
    )
    p.add_argument(
        "--draws", type=A.positive_int, default=4, help="random masks averaged per state"
    )
    p.add_argument("--batch-size", type=A.positive_int, default=256, help="sequences per forward")
    p.add_argument("--seed", type=A.nonnegative_int, default=0, help="seed of the random masks")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast instead of float32")
    p.add_argument("--out", type=A.output_file, default="mismatch.json", help="JSON output file")
    p.add_argument("--plot", type=A.output_file, help="PNG output file (default: --out with .png)")
    p.set_defaults(func=cmd_mismatch)
