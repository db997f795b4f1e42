import json

import pytest
import torch

from puma_mdm.bench.speedup import (
    censored_median,
    first_reach,
    format_summary,
    merge_reports,
    present_median,
    ratio,
    run_speedup,
    seed_result,
    summarize,
)
from puma_mdm.bench.throughput import run_throughput
from puma_mdm.bundled import bundled_config
from puma_mdm.cli.bench import add_commands as add_bench_parser
from puma_mdm.errors import PumaError
from puma_mdm.model import Transformer
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer

TINY = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "task.options.length=5",
    "task.options.n_train=1000",
    "task.options.n_eval=40",
    "training.batch_size=16",
    "training.autocast=fp32",
]


def curve(points):
    """(step, accuracy) pairs → a curve at 0.5 s per step."""
    return [{"step": s, "seconds": 0.5 * s, "accuracy": a} for s, a in points]


def test_first_reach_is_the_first_crossing():
    c = curve([(100, 0.2), (200, 0.6), (300, 0.4), (400, 0.9)])
    assert first_reach(c, 0.5) == {"step": 200, "seconds": 100.0}
    assert first_reach(c, 0.6) == {"step": 200, "seconds": 100.0}  # reaching = at or above
    assert first_reach(c, 0.8) == {"step": 400, "seconds": 200.0}
    assert first_reach(c, 0.95) is None
    assert first_reach([], 0.1) is None


def test_ratio_is_none_when_either_side_is_missing():
    assert ratio(300, 200) == 1.5
    assert ratio(None, 200) is None
    assert ratio(300, None) is None
    assert ratio(300, 0) is None


def test_censored_median_ranks_misses_above_every_number():
    assert censored_median([300, 100, 200]) == 200
    assert censored_median([100, None, 200]) == 200  # the miss is the slowest
    assert censored_median([100, None, None]) is None  # most seeds missed
    assert censored_median([100, 300]) == 200
    assert censored_median([100, None]) is None
    assert censored_median([]) is None


def test_present_median_ignores_missing_and_counts():
    assert present_median([2.0, None, 1.0]) == {"median": 1.5, "n": 2}
    assert present_median([None]) == {"median": None, "n": 0}


def test_seed_result_and_summary_on_synthetic_curves():
    runs = [
        {  # progressive twice as fast in steps
            "standard": curve([(100, 0.3), (200, 0.5), (300, 0.6), (400, 0.8)]),
            "progressive": curve([(100, 0.5), (200, 0.8), (300, 0.85), (400, 0.9)]),
        },
        {
            "standard": curve([(100, 0.2), (200, 0.4), (300, 0.5), (400, 0.7)]),
            "progressive": curve([(100, 0.4), (200, 0.6), (300, 0.8), (400, 0.85)]),
        },
        {
            "standard": curve([(100, 0.1), (200, 0.3), (300, 0.4), (400, 0.45)]),
            "progressive": curve([(100, 0.5), (200, 0.7), (300, 0.75), (400, 0.8)]),
        },
    ]
    one = seed_result(runs[0], [0.5, 0.8])
    assert one["targets"]["0.5"]["standard"] == {"step": 200, "seconds": 100.0}
    assert one["targets"]["0.5"]["speedup_steps"] == 2.0
    assert one["targets"]["0.8"]["speedup_seconds"] == 2.0
    assert one["final_accuracy"] == {"standard": 0.8, "progressive": 0.9}

    s = summarize(runs, [0.5, 0.8, 0.95])
    t5 = s["targets"]["0.5"]
    assert t5["standard"]["median_steps"] == 300  # 200, 300, miss
    assert t5["standard"]["reached"] == 2 and t5["standard"]["seeds"] == 3
    assert t5["progressive"]["median_steps"] == 100
    assert t5["speedup_steps"] == 3.0
    assert t5["speedup_seconds"] == 3.0
    assert t5["paired_speedup_steps"] == {"median": 1.75, "n": 2}  # ratios 2 and 1.5
    t8 = s["targets"]["0.8"]
    assert t8["standard"]["median_steps"] is None  # reached by one seed of three
    assert t8["speedup_steps"] is None
    assert t8["paired_speedup_steps"] == {"median": 2.0, "n": 1}
    assert s["targets"]["0.95"]["progressive"]["reached"] == 0
    assert s["final_accuracy"]["standard"] == {"median": 0.7, "min": 0.45, "max": 0.8}
    assert s["seconds_per_step"]["progressive"] == 0.5
    assert s["curves"]["standard"]["step"] == [100, 200, 300, 400]
    assert s["curves"]["standard"]["median"][-1] == 0.7
    assert s["final_nll"] is None and s["nll_curves"] is None  # these curves have no NLL
    json.dumps(s)  # JSON-serialisable
    table = format_summary(s)
    assert "95%" in table and "3.00×" in table and "—" in table


