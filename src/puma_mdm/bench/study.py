"""``puma bench speedup --grid``: a resumable study of regimes, PUMA against random masking.

A *study* file (YAML; bundled ones live in ``configs/studies/``) names a base config, overrides
common to every run, accuracy targets and a grid of *regimes*. A regime is a set of config
overrides for the PUMA arm (``puma``), the random-masking arm (``standard``) or ``both``; it
may also change the base ``config`` and its ``targets``. Each (regime, seed) is a pair of
*arms*, and each arm is one ordinary ``puma train`` run in its own directory, with its own
checkpoints and ``metrics.jsonl`` (its curve, written as it trains)::

    OUT/study.json            the grid, the seeds and which arm serves which (regime, seed)
    OUT/arms/<key>.yaml       an arm's resolved config
    OUT/arms/<key>/           its run directory
    OUT/summary.json          one row per (task, regime, target); OUT/speedup.png

An arm's key is a digest of its resolved config (the logging section aside), so two regimes
that ask for the same run — e.g. every PUMA-only regime's baseline arm — share one run.
``--resume OUT`` continues every unfinished arm from its latest checkpoint, so one study can
span many interrupted processes; ``--merge`` builds one summary from several study directories.
Arms run as separate processes, ``--jobs`` at a time, in the order of the grid with each
regime's two arms next to each other, so with two jobs a pair trains side by side.
"""

from __future__ import annotations

import hashlib
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puma_mdm.bench.common import machine_info
from puma_mdm.bench.speedup import (
    censored_median,
    check_targets,
    curve_point,
    first_reach,
    ratio,
)
from puma_mdm.bundled import config_path
from puma_mdm.errors import ConfigError, PumaError
from puma_mdm.files import write_json
from puma_mdm.plots import save_figure
from puma_mdm.train.config import load_config, to_yaml

ARM_NAMES = {"standard": "standard", "puma": "progressive"}  # study's name → training.strategy
POLICY_SUFFIX = {"margin": "", "top_prob": "_top_prob"}  # how the trainer logs each decoder


@dataclass(frozen=True)
class Regime:
    """One cell of the grid: overrides for each arm on top of the study's common ones."""

    name: str
    config: str
    targets: tuple[float, ...]
    both: tuple[str, ...] = ()
    puma: tuple[str, ...] = ()
    standard: tuple[str, ...] = ()
    task: str = ""

    def arm_overrides(self, arm: str) -> list[str]:
        """This regime's overrides for ``arm`` ("puma" or "standard")."""
        return [*self.both, *(self.puma if arm == "puma" else self.standard)]


@dataclass(frozen=True)
class Study:
    name: str
    regimes: tuple[Regime, ...]
    common: tuple[str, ...] = ()
    description: str = ""
    device: str = "cpu"


def bundled_study(name: str) -> Path:
    return Path(str(resources.files("puma_mdm") / "configs" / "studies" / f"{name}.yaml"))


def _strings(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{where}: expected a list of key=value overrides, got {value!r}")
    return tuple(value)


def load_study(source: str | Path) -> Study:
    """A study file (a path, or the name of a bundled study), checked: every regime's arms
    must resolve to valid configs."""
    path = Path(source)
    if not path.is_file():
        bundled = bundled_study(str(source))
        if not bundled.is_file():
            raise PumaError(f"--grid {source}: no such study file or bundled study")
        path = bundled
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable YAML study ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("regimes"), dict) or not raw["regimes"]:
        raise ConfigError(f"{path}: a study needs a non-empty mapping `regimes`")
    known = {"name", "description", "config", "common", "targets", "regimes", "device"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {unknown}; known: {sorted(known)}")
    common = _strings(raw.get("common"), f"{path}: common")
    regimes = []
    for name, spec in raw["regimes"].items():
        spec = spec or {}
        where = f"{path}: regimes.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping, got {spec!r}")
        bad = sorted(set(spec) - {"config", "targets", "both", "puma", "standard", "description"})
        if bad:
            raise ConfigError(f"{where}: unknown keys {bad}")
        targets = tuple(sorted(float(t) for t in spec.get("targets", raw.get("targets", ()))))
        try:
            check_targets(targets)
        except PumaError as err:
            raise ConfigError(f"{where}: {err}") from None
        config = str(spec.get("config", raw.get("config", "sudoku")))
        regime = Regime(
            name=str(name),
            config=config,
            targets=targets,
            both=_strings(spec.get("both"), f"{where}.both"),
            puma=_strings(spec.get("puma"), f"{where}.puma"),
            standard=_strings(spec.get("standard"), f"{where}.standard"),
        )
        task = resolve_arm(regime, common, "standard", 0).task.name
        resolve_arm(regime, common, "puma", 0)  # refuse a bad override before anything runs
        regimes.append(Regime(**{**asdict(regime), "task": task}))
    return Study(
        name=str(raw.get("name", path.stem)),
        regimes=tuple(regimes),
        common=common,
        description=str(raw.get("description", "")),
        device=str(raw.get("device", "cpu")),
    )


