"""``puma bench speedup``: training steps and seconds each forward process needs to first reach
given held-out accuracies, and the speed-up standard ÷ progressive.

Both arms — ``standard`` (random masking) and ``progressive`` (PUMA) — are built from the same
config (model, data, batch, optimiser, schedule, seed) and differ only in ``training.strategy``.
They live in one process and train in alternating chunks of ``eval_every`` steps, so machine
noise hits both. Only the training steps are timed; evaluation (whole-example accuracy, margin
policy, k=1, on the fixed held-out set, after every chunk) is timed separately. Everything is
repeated per seed (``training.seed``) and summarised by medians over seeds. The JSON is rewritten
after every evaluation, so a killed run still leaves its data.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from omegaconf import OmegaConf

from puma_mdm.bench.common import machine_info, sync
from puma_mdm.errors import PumaError
from puma_mdm.files import write_json
from puma_mdm.plots import save_figure
from puma_mdm.train.checkpoint import write_model_dir
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer

ARMS = ("standard", "progressive")
MEDIAN_RULE = (
    "steps/seconds to a target: median over seeds, a miss ranked slower than any reach; None "
    "when the median lands on a miss. speedup_* = ratio of those medians; paired_speedup_* = "
    "median of per-seed ratios over the seeds where both arms reached the target (n given)."
)


# -- pure computations on accuracy curves ------------------------------------------------------
# A curve is a list of evaluations {"step", "seconds" (cumulative training time), "accuracy"}.


def first_reach(curve: list[dict], target: float) -> dict | None:
    """Step and training seconds of the first evaluation with accuracy ≥ ``target`` (or None)."""
    for point in curve:
        if point["accuracy"] >= target:
            return {"step": point["step"], "seconds": point["seconds"]}
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def censored_median(values: list[float | None]) -> float | None:
    """Median where None means "never reached" and ranks above every number; None when the
    median falls on a miss (or there are no values)."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    mid = len(ordered) // 2
    middle = ordered[mid - 1 : mid + 1] if len(ordered) % 2 == 0 else [ordered[mid]]
    if any(v is None for v in middle):
        return None
    return statistics.mean(middle)


def present_median(values: list[float | None]) -> dict:
    """Median of the values that are not None, and how many there were."""
    present = [v for v in values if v is not None]
    return {"median": statistics.median(present) if present else None, "n": len(present)}


def target_key(target: float) -> str:
    return f"{target:g}"


def seed_result(curves: dict[str, list[dict]], targets: list[float]) -> dict:
    """One seed: each arm's first reach of every target, the per-seed speed-ups, final
    accuracy."""
    per_target = {}
    for target in targets:
        reach = {arm: first_reach(curves[arm], target) for arm in ARMS}
        std, prog = reach["standard"], reach["progressive"]
        per_target[target_key(target)] = {
            **reach,
            "speedup_steps": ratio(std and std["step"], prog and prog["step"]),
            "speedup_seconds": ratio(std and std["seconds"], prog and prog["seconds"]),
        }
    final = {arm: curves[arm][-1]["accuracy"] if curves[arm] else None for arm in ARMS}
    return {"targets": per_target, "final_accuracy": final}