def test_summary_reports_the_nll_bound_when_every_evaluation_has_one():
    def with_nll(points):
        return [{**p, "nll": 2.0 - p["accuracy"]} for p in curve(points)]

    runs = [
        {"standard": with_nll([(100, 0.1), (200, s)]), "progressive": with_nll([(200, s + 0.1)])}
        for s in (0.2, 0.4, 0.3)
    ]
    s = summarize(runs, [0.5])
    assert s["final_nll"]["standard"] == pytest.approx({"median": 1.7, "min": 1.6, "max": 1.8})
    assert s["final_nll"]["progressive"]["median"] == pytest.approx(1.6)
    assert s["nll_curves"]["standard"]["step"] == [100, 200]
    assert s["nll_curves"]["standard"]["median"] == pytest.approx([1.9, 1.7])
    assert "NLL bound 1.7000" in format_summary(s)
    runs[0]["progressive"][0].pop("nll")  # one evaluation without it: no NLL summary
    assert summarize(runs, [0.5])["final_nll"] is None


def test_speedup_smoke_writes_json_png_and_both_curves(tmp_path):
    out = tmp_path / "speedup"
    report = run_speedup(
        bundled_config("sort"),
        TINY,
        out,
        seeds=2,
        steps=10,
        eval_every=5,
        eval_examples=20,
        targets=[0.01, 0.99],
    )
    saved = json.loads((out / "speedup.json").read_text())
    assert saved["status"] == "complete" and report["status"] == "complete"
    assert (out / "speedup.png").stat().st_size > 0
    assert len(saved["runs"]) == 2
    for run in saved["runs"]:
        for arm in ("standard", "progressive"):
            assert [p["step"] for p in run["arms"][arm]["curve"]] == [5, 10]
            assert run["arms"][arm]["train_seconds"] > 0
        assert (out / f"seed{run['seed']}" / "progressive" / "model" / "config.json").is_file()
    assert saved["summary"]["seeds"] == 2
    assert set(saved["summary"]["targets"]) == {"0.01", "0.99"}


def test_seeds_run_apart_merge_into_one_report(tmp_path):
    kwargs = dict(seeds=1, steps=4, eval_every=2, eval_examples=10, targets=[0.01, 0.99])
    a = run_speedup(bundled_config("sort"), TINY, tmp_path / "a", **kwargs)
    b = run_speedup(bundled_config("sort"), TINY, tmp_path / "b", first_seed=1, **kwargs)
    assert [r["seed"] for r in b["runs"]] == [1]
    merged = merge_reports([tmp_path / "b", tmp_path / "a" / "speedup.json"], tmp_path / "m")
    assert merged["settings"]["seeds"] == [0, 1] and merged["summary"]["seeds"] == 2
    assert (tmp_path / "m" / "speedup.png").stat().st_size > 0
    for arm in ("standard", "progressive"):
        accs = [[p["accuracy"] for p in r["runs"][0]["arms"][arm]["curve"]] for r in (a, b)]
        band = merged["summary"]["curves"][arm]
        assert band["min"] == [min(x) for x in zip(*accs, strict=True)]
        assert band["max"] == [max(x) for x in zip(*accs, strict=True)]
    with pytest.raises(PumaError, match="seed 0 appears twice"):
        merge_reports([tmp_path / "a", tmp_path / "a"], tmp_path / "m2")
    # Read the same curves at other targets: every step to a target comes from the curves.
    retargeted = merge_reports([tmp_path / "a", tmp_path / "b"], tmp_path / "r", targets=[0.3])
    assert retargeted["settings"]["targets"] == [0.3]
    assert retargeted["settings"]["run_targets"] == [0.01, 0.99]
    assert set(retargeted["summary"]["targets"]) == {"0.3"}
    for run in retargeted["runs"]:
        for arm in ("standard", "progressive"):
            reach = next((p for p in run["arms"][arm]["curve"] if p["accuracy"] >= 0.3), None)
            got = run["result"]["targets"]["0.3"][arm]
            assert (got and got["step"]) == (reach and reach["step"])
    with pytest.raises(PumaError, match="--targets must be accuracies"):
        merge_reports([tmp_path / "a"], tmp_path / "r2", targets=[1.5])
    c = run_speedup(bundled_config("sort"), TINY, tmp_path / "c", **{**kwargs, "steps": 6})
    assert c["settings"]["steps"] == 6
    with pytest.raises(PumaError, match="setting 'steps' differs"):
        merge_reports([tmp_path / "a", tmp_path / "c"], tmp_path / "m3")