def resolve_arm(regime: Regime, common: Sequence[str], arm: str, seed: int):
    """The validated config of one arm of ``regime`` at ``seed``."""
    overrides = [
        *common,
        *regime.arm_overrides(arm),
        f"training.strategy={ARM_NAMES[arm]}",
        f"training.seed={seed}",
        "logging.progress=false",
    ]
    try:
        return load_config(config_path(regime.config), overrides)
    except PumaError as err:
        raise ConfigError(f"regime {regime.name!r}, {arm} arm: {err}") from None


def arm_key(cfg) -> str:
    """A digest of everything that shapes the run, prefixed by its strategy and seed for
    readability. Logging settings and ``training.parallel`` are left out: an arm is one
    process, so how it would shard across several changes nothing it computes."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    tree.pop("logging")
    tree["training"].pop("parallel")
    digest = hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.training.strategy}-s{cfg.training.seed}-{digest}"


@dataclass
class Plan:
    """Which arm serves each (regime, seed, arm) and the arms to run, in order."""

    cells: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # regime→seed→arm
    configs: dict[str, object] = field(default_factory=dict)  # key → Config, in run order


def plan_study(study: Study, seeds: Sequence[int], regimes: Sequence[str] | None = None) -> Plan:
    chosen = [r for r in study.regimes if regimes is None or r.name in regimes]
    missing = sorted(set(regimes or ()) - {r.name for r in study.regimes})
    if missing:
        raise PumaError(
            f"--regimes: {missing} not in study {study.name!r} "
            f"(it has {[r.name for r in study.regimes]})"
        )
    plan = Plan()
    for regime in chosen:
        for seed in seeds:
            cell = plan.cells.setdefault(regime.name, {}).setdefault(str(seed), {})
            for arm in ("standard", "puma"):
                cfg = resolve_arm(regime, study.common, arm, seed)
                key = arm_key(cfg)
                cell[arm] = key
                plan.configs.setdefault(key, cfg)
    return plan


# -- one arm's state on disk --------------------------------------------------------------------


def read_curve(run_dir: Path) -> list[dict]:
    """The evaluations in ``metrics.jsonl``: step, training seconds, accuracy per decoder, NLL.
    A step logged twice (a resumed run replays from its checkpoint) keeps its last record."""
    path = run_dir / "metrics.jsonl"
    points: dict[int, dict] = {}
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if "eval/accuracy" not in record:
            continue
        point = curve_point(record)
        for policy, suffix in POLICY_SUFFIX.items():
            if suffix and f"eval/accuracy{suffix}" in record:
                point[f"accuracy_{policy}"] = record[f"eval/accuracy{suffix}"]
        points[record["step"]] = point
    return [points[s] for s in sorted(points)]


def curve_complete(run_dir: Path, steps: int) -> bool:
    """The run has logged its final evaluation (all a summary needs: a copy of the study with
    only ``study.json``, ``arms/*.yaml`` and ``arms/*/metrics.jsonl`` can be merged)."""
    curve = read_curve(run_dir)
    return bool(curve) and curve[-1]["step"] >= steps


def arm_complete(run_dir: Path, steps: int) -> bool:
    """Nothing left to train: the final evaluation is logged and the final model written."""
    return (run_dir / "model" / "config.json").is_file() and curve_complete(run_dir, steps)


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step-*/train_state.pt"))


# -- running ------------------------------------------------------------------------------------


def arm_command(out_dir: Path, key: str) -> list[str]:
    """``puma train`` for one arm: ``--resume`` when it has a checkpoint, else a fresh start."""
    run_dir = out_dir / "arms" / key
    base = [sys.executable, "-m", "puma_mdm.cli", "train"]
    if has_checkpoint(run_dir):
        return [*base, "--resume", str(run_dir)]
    return [*base, "--config", str(out_dir / "arms" / f"{key}.yaml"), "--out-dir", str(run_dir)]


def prepare_arm(out_dir: Path, key: str, cfg) -> None:
    """Write the arm's resolved config; clear a run directory left without any checkpoint
    (nothing in it can be resumed, and a fresh start needs it empty)."""
    path = out_dir / "arms" / f"{key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text(to_yaml(cfg))
    run_dir = out_dir / "arms" / key
    if run_dir.exists() and not has_checkpoint(run_dir):
        for item in sorted(run_dir.rglob("*"), reverse=True):
            item.rmdir() if item.is_dir() else item.unlink()
        run_dir.rmdir()


def run_arms(out_dir: Path, plan: Plan, jobs: int, poll_seconds: float = 5.0) -> list[str]:
    """Train every unfinished arm, ``jobs`` processes at a time; returns the keys that
    failed. SIGINT/SIGTERM are passed on to the running arms, which checkpoint and stop."""
    todo = [
        key
        for key, cfg in plan.configs.items()
        if not arm_complete(out_dir / "arms" / key, cfg.training.steps)
    ]
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while todo or running:
            while todo and len(running) < jobs and not stopping:
                key = todo.pop(0)
                prepare_arm(out_dir, key, plan.configs[key])
                log = open(out_dir / "arms" / f"{key}.log", "a")  # noqa: SIM115
                command = arm_command(out_dir, key)
                how = "resume" if "--resume" in command else "start"
                print(f"[study] {how} {key}", flush=True)
                running[key] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                log.close()
            time.sleep(poll_seconds)
            for key, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                ok = proc.returncode == 0
                state = "done" if ok else "stopped" if stopping else "FAILED"
                print(f"[study] {state} {key} (exit {proc.returncode})", flush=True)
                if not ok and not stopping:
                    failed.append(key)
            if stopping and not running:
                break
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if stopping:
        raise PumaError(f"stopped; continue with: puma bench speedup --resume {out_dir}")
    return failed


def run_study(
    source: str | Path,
    out_dir: str | Path,
    seeds: Sequence[int],
    jobs: int = 1,
    regimes: Sequence[str] | None = None,
) -> list[dict]:
    """Start a study in ``out_dir`` (which must not hold another study) and run it."""
    out_dir = Path(out_dir)
    if (out_dir / "study.json").is_file():
        raise PumaError(
            f"{out_dir} already holds a study; continue it with --resume {out_dir}, "
            "or choose another --out-dir"
        )
    if not seeds:
        raise PumaError("--seeds must be ≥ 1")
    study = load_study(source)
    plan = plan_study(study, seeds, regimes)
    record = {
        "benchmark": "study",
        "study": asdict(study),
        "seeds": list(seeds),
        "regimes": [r for r in plan.cells],
        "cells": plan.cells,
        "machine": machine_info(),
    }
    write_json(out_dir / "study.json", record)
    return _run(out_dir, record, jobs)


def resume_study(out_dir: str | Path, jobs: int = 1) -> list[dict]:
    """Continue the study in ``out_dir`` after a stop."""
    out_dir = Path(out_dir)
    record = read_study(out_dir)
    return _run(out_dir, record, jobs)


def read_study(out_dir: Path) -> dict:
    path = out_dir / "study.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PumaError(f"{out_dir} holds no readable study.json ({err})") from None
    if record.get("benchmark") != "study":
        raise PumaError(f"{path} is not a study record")
    return record


def _study_of(record: dict) -> Study:
    s = record["study"]
    regimes = tuple(
        Regime(**{**r, **{k: tuple(r[k]) for k in ("targets", "both", "puma", "standard")}})
        for r in s["regimes"]
    )
    return Study(**{**s, "regimes": regimes, "common": tuple(s["common"])})


def _run(out_dir: Path, record: dict, jobs: int) -> list[dict]:
    if jobs < 1:
        raise PumaError(f"--jobs must be ≥ 1, got {jobs}")
    study = _study_of(record)
    plan = plan_study(study, record["seeds"], record["regimes"])
    if plan.cells != record["cells"]:
        raise PumaError(
            f"{out_dir}/study.json no longer matches what its grid resolves to (the code or a "
            "bundled config changed since it started); start a new --out-dir"
        )
    failed = run_arms(out_dir, plan, jobs)
    rows = write_summary([out_dir], out_dir)
    if failed:
        logs = ", ".join(str(out_dir / "arms" / f"{k}.log") for k in failed)
        raise PumaError(f"{len(failed)} arm(s) failed; see {logs}")
    return rows


# -- the summary --------------------------------------------------------------------------------


def _accuracy_curve(curve: list[dict], policy: str) -> list[dict]:
    key = "accuracy" if policy == "margin" else f"accuracy_{policy}"
    return [{**p, "accuracy": p[key]} for p in curve if key in p]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def regime_rows(
    regime: Regime,
    curves: list[dict[str, list[dict]]],
    device: str,
    steps: dict[str, int],
    study: str,
) -> list[dict]:
    """Summary rows of one regime of ``study``: ``curves`` holds one ``{"standard", "puma"}``
    pair of complete curves per seed."""
    rows = []
    for target in regime.targets:
        row = {
            "task": regime.task,
            "study": study,
            "regime": regime.name,
            "config": regime.config,
            "overrides": {arm: regime.arm_overrides(arm) for arm in ("puma", "standard")},
            "seeds": len(curves),
            "steps_budget": steps,
            "target": target,
        }
        for policy in POLICY_SUFFIX:
            suffix = "" if policy == "margin" else f"_{policy}"
            reach, final = {}, {}
            for arm in ("standard", "puma"):
                arm_curves = [_accuracy_curve(c[arm], policy) for c in curves]
                hits = [first_reach(c, target) for c in arm_curves]
                reach[arm] = {
                    "steps": censored_median([h and h["step"] for h in hits]),
                    "seconds": censored_median([h and h["seconds"] for h in hits]),
                    "reached": sum(h is not None for h in hits),
                }
                final[arm] = _median([c[-1]["accuracy"] for c in arm_curves if c])
            std, puma = reach["standard"], reach["puma"]
            row |= {
                f"steps_standard{suffix}": std["steps"],
                f"steps_puma{suffix}": puma["steps"],
                f"reached_standard{suffix}": std["reached"],
                f"reached_puma{suffix}": puma["reached"],
                f"speedup_steps{suffix}": ratio(std["steps"], puma["steps"]),
                f"speedup_seconds{suffix}": ratio(std["seconds"], puma["seconds"]),
                f"final_accuracy_standard{suffix}": final["standard"],
                f"final_accuracy_puma{suffix}": final["puma"],
            }
        row["final_nll_standard"] = _median([c["standard"][-1]["nll"] for c in curves])
        row["final_nll_puma"] = _median([c["puma"][-1]["nll"] for c in curves])
        row["seconds_per_step"] = {
            arm: _median([c[arm][-1]["seconds"] / c[arm][-1]["step"] for c in curves])
            for arm in ("standard", "puma")
        }
        row["device"] = device
        rows.append(row)
    return rows


def collect(out_dirs: Sequence[Path]) -> tuple[dict[tuple[str, str], Regime], dict]:
    """Pool the complete (regime, seed) pairs of several study directories: (study, regime) →
    seed → {arm: curve}, and each study's device. Directories of one study pool their seeds (a
    regime must have the same overrides in each); regimes of different studies stay apart,
    even under one name."""
    regimes: dict[tuple[str, str], Regime] = {}
    pooled: dict[tuple[str, str], dict[str, dict]] = {}
    budgets: dict[tuple[str, str], dict[str, int]] = {}
    devices: dict[str, str] = {}
    for out_dir in out_dirs:
        record = read_study(Path(out_dir))
        study = _study_of(record)
        devices[study.name] = study.device
        for regime in study.regimes:
            if regime.name not in record["cells"]:
                continue
            name = (study.name, regime.name)
            seen = regimes.setdefault(name, regime)
            if (seen.config, seen.arm_overrides("puma"), seen.arm_overrides("standard")) != (
                regime.config,
                regime.arm_overrides("puma"),
                regime.arm_overrides("standard"),
            ):
                raise PumaError(
                    f"cannot merge {out_dir}: regime {regime.name!r} has other overrides there"
                )
            for seed, cell in record["cells"][regime.name].items():
                pair, steps = {}, {}
                for arm, key in cell.items():
                    cfg = yaml_steps(Path(out_dir) / "arms" / f"{key}.yaml")
                    run = Path(out_dir) / "arms" / key
                    if cfg is None or not curve_complete(run, cfg):
                        break
                    pair[arm], steps[arm] = read_curve(run), cfg
                else:
                    if seed in pooled.get(name, {}):
                        raise PumaError(f"regime {regime.name!r} seed {seed} appears twice")
                    pooled.setdefault(name, {})[seed] = pair
                    budgets[name] = steps
    return regimes, {"curves": pooled, "steps": budgets, "devices": devices}


def yaml_steps(path: Path) -> int | None:
    """``training.steps`` of an arm's resolved config (None before it was written)."""
    if not path.is_file():
        return None
    return int(OmegaConf.load(path).training.steps)


