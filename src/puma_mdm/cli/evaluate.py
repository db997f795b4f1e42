"""``puma eval``: the policy table of a trained model, or the NLL bound of a text model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from puma_mdm import arguments as A
from puma_mdm.cli.args import add_cache_arguments, add_model_arguments, check_cache_option
from puma_mdm.errors import PumaError
from puma_mdm.sampling import POLICIES, check_sampling_args

DEFAULT_ENTROPY_BOUNDS = "0.01,0.1"
DEFAULT_ENTROPY_SUMS = "0.01,0.05"


def check_table_options(
    policies: list[str],
    ks: list[int],
    thresholds: list[float],
    bounds: list[float],
    sums: list[float] = (),
) -> None:
    """``puma eval``'s lists, each value checked before any model time is spent."""
    try:
        for policy in policies:
            check_sampling_args(policy, None, None, None, 0.0)
        for k in ks:
            check_sampling_args("margin", k, None, None, 0.0)
        for threshold in thresholds:
            check_sampling_args("margin", None, None, threshold, 0.0)
        for gamma in bounds:
            check_sampling_args("margin", None, None, None, 0.0, gamma)
        for gamma in sums:
            check_sampling_args("margin", None, None, None, 0.0, None, gamma)
    except ValueError as err:
        raise PumaError(str(err)) from None


def cmd_eval(args: argparse.Namespace) -> int:

    from puma_mdm.kinds import kind_of
    from puma_mdm.policy_table import format_table, policy_table
    from puma_mdm.precision import autocast_dtype
    from puma_mdm.pretrained import load_trained, resolve_model_dir

    model, task = load_trained(
        args.model, expect_task=args.task, trust_remote_code=args.trust_remote_code
    )
    check_table_options(
        args.policies, args.ks, args.thresholds, args.entropy_bounds, args.entropy_sums
    )
    check_cache_option(model, args)
    precision = autocast_dtype("fp32" if args.fp32 else "auto", next(model.parameters()).device)
    examples = task.load_examples(args.data) if args.data else task.eval_examples()
    examples = examples[: args.n]
    kind = kind_of(model)
    bounds, sums = args.entropy_bounds, args.entropy_sums
    if not kind.entropy_bounded:  # e.g. digit-by-digit decoding
        for option, given, default in (
            ("--entropy-bounds", bounds, DEFAULT_ENTROPY_BOUNDS),
            ("--entropy-sums", sums, DEFAULT_ENTROPY_SUMS),
        ):
            if given and given != A.list_of(A.positive_float)(default):
                raise PumaError(
                    f"{option}: MDM-Prime models are decoded digit by digit, without an "
                    "entropy-bounded rule; drop the option"
                )
        bounds, sums = [], []
    report = kind.eval_report(
        model,
        task,
        examples,
        policies=args.policies,
        time_steps=args.time_steps or [task.seq_len],
        nll_samples=args.nll_samples,
        batch_size=args.batch_size,
        autocast_dtype=precision,
    )
    if not task.scores_outputs and report is None:  # text corpora: the NLL bound, no accuracy
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
            autocast_dtype=precision,
            entropy_bounds=bounds,
            entropy_sums=sums,
            cache=args.cache,
            refresh=args.refresh,
        )
        print(format_table(record["rows"]))
    if report is not None:  # the kind's own figures (MDM-Prime: NLL bound, NFE, idle steps)
        key, values, text = report
        record[key] = values
        print(text)
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` to the ``puma`` command's sub-parsers."""
    p = sub.add_parser(
        "eval",
        help="accuracy and NFE of every unmasking policy and rule",
        description=(
            "Decode the held-out set with every policy (random, top_prob, margin, entropy) and "
            "k in {1,2,3}, plus threshold and both entropy-bounded rules; print a table and "
            "write JSON (one row per setting: policy, k, threshold, entropy_bound, entropy_sum, "
            "cache, accuracy, nfe per batch, nfe_per_example). Text-corpus "
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
        help="comma-separated bounds γ (nats) of the EB-sampler, Σ H − max H ≤ γ ('' for none)",
    )
    p.add_argument(
        "--entropy-sums",
        type=A.list_of(A.positive_float, allow_empty=True),
        default=DEFAULT_ENTROPY_SUMS,
        help="comma-separated bounds γ (nats) of the entropy-sum rule, Σ H ≤ γ ('' for none)",
    )
    add_cache_arguments(p)
    p.add_argument(
        "--fp32",
        action="store_true",
        help="decode in float32 (default: bf16 autocast where the CPU has native bf16, "
        "else float32)",
    )
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
