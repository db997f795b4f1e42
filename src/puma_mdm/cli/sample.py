"""``puma sample``: argument parsing and output; the work is in generate.py."""

from __future__ import annotations

import argparse

from puma_mdm import arguments as A
from puma_mdm.cli.args import (
    add_decoding_arguments,
    add_trust_argument,
    check_cache_option,
    decoding_options,
)
from puma_mdm.generate import SampleError, generate
from puma_mdm.tasks.tokenized import TokenizedTask


def cmd_sample(args: argparse.Namespace) -> int:
    from puma_mdm.pretrained import load_trained

    options = decoding_options(args)
    model, task = load_trained(args.model, trust_remote_code=args.trust_remote_code)
    check_cache_option(model, args)
    if not isinstance(task, TokenizedTask):
        raise SampleError(
            f"{args.model} holds a {task.name!r} model; `puma sample` generates text with "
            "math and text models (Sudoku: `puma solve`)"
        )
    generations = generate(
        model,
        task,
        prompt=args.prompt,
        length=args.length,
        n=args.n,
        temperature=args.temperature,
        seed=args.seed,
        show_steps=args.show_steps,
        **options,
    )
    for i, g in enumerate(generations):
        if args.n > 1:
            print(f"=== sample {i + 1} ===")
        for s, state in enumerate(g.steps):
            print(f"--- step {s + 1}/{g.nfe} ---\n{state}")
        if g.steps:
            print("--- result ---")
        print(g.text)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the ``puma`` command's sub-parsers."""
    p = sub.add_parser(
        "sample",
        help="generate text with a trained math-program or text model",
        description=(
            "Fill in masked positions after a prompt with a trained model and print the text "
            "(cut at the first end-of-sequence token). --show-steps prints the sequence after "
            "every network call, still-masked tokens as ▒."
        ),
    )
    p.add_argument("--model", required=True, help="model or run directory")
    p.add_argument(
        "--prompt", type=A.utf8_text, help="text to continue (a math model: the question)"
    )
    p.add_argument(
        "--length",
        type=A.positive_int,
        help="tokens to generate (default: up to the model's length)",
    )
    add_decoding_arguments(p, "tokens")
    p.add_argument(
        "--temperature",
        type=A.nonnegative_float,
        default=0.0,
        help="0 = argmax; > 0 samples each token",
    )
    p.add_argument(
        "--seed",
        type=A.nonnegative_int,
        default=0,
        help="random seed (policy random, temperature)",
    )
    p.add_argument("--n", type=A.positive_int, default=1, help="number of samples")
    p.add_argument(
        "--show-steps", action="store_true", help="print how the sequence fills in, call by call"
    )
    add_trust_argument(p)
    p.set_defaults(func=cmd_sample)
