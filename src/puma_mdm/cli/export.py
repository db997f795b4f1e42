"""``puma export --model DIR --to hf OUT``: argument parsing; the work is in hf/export.py."""

from __future__ import annotations

import argparse
import json

from puma_mdm import arguments as A
from puma_mdm.cli.args import add_trust_argument

FORMATS = ("hf",)


def cmd_export(args: argparse.Namespace) -> int:
    from puma_mdm.hf.export import export_hf

    summary = export_hf(args.model, args.out, args.trust_remote_code)
    print(json.dumps(summary))
    print(
        f"load it with: transformers.AutoModelForMaskedLM.from_pretrained({args.out!r}) "
        "(logits[..., :V] are the model's; id V is the mask token)"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``puma`` command's sub-parsers."""
    p = sub.add_parser(
        "export",
        help="write a trained model in another library's format",
        description=(
            "Write a trained model so that plain `transformers` loads it (safetensors, no remote "
            "code, no network): AutoModelForMaskedLM.from_pretrained(OUT). Needs puma-mdm[hf]."
        ),
    )
    p.add_argument("--model", required=True, help="model or run directory to export")
    p.add_argument("--to", required=True, choices=FORMATS, help="target format (hf: transformers)")
    p.add_argument("out", type=A.output_dir, metavar="OUT", help="output directory")
    add_trust_argument(p)
    p.set_defaults(func=cmd_export)