def write_summary(out_dirs: Sequence[str | Path], out_dir: str | Path) -> list[dict]:
    """``summary.json`` (one row per study, regime and target, over the complete seeds) and
    ``speedup.png`` in ``out_dir``."""
    regimes, pooled = collect([Path(d) for d in out_dirs])
    rows = []
    for name, regime in regimes.items():
        seeds = pooled["curves"].get(name)
        if seeds:
            pairs = [seeds[s] for s in sorted(seeds, key=int)]
            device = pooled["devices"][name[0]]
            rows += regime_rows(regime, pairs, device, pooled["steps"][name], name[0])
    out_dir = Path(out_dir)
    write_json(out_dir / "summary.json", rows)  # type: ignore[arg-type]
    if rows:
        plot_regimes(rows, out_dir / "speedup.png")
    print(format_rows(rows))
    return rows


def row_label(row: dict) -> str:
    return f"{row['study']}/{row['regime']}"


def format_rows(rows: list[dict]) -> str:
    def cell(value, spec):
        return "—" if value is None else format(value, spec)

    lines = [
        f"{'study/regime':<34} {'seeds':>5} {'target':>6} | {'std':>6} {'puma':>6} {'×steps':>7} "
        f"{'×time':>6} | {'final std':>9} {'puma':>6} {'puma tp':>7}"
    ]
    for r in rows:
        lines.append(
            f"{row_label(r):<34} {r['seeds']:>5} {r['target']:>6.0%} | "
            f"{cell(r['steps_standard'], '.0f'):>6} {cell(r['steps_puma'], '.0f'):>6} "
            f"{cell(r['speedup_steps'], '.2f'):>7} {cell(r['speedup_seconds'], '.2f'):>6} | "
            f"{cell(r['final_accuracy_standard'], '.1%'):>9} "
            f"{cell(r['final_accuracy_puma'], '.1%'):>6} "
            f"{cell(r['final_accuracy_puma_top_prob'], '.1%'):>7}"
        )
    return "\n".join(lines)