def metric_band(curves: list[list[dict]], key: str = "accuracy") -> dict:
    """Median, min and max of ``key`` over seeds at every evaluated step (seeds lacking a step,
    e.g. stopped early by the time budget, are left out there)."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for point in curve:
            by_step.setdefault(point["step"], []).append(point[key])
    steps = sorted(by_step)
    return {
        "step": steps,
        "median": [statistics.median(by_step[s]) for s in steps],
        "min": [min(by_step[s]) for s in steps],
        "max": [max(by_step[s]) for s in steps],
        "seeds": [len(by_step[s]) for s in steps],
    }


def summarize(runs: list[dict[str, list[dict]]], targets: list[float]) -> dict:
    """Medians over seeds. ``runs``: one ``{arm: non-empty curve}`` per seed."""
    per_seed = [seed_result(curves, targets) for curves in runs]
    per_target = {}
    for target in targets:
        key = target_key(target)
        rows = [r["targets"][key] for r in per_seed]
        arms = {}
        for arm in ARMS:
            reaches = [row[arm] for row in rows]
            arms[arm] = {
                "median_steps": censored_median([r and r["step"] for r in reaches]),
                "median_seconds": censored_median([r and r["seconds"] for r in reaches]),
                "reached": sum(r is not None for r in reaches),
                "seeds": len(reaches),
            }
        std, prog = arms["standard"], arms["progressive"]
        per_target[key] = {
            **arms,
            "speedup_steps": ratio(std["median_steps"], prog["median_steps"]),
            "speedup_seconds": ratio(std["median_seconds"], prog["median_seconds"]),
            "paired_speedup_steps": present_median([row["speedup_steps"] for row in rows]),
            "paired_speedup_seconds": present_median([row["speedup_seconds"] for row in rows]),
        }
    # the held-out NLL bound, when every evaluation has one: informative where accuracy is
    # still near zero
    with_nll = all("nll" in p for curves in runs for arm in ARMS for p in curves[arm])
    final, final_nll, seconds_per_step, bands, nll_bands = {}, {}, {}, {}, {}
    for arm in ARMS:
        ends = [curves[arm][-1] for curves in runs]
        final[arm] = spread([p["accuracy"] for p in ends])
        seconds_per_step[arm] = statistics.median(p["seconds"] / p["step"] for p in ends)
        bands[arm] = metric_band([curves[arm] for curves in runs])
        if with_nll:
            final_nll[arm] = spread([p["nll"] for p in ends])
            nll_bands[arm] = metric_band([curves[arm] for curves in runs], "nll")
    return {
        "seeds": len(runs),
        "targets": per_target,
        "final_accuracy": final,
        "final_nll": final_nll or None,
        "seconds_per_step": seconds_per_step,
        "curves": bands,
        "nll_curves": nll_bands or None,
        "median_rule": MEDIAN_RULE,
    }


def spread(values: list[float]) -> dict:
    """Median, min and max of a per-seed value."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def format_summary(summary: dict) -> str:
    """A fixed-width table of :func:`summarize`'s result."""
    n = summary["seeds"]
    lines = [
        f"median over {n} seed(s); speed-up = standard ÷ progressive (> 1: PUMA is faster)",
        f"{'accuracy ≥':>10} | {'standard':^24} | {'progressive':^24} | {'speed-up':^15}",
        f"{'':>10} | {'steps':>8} {'seconds':>9} {'hit':>5} | {'steps':>8} {'seconds':>9} "
        f"{'hit':>5} | {'steps':>7} {'time':>7}",
    ]
    for key, row in summary["targets"].items():
        cells = []
        for arm in ARMS:
            a = row[arm]
            cells.append(
                f"{_fmt(a['median_steps'], '.0f'):>8} {_fmt(a['median_seconds'], '.1f'):>9} "
                f"{a['reached']:>2}/{a['seeds']:<2}"
            )
        lines.append(
            f"{f'{100 * float(key):g}%':>10} | {cells[0]} | {cells[1]} | "
            f"{_times(row['speedup_steps']):>7} {_times(row['speedup_seconds']):>7}"
        )
    for arm in ARMS:
        f = summary["final_accuracy"][arm]
        nll = (summary.get("final_nll") or {}).get(arm)
        bound = ""
        if nll:
            bound = f"NLL bound {nll['median']:.4f} ({nll['min']:.4f}–{nll['max']:.4f}), "
        lines.append(
            f"{arm:<11} final accuracy {f['median']:.1%} (range {f['min']:.1%}–{f['max']:.1%}), "
            f"{bound}{summary['seconds_per_step'][arm]:.3f} s/step"
        )
    return "\n".join(lines)