def test_speedup_arms_train_exactly_like_standalone_runs(tmp_path):
    """Interleaving two Trainers in one process changes nothing in either run."""
    run_speedup(bundled_config("sort"), TINY, tmp_path / "bench", seeds=1, steps=6, eval_every=3)
    for strategy in ("standard", "progressive"):
        alone = tmp_path / strategy
        overrides = [
            *TINY,
            "training.steps=6",
            f"training.strategy={strategy}",
            "eval.every=0",
            "eval.examples=20",
            "checkpoint.every=0",
            "logging.progress=false",
            "logging.tensorboard=false",
            f"logging.out_dir={alone}",
        ]
        Trainer(load_config(bundled_config("sort"), overrides)).train()
        bench = Transformer.from_pretrained(tmp_path / "bench" / "seed0" / strategy / "model")
        reference = Transformer.from_pretrained(alone / "model")
        for a, b in zip(bench.parameters(), reference.parameters(), strict=True):
            assert torch.equal(a, b)


def test_speedup_budget_stops_an_arm_early(tmp_path):
    report = run_speedup(
        bundled_config("sort"),
        TINY,
        tmp_path,
        seeds=1,
        steps=1000,
        budget_minutes=1e-9,
        eval_every=500,
        eval_examples=10,
    )
    for arm in report["runs"][0]["arms"].values():
        assert arm["steps"] == 1  # the first step already exceeds the budget


def test_speedup_rejects_bad_settings(tmp_path):
    with pytest.raises(PumaError, match="eval-every"):
        run_speedup(bundled_config("sort"), TINY, tmp_path, eval_every=0)
    with pytest.raises(PumaError, match="targets"):
        run_speedup(bundled_config("sort"), TINY, tmp_path, targets=[1.5])


def test_throughput_smoke(tmp_path):
    report = run_throughput(
        bundled_config("sort"),
        TINY,
        tmp_path,
        sizes={"tiny": [], "wider": ["model.dim=48"]},
        train_steps=2,
        warmup_steps=1,
        sample_batches=[1, 4],
        policies=["random", "margin"],
        min_seconds=0.0,
        reference=["model.dim=64"],
    )
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["machine"]["torch"] and saved["machine"]["cpu"]
    assert len(saved["training"]) == 2 * 2 * 2  # sizes × strategies × precisions
    for row in saved["training"]:
        assert row["tokens_per_s"] > 0 and 0 < row["forward_process_fraction"] < 1
        fp32 = next(
            r
            for r in saved["training"]
            if (r["size"], r["strategy"], r["autocast"]) == (row["size"], row["strategy"], "fp32")
        )
        assert row["speedup_vs_fp32"] == pytest.approx(
            fp32["seconds_per_step"] / row["seconds_per_step"]
        )
    assert len(saved["sampling"]) == 2 * 2 * 2 * 2  # batches × precisions × policies × decodings
    k1 = [r for r in saved["sampling"] if r["decoding"] == "k=1"]
    assert all(r["nfe"] == 5 for r in k1)  # 5 cells to fill, one per forward
    ref = report["reference"]
    assert ref["nfe"] == 5 and ref["batch_size"] == 4
    assert ref["sampler_seconds_extrapolated"] == pytest.approx(5 * ref["forward_seconds_measured"])
    assert len(ref["comparison"]) == 2 * 2 * 2


