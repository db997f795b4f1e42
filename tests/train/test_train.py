import importlib.util
import json
import subprocess
import sys

import pytest

from puma_mdm.cli import build_parser, main
from puma_mdm.errors import ConfigError
from puma_mdm.evaluate import nll_bound
from puma_mdm.model import Transformer
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import TINY_RUN as TINY


def losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("strategy", ["standard", "progressive"])
def test_both_strategies_drive_the_toy_loss_down(tmp_path, strategy):
    cfg = load_config(
        None,
        [
            *TINY,
            f"training.strategy={strategy}",
            "training.steps=400",
            f"logging.out_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    untrained = nll_bound(trainer.model, trainer.eval_set, trainer.task.mask_id, samples=4)
    trainer.train()
    assert len(losses(tmp_path)) == 40
    trained = nll_bound(trainer.model, trainer.eval_set, trainer.task.mask_id, samples=4)
    # the held-out bound on random masks is comparable across strategies (the training loss
    # is not: PUMA's pool keeps the hard positions masked)
    assert trained < 0.75 * untrained, (untrained, trained)
    model = Transformer.from_pretrained(tmp_path / "model")
    assert model.cfg.seq_len == 10
    assert json.loads((tmp_path / "model" / "task.json").read_text())["name"] == "sort"


def test_cli_help_lists_every_option():
    parser = build_parser()
    top = parser.format_help()
    for command in ("train", "eval"):
        assert command in top
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name, p in sub.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"puma {name}: option {action.dest} has no description"
    out = subprocess.run(
        [sys.executable, "-m", "puma_mdm.cli", "train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--resume" in out.stdout and "KEY=VALUE" in out.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.nonsense=1", "training.nonsense"),
        ("training.steps=many", "training.steps"),
        ("eval.k=0", "eval.k must be ≥ 1"),
        ("eval.policy=best", "eval.policy"),
        ("training.loss_norm=batch", "training.loss_norm"),
        ("task.options.lenght=3", "unknown option"),
        ("task.options.length=x", "task.options.length: expected int"),
    ],
)
def test_bad_config_is_named(override, message, tmp_path, capsys):
    code = main(["train", "--config", "sort", "--out-dir", str(tmp_path), override])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_renamed_keys_and_values_keep_their_old_spellings(tmp_path):
    """A config written before a rename (a saved run's config.yaml) loads to the new names."""
    old = tmp_path / "old.yaml"
    old.write_text("training:\n  loss_form: continuous\n  puma: {mode: standard}\n")
    for cfg in (
        load_config(old),
        load_config(None, ["training.loss_form=continuous", "training.puma.mode=standard"]),
    ):
        assert (cfg.training.elbo_form, cfg.training.puma.mode) == ("continuous", "fixed")
    assert load_config(None).training.elbo_form == "count"


def test_config_file_missing():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml")


def test_wandb_without_the_package_is_a_clear_error(tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed, so the missing-package error cannot happen")
    args = ["train", "--config", "sort", "--out-dir", str(tmp_path), *TINY, "training.steps=1"]
    assert main([*args, "logging.wandb=true"]) == 2
    assert "logging.wandb=true needs the wandb package" in capsys.readouterr().err


def test_wandb_mode_is_validated():
    with pytest.raises(ConfigError, match=r"logging\.wandb_mode"):
        load_config(None, ["logging.wandb_mode=sometimes"])


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(tmp_path):
    """training.compile=true changes how the step runs, not what it computes: the same seed
    gives the same losses (to float rounding) and a model that saves and loads."""
    runs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        cfg = load_config(
            None,
            [
                *TINY,
                "training.strategy=progressive",
                "training.steps=20",
                f"training.compile={str(compiled).lower()}",
                f"logging.out_dir={out}",
            ],
        )
        Trainer(cfg).train()
        runs[compiled] = losses(out)
    assert len(runs[True]) == 2
    assert runs[True] == pytest.approx(runs[False], rel=1e-3)
    Transformer.from_pretrained(tmp_path / "True" / "model")


def test_evaluations_log_training_seconds_and_extra_policies(tmp_path):
    from puma_mdm.evaluate import evaluate

    args = [
        *TINY,
        "training.steps=20",
        "eval.every=10",
        "eval.extra_policies=[top_prob,random]",
        "checkpoint.every=10",
        f"logging.out_dir={tmp_path}",
    ]
    trainer = Trainer(load_config(None, args))
    trainer.train()
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if "eval/n" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert 0 < evals[0]["train_seconds"] < evals[1]["train_seconds"]
    for policy in ("top_prob", "random"):
        direct = evaluate(trainer.model, trainer.task, trainer.eval_set, policy=policy)
        assert evals[1][f"eval/accuracy_{policy}"] == direct["accuracy"]
    # the training clock is part of the checkpoint: a resumed run continues it
    resumed = Trainer(load_config(None, [*args, "training.steps=30"]), resume=True)
    assert resumed.train_seconds == pytest.approx(evals[1]["train_seconds"], abs=1e-3)


def test_extra_policies_are_validated():
    with pytest.raises(ConfigError, match="extra_policies"):
        load_config(None, ["eval.extra_policies=[bogus]"])
    with pytest.raises(ConfigError, match="extra_policies"):
        load_config(None, ["eval.policy=margin", "eval.extra_policies=[margin]"])
