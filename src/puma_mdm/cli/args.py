"""Command-line options several ``puma`` commands share: the model and its task, config
overrides, trust in a model's own code, and the sampler's options (``solve``, ``sample``,
``eval``): the rule that decides how many positions each network call reveals, and the
key-value cache."""

from __future__ import annotations

import argparse

from puma_mdm import arguments as A
from puma_mdm.bundled import default_model
from puma_mdm.errors import PumaError
from puma_mdm.kinds import kind_of
from puma_mdm.sampling import CACHES, POLICIES, check_sampling_args


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
    """The positional ``KEY=VALUE`` config overrides (dot-list)."""
    p.add_argument("overrides", nargs="*", type=A.key_value, metavar="KEY=VALUE", help=help)


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    """``--trust-remote-code``: the user's own decision, never read from the model directory."""
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow running Python code shipped in a Hugging Face model directory (auto_map)",
    )


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    """``--cache`` (the key-value cache kind) and ``--refresh`` (the dual cache's period)."""
    p.add_argument(
        "--cache",
        type=A.one_of(CACHES),
        default="auto",
        help="key-value cache: auto (exact 'prefix' for block-diffusion and autoregressive "
        "models, else none), none, prefix, dual (approximate, bidirectional models)",
    )
    p.add_argument(
        "--refresh",
        type=A.positive_int,
        default=4,
        help="--cache dual: network calls between refreshes",
    )


def add_policy_arguments(p: argparse.ArgumentParser, unit: str) -> None:
    """``--policy``, ``--k`` and ``--threshold`` of one decoding run."""
    p.add_argument(
        "--policy",
        type=A.one_of(POLICIES),
        default="margin",
        help=f"unmasking policy: {', '.join(sorted(POLICIES))}",
    )
    p.add_argument("--k", type=A.positive_int, default=1, help=f"{unit} revealed per step")
    p.add_argument(
        "--threshold",
        type=A.threshold,
        help=f"reveal every one of the {unit} at least this confident, in (0, 1] (not --k)",
    )


def add_decoding_arguments(p: argparse.ArgumentParser, unit: str) -> None:
    """:func:`add_policy_arguments`, ``--entropy-bound``, ``--entropy-sum``, ``--cache`` and
    ``--refresh``."""
    add_policy_arguments(p, unit)
    p.add_argument(
        "--entropy-bound",
        type=A.positive_float,
        metavar="GAMMA",
        help=f"reveal, in the policy's order, the most {unit} whose summed entropy minus the "
        "largest one stays ≤ GAMMA nats (EB-sampler; not --k)",
    )
    p.add_argument(
        "--entropy-sum",
        type=A.positive_float,
        metavar="GAMMA",
        help=f"reveal, in the policy's order, the most {unit} whose summed entropy stays "
        "≤ GAMMA nats, at least one (the rule for greedy decoding; not --k)",
    )
    add_cache_arguments(p)


def check_cache_option(model, args: argparse.Namespace) -> None:
    """Refuse a ``--cache``/``--refresh`` the model cannot use (exit 2, one line)."""
    if args.cache not in CACHES:
        raise PumaError(f"--cache {args.cache}: not one of {', '.join(CACHES)}")
    kind = kind_of(model)
    try:
        kind.check_cache(args.cache, args.refresh, kind.decode_block)
    except ValueError as err:
        raise PumaError(f"--cache {args.cache}: {err}") from None


def decoding_options(args: argparse.Namespace) -> dict:
    """The sampler keywords the options ask for, checked (exit 2 on a bad value)."""
    rules = {
        "--threshold": args.threshold,
        "--entropy-bound": args.entropy_bound,
        "--entropy-sum": args.entropy_sum,
    }
    given = [name for name, value in rules.items() if value is not None]
    if len(given) > 1:
        raise PumaError(f"give one of {', '.join(given)}, not several")
    options = {
        "policy": args.policy,
        "k": None if given else args.k,
        "threshold": args.threshold,
        "entropy_bound": args.entropy_bound,
        "entropy_sum": args.entropy_sum,
        "cache": args.cache,
        "refresh": args.refresh,
    }
    try:
        check_sampling_args(
            args.policy,
            options["k"],
            None,
            args.threshold,
            0.0,
            args.entropy_bound,
            args.entropy_sum,
        )
    except ValueError as err:
        raise PumaError(str(err)) from None
    return options
