"""``puma bench speedup --grid``: a study of regimes, shared arms, resume, merge, summary."""

import json
import shutil

import pytest
import yaml

from puma_mdm.bench.study import (
    Regime,
    load_study,
    plan_study,
    read_curve,
    regime_rows,
    resume_study,
    run_study,
    write_summary,
)
from puma_mdm.cli import main
from puma_mdm.errors import ConfigError, PumaError
from puma_mdm.train.checkpoint import checkpoint_dirs

COMMON = [
    "model.dim=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "task.options.length=5",
    "task.options.n_train=400",
    "task.options.n_eval=20",
    "training.batch_size=8",
    "training.steps=6",
    "training.warmup_steps=1",
    "training.autocast=fp32",
    "training.threads=1",
    "eval.every=3",
    "eval.examples=8",
    "checkpoint.every=3",
    "checkpoint.keep_last=2",
    "logging.tensorboard=false",
]
REQUIRED = {
    "task",
    "regime",
    "overrides",
    "seeds",
    "target",
    "steps_standard",
    "steps_puma",
    "speedup_steps",
    "speedup_seconds",
    "final_accuracy_standard",
    "final_accuracy_puma",
    "device",
}


def write_study(path, regimes, **extra):
    study = {"config": "sort", "common": COMMON, "targets": [0.01, 0.99], "regimes": regimes}
    path.write_text(yaml.safe_dump({**study, **extra}))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A two-regime study (the second changes only the PUMA arm) trained to the end."""
    root = tmp_path_factory.mktemp("study")
    grid = write_study(
        root / "grid.yaml",
        {"base": {}, "k2": {"puma": ["training.puma.k_schedule=[[2,0]]"]}},
    )
    rows = run_study(grid, root / "out", seeds=[0], jobs=2)
    return root, rows


def test_regimes_that_ask_for_the_same_run_share_it(tmp_path):
    grid = write_study(
        tmp_path / "grid.yaml",
        {"base": {}, "k2": {"puma": ["training.puma.k_schedule=[[2,0]]"]}},
    )
    plan = plan_study(load_study(grid), seeds=[0, 1])
    cells = plan.cells
    assert cells["base"]["0"]["standard"] == cells["k2"]["0"]["standard"]
    assert cells["base"]["0"]["puma"] != cells["k2"]["0"]["puma"]
    assert cells["base"]["0"]["standard"] != cells["base"]["1"]["standard"]
    assert len(plan.configs) == 2 * 3  # per seed: one shared standard arm, two PUMA arms
    cfg = plan.configs[cells["k2"]["1"]["puma"]]
    assert cfg.training.strategy == "progressive" and cfg.training.seed == 1
    assert cfg.training.puma.k_schedule == [[2, 0]]


def test_arm_keys_ignore_how_a_run_would_shard_but_not_what_it_computes(tmp_path):
    grid = write_study(
        tmp_path / "grid.yaml",
        {
            "base": {},
            "fsdp": {"both": ["training.parallel=fsdp"]},
            "lr": {"both": ["training.lr=2e-3"]},
        },
    )
    cells = plan_study(load_study(grid), seeds=[0]).cells
    assert cells["base"]["0"] == cells["fsdp"]["0"]
    assert cells["base"]["0"]["standard"] != cells["lr"]["0"]["standard"]


def test_summary_has_a_row_per_regime_and_target(finished):
    root, rows = finished
    assert [(r["regime"], r["target"]) for r in rows] == [
        ("base", 0.01),
        ("base", 0.99),
        ("k2", 0.01),
        ("k2", 0.99),
    ]
    for row in rows:
        assert row.keys() >= REQUIRED
        assert row["task"] == "sort" and row["seeds"] == 1 and row["device"] == "cpu"
    assert rows[2]["overrides"] == {"puma": ["training.puma.k_schedule=[[2,0]]"], "standard": []}
    on_disk = json.loads((root / "out" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(rows))
    assert (root / "out" / "speedup.png").stat().st_size > 0


def test_arm_curves_are_the_runs_evaluations(finished):
    root, rows = finished
    cells = json.loads((root / "out" / "study.json").read_text())["cells"]
    run = root / "out" / "arms" / cells["base"]["0"]["puma"]
    curve = read_curve(run)
    assert [p["step"] for p in curve] == [3, 6]
    assert 0 < curve[0]["seconds"] < curve[1]["seconds"]
    assert rows[0]["final_accuracy_puma"] == curve[-1]["accuracy"]


def test_resume_continues_an_interrupted_arm_exactly(finished, tmp_path, capsys):
    root, rows = finished
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    cells = json.loads((out / "study.json").read_text())["cells"]
    run = out / "arms" / cells["k2"]["0"]["puma"]
    before = read_curve(run)
    # a crash after the step-3 checkpoint: no final model, no step-6 checkpoint, a torn line
    shutil.rmtree(run / "model")
    shutil.rmtree(checkpoint_dirs(run)[-1])
    kept = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [line for line in kept if json.loads(line)["step"] <= 3]
    (run / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 4, "lo')
    resumed = resume_study(out, jobs=1)
    after = read_curve(run)
    assert capsys.readouterr().out.count("[study] resume ") == 1  # only the damaged arm
    assert [p["step"] for p in after] == [3, 6]
    for a, b in zip(before, after, strict=True):  # bit-exact resume: same evaluations
        assert (a["accuracy"], a["nll"]) == (b["accuracy"], b["nll"])
    assert [r["final_accuracy_puma"] for r in resumed] == [r["final_accuracy_puma"] for r in rows]


def test_a_second_start_in_a_study_directory_is_refused(finished):
    root, _ = finished
    with pytest.raises(PumaError, match="--resume"):
        run_study(root / "grid.yaml", root / "out", seeds=[0])


def test_merge_pools_seeds_and_refuses_conflicting_regimes(finished, tmp_path):
    root, _ = finished
    other = tmp_path / "seed1"
    grid = write_study(tmp_path / "grid.yaml", {"base": {}})
    run_study(grid, other, seeds=[1], jobs=2)
    rows = write_summary([root / "out", other], tmp_path / "merged")
    base = [r for r in rows if r["regime"] == "base"]
    assert {r["seeds"] for r in base} == {2}
    assert {r["seeds"] for r in rows if r["regime"] == "k2"} == {1}

    clash = tmp_path / "clash"
    grid = write_study(
        tmp_path / "clash.yaml", {"base": {"both": ["training.lr=2e-3"]}}, name="grid"
    )
    run_study(grid, clash, seeds=[2], jobs=2)
    with pytest.raises(PumaError, match="other overrides"):
        write_summary([root / "out", clash], tmp_path / "merged2")
    # under its own name the same regime name is another study's regime: both are kept
    grid.write_text(grid.read_text().replace("name: grid", "name: longer"))
    other_study = tmp_path / "longer"
    run_study(grid, other_study, seeds=[0], jobs=2)
    rows = write_summary([root / "out", other_study], tmp_path / "merged3")
    assert {(r["study"], r["regime"], r["seeds"]) for r in rows} == {
        ("grid", "base", 1),
        ("grid", "k2", 1),
        ("longer", "base", 1),
    }


def test_regime_rows_on_synthetic_curves():
    def curve(points):
        return [
            {"step": s, "seconds": 2.0 * s, "accuracy": a, "nll": 1.0, "accuracy_top_prob": t}
            for s, a, t in points
        ]

    regime = Regime(name="r", config="sudoku", targets=(0.5, 0.9), task="sudoku")
    pairs = [
        {
            "standard": curve([(100, 0.3, 0.3), (200, 0.6, 0.6)]),
            "puma": curve([(100, 0.5, 0.6), (200, 0.7, 0.8)]),
        }
    ]
    half, ninety = regime_rows(regime, pairs, "cpu", {"standard": 200, "puma": 200}, "s")
    assert (half["steps_standard"], half["steps_puma"], half["speedup_steps"]) == (200, 100, 2.0)
    assert half["speedup_seconds"] == 2.0
    assert ninety["steps_standard"] is None and ninety["speedup_steps"] is None
    assert half["final_accuracy_puma"] == 0.7 and half["final_accuracy_puma_top_prob"] == 0.8


@pytest.mark.parametrize(
    ("regimes", "message"),
    [
        ({"r": {"puma": ["not-an-override"]}}, "key=value"),
        ({"r": {"puma": ["training.nope=1"]}}, "training.nope"),
        ({"r": {"bogus": []}}, "unknown keys"),
        ({"r": {"targets": [1.5]}}, "targets"),
    ],
)
def test_bad_studies_are_refused_with_the_regime_named(tmp_path, regimes, message):
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path / "grid.yaml", regimes))


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["bench", "speedup", "--grid", str(tmp_path / "missing.yaml")]) == 2
    assert "no such study" in capsys.readouterr().err
    assert main(["bench", "speedup", "--resume", str(tmp_path)]) == 2
    assert "study.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "task"),
    [("sudoku-regimes", "sudoku"), ("sudoku-long", "sudoku"), ("math-block-regimes", "math")],
)
def test_bundled_studies_resolve_every_arm(name, task):
    study = load_study(name)
    assert {r.task for r in study.regimes} == {task}
    plan = plan_study(study, seeds=[0])
    assert set(plan.cells) == {r.name for r in study.regimes}
    assert {cfg.training.strategy for cfg in plan.configs.values()} == {"standard", "progressive"}


def test_the_screen_holds_at_least_eight_regimes():
    assert len(load_study("sudoku-regimes").regimes) >= 8


def test_a_copy_with_only_the_curves_still_merges(finished, tmp_path):
    root, rows = finished
    light = tmp_path / "light"
    (light / "arms").mkdir(parents=True)
    shutil.copy(root / "out" / "study.json", light)
    for arm in (root / "out" / "arms").glob("*.yaml"):
        shutil.copy(arm, light / "arms")
        (light / "arms" / arm.stem).mkdir()
        shutil.copy(arm.with_suffix("") / "metrics.jsonl", light / "arms" / arm.stem)
    merged = write_summary([light], tmp_path / "summary")
    assert json.loads(json.dumps(merged)) == json.loads(json.dumps(rows))