@pytest.mark.slow
def test_throughput_times_compiled_training_beside_eager(tmp_path):
    report = run_throughput(
        bundled_config("sort"),
        TINY,
        tmp_path,
        sizes={"tiny": []},
        strategies=["progressive"],
        autocasts=["fp32"],
        train_steps=2,
        warmup_steps=1,
        sample_batches=[],
        compile=True,
    )
    eager, compiled = report["training"]
    assert (eager["setting"], compiled["setting"]) == ("fp32", "fp32+compile")
    assert compiled["compile"] and not eager["compile"]
    assert eager["speedup_vs_fp32"] == 1.0 and compiled["speedup_vs_fp32"] > 0


def test_bench_parser_has_every_command():
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "speedup", "--seeds", "2", "training.lr=1e-3"])
    assert args.seeds == 2 and args.overrides == ["training.lr=1e-3"] and callable(args.func)
    args = parser.parse_args(["bench", "throughput", "--sample-batches", "1,4"])
    assert args.sample_batches == [1, 4] and args.train_steps == 5
    args = parser.parse_args(["bench", "blocks", "--block-sizes", "4,8", "--precision", "fp32"])
    assert (args.block_sizes, args.precision, args.length) == ([4, 8], "fp32", 160)


def fake_training_run(directory, strategy, seed, accuracies, **config):
    """A `puma train` run directory: its config.yaml and evaluations every 100 steps."""
    from puma_mdm.train.config import to_yaml

    overrides = [f"training.strategy={strategy}", f"training.seed={seed}", "eval.every=100"]
    overrides += [f"{k}={v}" for k, v in config.items()]
    cfg = load_config(bundled_config("sort"), overrides)
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(to_yaml(cfg))
    lines = [{"step": 50, "loss": 1.0, "train_seconds": 5.0}]
    lines += [
        {
            "step": 100 * (i + 1),
            "eval/accuracy": a,
            "eval/nll": 1 - a,
            "train_seconds": 10.0 * (i + 1),
        }
        for i, a in enumerate(accuracies)
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return directory


def test_training_runs_of_both_arms_merge_into_a_speedup_report(tmp_path, capsys):
    from puma_mdm.bench.speedup import merge_reports

    runs = [
        fake_training_run(tmp_path / "std0", "standard", 0, [0.1, 0.3, 0.5, 0.6]),
        fake_training_run(tmp_path / "puma0", "progressive", 0, [0.2, 0.5, 0.6, 0.7]),
        fake_training_run(tmp_path / "std1", "standard", 1, [0.1, 0.2, 0.3, 0.5]),
        fake_training_run(tmp_path / "puma1", "progressive", 1, [0.3, 0.5, 0.6, 0.6]),
        fake_training_run(tmp_path / "std2", "standard", 2, [0.1, 0.2, 0.3, 0.4]),  # alone
    ]
    merged = merge_reports(runs, tmp_path / "out", targets=[0.5])
    assert merged["settings"]["seeds"] == [0, 1]
    assert merged["skipped"] == [{"file": "(puma train runs)", "seed": 2}]
    row = merged["summary"]["targets"]["0.5"]
    # seed 0: 300 vs 200 steps, seed 1: 400 vs 200 steps; medians 350 and 200
    assert row["standard"]["median_steps"] == 350 and row["progressive"]["median_steps"] == 200
    assert row["speedup_steps"] == pytest.approx(1.75)
    assert row["speedup_seconds"] == pytest.approx(1.75)  # train_seconds: 10 s per 100 steps
    assert (tmp_path / "out" / "speedup.json").is_file()
    assert (tmp_path / "out" / "speedup.png").is_file()

    other = fake_training_run(tmp_path / "lr", "progressive", 2, [0.5], **{"training.lr": 0.5})
    with pytest.raises(PumaError, match=r"configs differ in \['training'\]"):
        merge_reports([*runs, other], tmp_path / "out2")
