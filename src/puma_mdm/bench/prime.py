"""``puma bench prime``: MDM-Prime with several digit counts ℓ, side by side.

Each arm trains from the same config (model, data, batch, optimiser, schedule, seed) with only
``model.prime.digits`` changed, then reports on the same held-out examples: the NLL bound per
token in its digit-marginal form (comparable across ℓ: every arm bounds the same −log p(x0)),
the joint form beside it (the published training loss — not a bound for ℓ > 1), and for
ancestral decoding with ``T`` steps the network calls per example and the idle-step fraction.
``ℓ = 1`` is the plain MDM. The JSON is rewritten after every arm.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from puma_mdm.bench.common import machine_info
from puma_mdm.errors import PumaError
from puma_mdm.files import write_json
from puma_mdm.prime.evaluate import prime_eval
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer


def format_arms(arms: list[dict]) -> str:
    """One line per (ℓ, T): the numbers the README's Prime table shows."""
    lines = [
        f"{'ℓ':>2} {'base':>5} {'NLL bound':>10} {'joint (no bound)':>17} {'T':>5} "
        f"{'idle':>7} {'NFE/example':>12} {'train s':>8}"
    ]
    for arm in arms:
        for row in arm["ancestral"]:
            lines.append(
                f"{arm['digits']:>2} {arm['base']:>5} {arm['nll']:>10.4f} "
                f"{arm['nll_joint']:>17.4f} {row['time_steps']:>5} "
                f"{100 * row['idle_fraction']:>6.1f}% {row['nfe']:>12.1f} "
                f"{arm['train_seconds']:>8.0f}"
            )
    return "\n".join(lines)


def run_prime_bench(
    config: str | Path,
    overrides: list[str],
    out_dir: str | Path,
    digits: list[int],
    steps: int | None = None,
    time_steps: list[int] | None = None,
    eval_examples: int = 500,
    nll_samples: int = 4,
    policy: str = "random",
) -> dict:
    """Train one arm per ℓ in ``digits`` and write ``prime.json`` into ``out_dir`` (each arm's
    run directory, with its model, is ``out_dir/digits-ℓ``). ``time_steps`` defaults to the
    task's sequence length."""
    if not digits or min(digits) < 1:
        raise PumaError(f"--digits must be integers ≥ 1, got {digits}")
    if steps is not None and steps < 1:
        raise PumaError(f"--steps must be ≥ 1, got {steps}")
    out_dir = Path(out_dir)
    common = [*overrides, "logging.tensorboard=false", "logging.progress=false"]
    if steps is not None:
        common.append(f"training.steps={steps}")
    report = {
        "benchmark": "prime",
        "settings": {
            "config": str(config),
            "overrides": list(overrides),
            "digits": digits,
            "eval_examples": eval_examples,
            "nll_samples": nll_samples,
            "decoding": f"{policy} policy, ancestral schedule of T steps, greedy values",
            "nll": "count form over digits, nats per token; 'nll' is the digit-marginal bound, "
            "'nll_joint' the published loss (not a bound for ℓ > 1)",
        },
        "machine": None,
        "config": None,
        "arms": [],
    }
    json_path = out_dir / "prime.json"
    for ell in digits:
        cfg = load_config(
            config,
            [*common, f"model.prime.digits={ell}", f"logging.out_dir={out_dir / f'digits-{ell}'}"],
        )
        trainer = Trainer(cfg, overwrite=True)  # the benchmark's own arm: a rerun replaces it
        if report["config"] is None:  # once the Trainer has set the thread count
            report["machine"] = machine_info()
            report["config"] = asdict(cfg)
            report["config"]["model"]["prime"]["digits"] = "the arm's ℓ (the only difference)"
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        examples = trainer.task.eval_examples()[:eval_examples]
        arm = prime_eval(
            trainer.eval_model(),
            trainer.task,
            examples,
            policies=[policy],
            time_steps=time_steps or [trainer.task.seq_len],
            nll_samples=nll_samples,
            batch_size=cfg.eval.batch_size,
            autocast_dtype=trainer.amp,
        )
        arm["train_seconds"] = round(seconds, 1)
        arm["parameters"] = trainer.model.num_parameters()
        report["arms"].append(arm)
        write_json(json_path, report)
        print(format_arms([arm]).splitlines()[-1], flush=True)
    print(format_arms(report["arms"]))
    print(f"wrote {json_path}")
    return report