def plot_regimes(rows: list[dict], path: Path) -> None:
    """Speed-up in steps (standard ÷ PUMA, margin decoding) per regime and target; a regime
    where an arm missed the target shows no bar, only a marker at 0 naming who missed."""
    labels = list(dict.fromkeys(f"{row_label(r)} ({r['seeds']})" for r in rows))
    targets = sorted({r["target"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.8))
    width = 0.8 / len(targets)
    for j, target in enumerate(targets):
        xs, heights = [], []
        for i, label in enumerate(labels):
            for r in rows:
                here = f"{row_label(r)} ({r['seeds']})" == label
                if here and r["target"] == target:
                    xs.append(i + (j - (len(targets) - 1) / 2) * width)
                    heights.append(r["speedup_steps"])
        known = [(x, h) for x, h in zip(xs, heights, strict=True) if h is not None]
        missed = [x for x, h in zip(xs, heights, strict=True) if h is None]
        if known:
            ax.bar(*zip(*known, strict=True), width=width, label=f"accuracy ≥ {target:.0%}")
        if missed:
            ax.plot(missed, np.zeros(len(missed)), "x", color="grey")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("speed-up in steps (standard ÷ PUMA)")
    ax.set_title("PUMA vs random masking per regime (× at 0: a target not reached)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
