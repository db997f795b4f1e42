"""MDM-Prime through the trainer, the saved model and ``puma eval``."""

import json
import shutil

import pytest

from puma_mdm.bundled import bundled_config
from puma_mdm.cli import main
from puma_mdm.errors import ConfigError
from puma_mdm.kinds import build_model, load_model
from puma_mdm.prime.evaluate import prime_nll_bound
from puma_mdm.prime.model import PrimeTransformer
from puma_mdm.tasks import build_task
from puma_mdm.train.checkpoint import checkpoint_dirs
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import TINY_RUN, WALL_CLOCK

TINY = [*TINY_RUN, "eval.examples=40", "logging.log_every=5"]


def log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in log(run_dir) if "loss" in r]


@pytest.mark.parametrize("strategy", ["standard", "progressive"])
def test_one_digit_trains_exactly_like_the_mdm(tmp_path, strategy):
    runs = {}
    for digits in (0, 1):
        out = tmp_path / str(digits)
        cfg = load_config(
            None,
            [
                *TINY,
                f"training.strategy={strategy}",
                "training.steps=30",
                f"model.prime.digits={digits}",
                f"logging.out_dir={out}",
            ],
        )
        runs[digits] = Trainer(cfg).train(), losses(out)
    (plain, plain_losses), (prime, prime_losses) = runs[0], runs[1]
    assert prime_losses == plain_losses and len(plain_losses) == 6
    assert prime.pop("nll_joint") == prime["nll"]
    assert prime == plain


@pytest.mark.parametrize("strategy, loss", [("standard", "joint"), ("progressive", "marginal")])
def test_two_digits_learn_with_both_strategies(tmp_path, strategy, loss):
    cfg = load_config(
        None,
        [
            *TINY,
            f"training.strategy={strategy}",
            "training.steps=300",
            "model.prime.digits=2",
            f"model.prime.loss={loss}",
            f"logging.out_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, PrimeTransformer) and trainer.model.codec.base == 4
    untrained = prime_nll_bound(trainer.model, trainer.eval_set, samples=4)["nll"]
    metrics = trainer.train()
    trained = prime_nll_bound(trainer.model, trainer.eval_set, samples=4)["nll"]
    assert trained < 0.75 * untrained, (untrained, trained)
    assert {"nll", "nll_joint", "accuracy", "nfe"} <= set(metrics)
    assert metrics["nfe"] == 10  # k = 1 digit per step: 5 tokens × 2 digits
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, PrimeTransformer) and loaded.cfg.prime_digits == 2


def test_puma_eval_reports_the_bound_nfe_and_idle_steps(tmp_path, capsys):
    args = [*TINY, "training.steps=20", "model.prime.digits=2", "training.strategy=standard"]
    assert main(["train", "--config", "sort", "--out-dir", str(tmp_path / "run"), *args]) == 0
    out = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "run"),
            "--n",
            "60",
            "--policies",
            "random,margin",
            "--ks",
            "1",
            "--thresholds",
            "",
            "--time-steps",
            "5,20",
            "--fp32",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "NLL bound (digit-marginal form)" in text and "not a bound" in text
    report = json.loads(out.read_text())["prime"]
    assert (report["digits"], report["base"], report["unused_codes"]) == (2, 4, 6)
    assert report["nll"] > 0 and report["nll_joint"] > 0
    rows = {(r["policy"], r["time_steps"]): r for r in report["ancestral"]}
    assert set(rows) == {("random", 5), ("random", 20), ("margin", 5), ("margin", 20)}
    for (_, steps), row in rows.items():
        # every network call served a non-idle step: NFE per example = T · (1 − idle)
        assert row["nfe"] == pytest.approx(steps * (1 - row["idle_fraction"]))
        assert row["idle_fraction"] == pytest.approx(row["idle_expected"], abs=0.06)
    assert rows[("random", 20)]["idle_fraction"] > rows[("random", 5)]["idle_fraction"]


def test_prime_progressive_resumes_exactly(tmp_path):
    args = [
        *TINY,
        "training.strategy=progressive",
        "training.steps=20",
        "model.prime.digits=2",
        "logging.log_every=1",
        "checkpoint.every=10",
        "checkpoint.keep_last=5",
        f"logging.out_dir={tmp_path}",
    ]
    Trainer(load_config(None, args)).train()
    straight = log(tmp_path)
    shutil.rmtree(checkpoint_dirs(tmp_path)[-1])  # back to the step-10 checkpoint
    Trainer(load_config(None, args), resume=True).train()
    resumed = log(tmp_path)
    assert [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in resumed] == [
        {k: v for k, v in r.items() if k not in WALL_CLOCK} for r in straight
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.prime.digits=-1", "model.prime.digits must be ≥ 0"),
        ("model.prime.loss=exact", "model.prime.loss"),
        ("model.prime.digits=3", "dim=32 must be divisible by prime_digits=3"),
    ],
)
def test_bad_prime_settings_are_named(override, message, tmp_path, capsys):
    code = main(["train", "--config", "sort", "--out-dir", str(tmp_path), *TINY, override])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sudoku_prime_config_builds_a_prime_model():
    cfg = load_config(bundled_config("sudoku-prime"))
    assert cfg.model.prime.digits == 2
    model = build_model(cfg, build_task(cfg.task.name, cfg.task.options))
    assert isinstance(model, PrimeTransformer)
    assert (model.codec.classes, model.codec.base, model.codec.unused_codes) == (10, 4, 6)
    tied = load_config(bundled_config("sudoku-prime"), ["model.tie_head=true"])
    with pytest.raises(ConfigError, match="tie_head"):
        build_model(tied, build_task(cfg.task.name, cfg.task.options))


def test_bench_prime_trains_one_arm_per_digit_count(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "prime", "--task", "sort", "--digits", "1,2", "--steps", "10"]
    args += ["--eval-examples", "30", "--nll-samples", "1", "--out-dir", str(out), *TINY]
    assert main(args) == 0
    report = json.loads((out / "prime.json").read_text())
    one, two = report["arms"]
    assert (one["digits"], one["base"], two["digits"], two["base"]) == (1, 10, 2, 4)
    assert one["nll"] == one["nll_joint"]  # ℓ = 1: both forms are the MDM bound
    assert one["parameters"] > two["parameters"]  # 11 embedding rows of 32 vs 5 rows of 16
    (row1,), (row2,) = one["ancestral"], two["ancestral"]
    assert row1["time_steps"] == row2["time_steps"] == 10  # the sequence length
    assert row2["idle_fraction"] < row1["idle_fraction"]  # 10 digits to place instead of 5
    assert (out / "digits-2" / "model" / "model.safetensors").is_file()
    assert "NLL bound" in capsys.readouterr().out
    assert main(["bench", "prime", "--task", "sort", "--digits", "0,2", "--out-dir", str(out)]) == 2
    assert "argument --digits: 0 is less than 1" in capsys.readouterr().err