def plot_curves(summary: dict, path: Path, title: str) -> None:
    """Both arms' accuracy vs steps (and, when measured, the held-out NLL bound beside it):
    median line, min–max band over seeds, dotted accuracy targets."""
    panels = [("curves", "whole-example accuracy")]
    if summary.get("nll_curves"):
        panels.append(("nll_curves", "held-out NLL bound per token (nats)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for arm, color in zip(ARMS, ("tab:blue", "tab:orange"), strict=True):
            band = summary[key][arm]
            ax.plot(band["step"], band["median"], color=color, marker="o", ms=3, label=arm)
            ax.fill_between(band["step"], band["min"], band["max"], color=color, alpha=0.2)
        ax.set(xlabel="training step", ylabel=label)
        ax.legend()
        ax.grid(alpha=0.3)
    for key in summary["targets"]:
        axes[0, 0].axhline(float(key), color="grey", lw=0.6, ls=":")
    axes[0, 0].set_ylim(0, 1)
    fig.suptitle(title)
    save_figure(fig, path)


# -- running the two arms ----------------------------------------------------------------------


@dataclass
class ExperimentArm:
    """One strategy's Trainer and what has been measured on it."""

    strategy: str
    trainer: Trainer
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)

    def done(self, budget_seconds: float | None) -> bool:
        over_budget = budget_seconds is not None and self.train_seconds >= budget_seconds
        return self.trainer.step >= self.trainer.cfg.training.steps or over_budget

    def train_chunk(self, every: int, budget_seconds: float | None) -> None:
        """Train up to the next multiple of ``every`` steps; only train_step calls are timed."""
        tr = self.trainer
        end = (tr.step // every + 1) * every
        while tr.step < end and not self.done(budget_seconds):
            start = time.perf_counter()
            tr.train_step()
            sync(tr.device)
            self.train_seconds += time.perf_counter() - start
            tr.step += 1

    def evaluate(self) -> dict:
        start = time.perf_counter()
        metrics = self.trainer.run_eval(self.trainer.eval_model())
        elapsed = time.perf_counter() - start
        self.eval_seconds += elapsed
        point = {
            "step": self.trainer.step,
            "seconds": round(self.train_seconds, 3),
            "accuracy": metrics["accuracy"],
            "nll": metrics["nll"],
            "eval_seconds": round(elapsed, 3),
        }
        self.curve.append(point)
        return point

    def record(self) -> dict:
        return {
            "steps": self.trainer.step,
            "train_seconds": round(self.train_seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),
            "sequences_seen": self.trainer.stream.consumed,
            "curve": self.curve,
        }

    def save_model(self) -> None:
        """The final weights, loadable with ``puma eval --model`` for later analysis."""
        tr = self.trainer
        write_model_dir(tr.eval_model(), Path(tr.cfg.logging.out_dir) / "model", tr.record_files())


DEFAULT_TARGETS = (0.5, 0.7, 0.8, 0.9)


def check_settings(
    seeds: int,
    first_seed: int,
    steps: int | None,
    budget_minutes: float | None,
    eval_every: int,
    targets: Sequence[float],
) -> None:
    if seeds < 1:
        raise PumaError(f"--seeds must be ≥ 1, got {seeds}")
    if first_seed < 0:
        raise PumaError(f"--first-seed must be ≥ 0, got {first_seed}")
    if steps is not None and steps < 1:
        raise PumaError(f"--steps must be ≥ 1, got {steps}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise PumaError(f"--budget-minutes must be > 0, got {budget_minutes}")
    if eval_every < 1:
        raise PumaError(f"--eval-every must be ≥ 1, got {eval_every}")
    check_targets(targets)


def check_targets(targets: Sequence[float]) -> None:
    if not targets or not all(0 < t <= 1 for t in targets):
        raise PumaError(f"--targets must be accuracies in (0, 1], got {list(targets)}")


def run_speedup(
    config: str | Path,
    overrides: list[str],
    out_dir: str | Path,
    seeds: int = 3,
    first_seed: int = 0,
    steps: int | None = None,
    budget_minutes: float | None = None,
    eval_every: int = 250,
    eval_examples: int = 200,
    targets: Sequence[float] = DEFAULT_TARGETS,
) -> dict:
    """Train both arms for seeds ``first_seed … first_seed+seeds−1``; write ``speedup.json``
    (after every evaluation), ``speedup.png`` (after every seed) and the final models into
    ``out_dir``. ``steps`` sets ``training.steps`` (the LR schedule's length);
    ``budget_minutes`` stops an arm early once its training time exceeds it."""
    targets = sorted(targets)
    check_settings(seeds, first_seed, steps, budget_minutes, eval_every, targets)
    out_dir = Path(out_dir)
    budget = None if budget_minutes is None else 60.0 * budget_minutes
    common = [
        *overrides,
        "eval.policy=margin",
        "eval.k=1",
        f"eval.examples={eval_examples}",
        "logging.tensorboard=false",
        "logging.progress=false",
    ]
    if steps is not None:
        common.append(f"training.steps={steps}")
    report = {
        "benchmark": "speedup",
        "status": "running",
        "settings": {
            "config": str(config),
            "overrides": list(overrides),
            "seeds": list(range(first_seed, first_seed + seeds)),
            "budget_minutes": budget_minutes,
            "eval_every": eval_every,
            "eval_examples": eval_examples,
            "targets": targets,
            "decoding": "margin policy, k=1, greedy",
            "timing": "seconds = wall-clock of train_step calls only; evaluation excluded "
            "(eval_seconds)",
            "resolution": "a target counts as reached at the first evaluation at or above it, "
            "so steps are multiples of eval_every (or the final step)",
        },
        "machine": None,
        "config": None,
        "runs": [],
        "summary": None,
    }
    json_path, png_path = out_dir / "speedup.json", out_dir / "speedup.png"
    finished: list[dict[str, list[dict]]] = []
    for seed in report["settings"]["seeds"]:
        arms = [
            ExperimentArm(
                strategy,
                Trainer(
                    load_config(
                        config,
                        [
                            *common,
                            f"training.strategy={strategy}",
                            f"training.seed={seed}",
                            f"logging.out_dir={out_dir / f'seed{seed}' / strategy}",
                        ],
                    ),
                    overwrite=True,  # the benchmark's own arm: a rerun replaces it
                ),
            )
            for strategy in ARMS
        ]
        if report["config"] is None:  # once the Trainers have set the thread count
            report["machine"] = machine_info()
            cfg = asdict(arms[0].trainer.cfg)
            cfg["training"]["strategy"] = "standard | progressive (the only difference)"
            cfg["training"]["seed"] = "the run's seed"
            report["config"] = cfg
            report["settings"]["steps"] = arms[0].trainer.cfg.training.steps
        run = {"seed": seed, "complete": False}
        report["runs"].append(run)
        chunk = 0
        while not all(arm.done(budget) for arm in arms):
            # alternate who goes first, so neither arm always runs on a "warm" or "cold" machine
            for arm in arms if chunk % 2 == 0 else arms[::-1]:
                if arm.done(budget):
                    continue
                arm.train_chunk(eval_every, budget)
                p = arm.evaluate()
                print(
                    f"seed {seed} {arm.strategy:<11} step {p['step']:>6}  "
                    f"accuracy {p['accuracy']:6.1%}  train {p['seconds']:8.1f} s  "
                    f"eval {p['eval_seconds']:6.1f} s",
                    flush=True,
                )
                curves = {a.strategy: a.curve for a in arms}
                run["arms"] = {a.strategy: a.record() for a in arms}
                run["result"] = seed_result(curves, targets)
                write_json(json_path, report)
            chunk += 1
        for arm in arms:
            arm.save_model()
        run["complete"] = True
        finished.append({a.strategy: a.curve for a in arms})
        report["summary"] = summarize(finished, targets)
        write_json(json_path, report)
        title = f"{arms[0].trainer.cfg.task.name}: accuracy (margin, k=1), {len(finished)} seed(s)"
        plot_curves(report["summary"], png_path, title)
    report["status"] = "complete"
    write_json(json_path, report)
    print(format_summary(report["summary"]))
    print(f"wrote {json_path} and {png_path}")
    return report


# Settings that must agree for two reports' seeds to be pooled.
MERGE_KEYS = ("config", "overrides", "steps", "budget_minutes", "eval_every", "eval_examples")


def curve_point(row: dict) -> dict:
    """An evaluation record of ``metrics.jsonl`` as a curve point: step, training seconds
    (``train_seconds``: the steps' wall-clock, evaluation and saving excluded), accuracy and
    the NLL bound."""
    return {
        "step": row["step"],
        "seconds": row.get("train_seconds", 0.0),
        "accuracy": row["eval/accuracy"],
        "nll": row["eval/nll"],
    }


def training_curve(run: Path) -> list[dict]:
    """The evaluations of a ``puma train`` run directory as a curve: step, training seconds
    (``train_seconds``: the steps' wall-clock, evaluation and saving excluded), accuracy and
    the NLL bound."""
    path = run / "metrics.jsonl"
    curve = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PumaError(f"{path}: line {lineno} is not JSON") from None
        if "eval/accuracy" in row:
            curve.append(curve_point(row))
    if not curve:
        raise PumaError(f"{path} has no evaluation with an accuracy (eval.every too large?)")
    return curve


def report_from_training_runs(runs: Sequence[Path]) -> dict:
    """A speedup report from ``puma train`` run directories, each one arm (its
    ``training.strategy``) of one seed (its ``training.seed``): e.g. the two arms of the
    paper-scale run, trained as separate cluster jobs. Apart from the strategy, the seed and
    the logging section, their configs must agree; a seed with one arm is incomplete."""
    by_seed: dict[int, dict[str, list[dict]]] = {}
    reference, first = None, None
    for run in runs:
        cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
        training = cfg["training"]
        arm, seed = training.pop("strategy"), training.pop("seed")
        if arm not in ARMS:
            raise PumaError(f"{run}: training.strategy={arm} is not one of {ARMS}")
        cfg.pop("logging", None)
        if reference is None:
            reference, first = cfg, run
        elif cfg != reference:
            differ = sorted(k for k in cfg if cfg[k] != reference.get(k))
            raise PumaError(f"cannot merge {run} with {first}: their configs differ in {differ}")
        if arm in by_seed.setdefault(seed, {}):
            raise PumaError(f"{run}: seed {seed} of the {arm} arm appears twice")
        by_seed[seed][arm] = training_curve(run)
    settings = {
        "config": "puma train runs",
        "overrides": [],
        "steps": reference["training"]["steps"],
        "budget_minutes": None,
        "eval_every": reference["eval"]["every"],
        "eval_examples": reference["eval"]["examples"],
        "targets": list(DEFAULT_TARGETS),
    }
    complete = {seed for seed, arms in by_seed.items() if set(arms) == set(ARMS)}
    return {
        "benchmark": "speedup",
        "settings": settings,
        "config": reference,
        "runs": [
            {
                "seed": seed,
                "complete": seed in complete,
                "arms": {arm: {"curve": curve} for arm, curve in arms.items()},
                **(
                    {"result": seed_result(arms, list(DEFAULT_TARGETS))} if seed in complete else {}
                ),
            }
            for seed, arms in sorted(by_seed.items())
        ],
    }


def merge_reports(
    paths: Sequence[str | Path], out_dir: str | Path, targets: Sequence[float] | None = None
) -> dict:
    """Pool the complete seeds of several ``speedup.json`` files (e.g. seeds run on different
    machines with ``--first-seed``) into one report with a fresh summary and plot. The runs
    must share their settings and config; a seed present twice, or an incomplete seed, is
    refused or left out (incomplete seeds are listed under ``skipped``). With ``targets``, the
    steps to each target are read off the stored curves for these targets instead of the ones
    the runs were started with (recorded as ``settings.run_targets``)."""
    if not paths:
        raise PumaError("--merge needs at least one speedup.json (or its directory)")
    if targets is not None:
        targets = sorted(targets)
        check_targets(targets)
    reports, training_runs = [], []
    for path in paths:
        path = Path(path)
        if (path / "metrics.jsonl").is_file() and (path / "config.yaml").is_file():
            training_runs.append(path)  # a `puma train` run: one arm of one seed
            continue
        path = path / "speedup.json" if path.is_dir() else path
        try:
            reports.append((path, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as err:
            raise PumaError(f"cannot read speedup report {path}: {err}") from err
    if training_runs:
        reports.append((Path("(puma train runs)"), report_from_training_runs(training_runs)))
    first_path, first = reports[0]
    run_targets = first["settings"]["targets"]
    runs, seen, skipped = [], set(), []
    for path, report in reports:
        if report.get("benchmark") != "speedup":
            raise PumaError(f"{path} is not a `puma bench speedup` report")
        for key in (*MERGE_KEYS, *(("targets",) if targets is None else ())):
            if report["settings"].get(key) != first["settings"].get(key):
                raise PumaError(
                    f"cannot merge {path} with {first_path}: setting {key!r} differs "
                    f"({report['settings'].get(key)!r} vs {first['settings'].get(key)!r})"
                )
        differ = [
            section
            for section in report["config"]
            if section != "logging" and report["config"][section] != first["config"].get(section)
        ]
        if differ:
            raise PumaError(
                f"cannot merge {path} with {first_path}: their configs differ in {differ}"
            )
        for run in report["runs"]:
            if not run["complete"]:
                skipped.append({"file": str(path), "seed": run["seed"]})
                continue
            if run["seed"] in seen:
                raise PumaError(f"seed {run['seed']} appears twice (again in {path})")
            seen.add(run["seed"])
            runs.append(run)
    if not runs:
        raise PumaError("none of the reports has a complete seed to merge")
    runs.sort(key=lambda r: r["seed"])
    merged = {
        **first,
        "status": "merged",
        "merged_from": [str(p) for p, _ in reports],
        "skipped": skipped,
        "runs": runs,
    }
    merged["settings"] = {**first["settings"], "seeds": [r["seed"] for r in runs]}
    curves = [{arm: run["arms"][arm]["curve"] for arm in ARMS} for run in runs]
    if targets is None:
        targets = run_targets
    else:
        merged["settings"].update(targets=targets, run_targets=run_targets)
        for run, run_curves in zip(runs, curves, strict=True):
            run["result"] = seed_result(run_curves, targets)
    merged["summary"] = summarize(curves, targets)
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "speedup.json", out_dir / "speedup.png"
    write_json(json_path, merged)
    title = f"{first['config']['task']['name']}: accuracy (margin, k=1), {len(runs)} seed(s)"
    plot_curves(merged["summary"], png_path, title)
    print(format_summary(merged["summary"]))
    print(f"wrote {json_path} and {png_path}")
    return merged
