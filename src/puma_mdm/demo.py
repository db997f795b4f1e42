"""``puma demo``: the project's main job in one command.

1. generate (or reuse cached) Sudoku puzzles;
2. train a fresh model with PUMA for a few minutes, evaluating as it goes;
3. evaluate the shipped, fully trained model with every unmasking policy;
4. solve a held-out puzzle with it and draw the order in which the cells were decoded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from puma_mdm.plots import sudoku_order_png
from puma_mdm.policy_table import format_table, policy_table
from puma_mdm.precision import autocast_dtype
from puma_mdm.pretrained import load_trained
from puma_mdm.solve import solve_with_model
from puma_mdm.tasks.sudoku_formats import pretty
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run_demo(args: argparse.Namespace, config: Path, shipped: Path) -> int:
    out = Path(args.out_dir)
    banner(f"1-2. generating puzzles and training a fresh PUMA model for {args.steps} steps")
    overrides = [
        f"training.steps={args.steps}",
        f"training.warmup_steps={min(200, args.steps // 5)}",
        "training.threads=0",
        f"eval.every={max(args.steps // 4, 1)}",
        "eval.examples=200",
        "checkpoint.every=0",
        f"logging.out_dir={out / 'train'}",
        *args.overrides,
    ]
    # the demo's own scratch run: a second `make demo` replaces the first
    metrics = Trainer(load_config(config, overrides), overwrite=True).train()
    print(f"fresh model after {args.steps} steps: {100 * metrics['accuracy']:.1f}% of 200 puzzles")

    banner(f"3. the shipped model ({shipped}) on {args.n_eval} held-out puzzles")
    model, task = load_trained(shipped, expect_task="sudoku")
    examples = task.eval_examples()[: args.n_eval]
    rows = policy_table(
        model,
        task,
        examples,
        policies=["random", "top_prob", "margin", "entropy"],
        ks=[1, 2, 3],
        thresholds=[0.9],
        autocast_dtype=autocast_dtype("auto", "cpu"),
    )
    print(format_table(rows))
    (out / "eval.json").write_text(json.dumps(rows, indent=2))

    banner("4. solving one held-out puzzle with margin decoding")
    puzzle = task.puzzles_of(examples[:1])
    print(pretty(puzzle[0]))
    solution = solve_with_model(model, task, puzzle, policy="margin", k=1)[0]
    print("\nsolution:")
    print(pretty(solution.grid))
    print("INVALID: " + "; ".join(solution.problems) if solution.problems else "valid ✓")
    png = sudoku_order_png(
        solution.grid, solution.puzzle, solution.order, out / "decode_order.png", "margin order"
    )
    print(f"\npicture of the decoding order: {png}\ntraining log: {out / 'train'}/metrics.jsonl")
    return 0
