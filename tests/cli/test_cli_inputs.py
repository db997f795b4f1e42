"""Every command-line option and every config field, given a bad value: exit code 2, one
``error:`` line, no traceback. The tables must name every option of every command and every
config field, so a new one without a bad-value entry fails here."""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from puma_mdm.bundled import default_model
from puma_mdm.cli import build_parser, main
from puma_mdm.train.config import Config
from tiny import TINY_RUN

MODEL = str(default_model())
PUZZLE = "." * 81
UNWRITABLE = "{tmp}/blocker/out"  # under a regular file: cannot be created
# arguments a command needs besides the one under test
BASE = {
    "train": ["--config", "sort", "--out-dir", "{tmp}/run", *TINY_RUN, "training.steps=1"],
    "solve": [PUZZLE],
    "sample": ["--model", MODEL],
    "prepare": ["--config", "sort"],
    "export": ["--model", MODEL, "--to", "hf", "{tmp}/exported"],
}
# (command, option or positional) → bad values
BAD = {
    ("train", "--config"): ["no-such-config", "{tmp}/broken.yaml", "{tmp}/list.yaml"],
    ("train", "--out-dir"): [UNWRITABLE, "{tmp}/blocker"],
    ("train", "--data"): ["{tmp}/nope.txt"],
    ("train", "--tokenizer"): ["{tmp}/nope"],
    ("train", "--resume"): ["{tmp}/nope"],
    ("train", "overrides"): ["notkeyvalue", "=3"],
    ("prepare", "--config"): ["no-such-config", "{tmp}/broken.yaml"],
    ("prepare", "overrides"): ["notkeyvalue", "task.name=bogus"],
    ("eval", "--model"): ["{tmp}/nope"],
    ("eval", "--task"): ["bogus"],
    ("eval", "--data"): ["{tmp}/nope.txt"],
    ("eval", "--n"): ["0", "-3", "many"],
    ("eval", "--policies"): ["bogus", "margin,bogus", ","],
    ("eval", "--ks"): ["0", "1,x"],
    ("eval", "--thresholds"): ["2", "-1", "nan"],
    ("eval", "--batch-size"): ["0"],
    ("eval", "--samples"): ["0"],
    ("eval", "--time-steps"): ["0"],
    ("eval", "--nll-samples"): ["0"],
    ("eval", "--out"): [UNWRITABLE, "{tmp}"],
    ("solve", "puzzle"): ["{tmp}/binary.txt", "{tmp}/latin1.txt", "{tmp}/header.csv", "12x"],
    ("solve", "--model"): ["{tmp}/nope"],
    ("solve", "--policy"): ["bogus"],
    ("solve", "--k"): ["0"],
    ("solve", "--threshold"): ["2", "-1", "nan", "0"],
    ("solve", "--png"): [UNWRITABLE],
    ("demo", "--steps"): ["0"],
    ("demo", "--n-eval"): ["0"],
    ("demo", "--model"): ["{tmp}/nope"],
    ("demo", "--out-dir"): [UNWRITABLE],
    ("demo", "overrides"): ["notkeyvalue"],
    ("bench speedup", "--task"): ["bogus"],
    ("bench speedup", "--config"): ["no-such-config"],
    ("bench speedup", "--steps"): ["0"],
    ("bench speedup", "--budget-minutes"): ["0", "nan"],
    ("bench speedup", "--seeds"): ["0"],
    ("bench speedup", "--first-seed"): ["-1"],
    ("bench speedup", "--merge"): ["{tmp}/nope.json"],
    ("bench speedup", "--grid"): ["no-such-study"],
    ("bench speedup", "--resume"): ["{tmp}/nope"],
    ("bench speedup", "--regimes"): [","],
    ("bench speedup", "--jobs"): ["0"],
    ("bench speedup", "--eval-every"): ["0"],
    ("bench speedup", "--eval-examples"): ["0"],
    ("bench speedup", "--targets"): ["1.5", "x"],
    ("bench speedup", "--out-dir"): [UNWRITABLE],
    ("bench speedup", "overrides"): ["training.steps=0", "notkeyvalue"],
    ("bench throughput", "--config"): ["no-such-config"],
    ("bench throughput", "--sizes"): ["huge"],
    ("bench throughput", "--strategies"): ["bogus"],
    ("bench throughput", "--autocast"): ["fp8"],
    ("bench throughput", "--train-steps"): ["0"],
    ("bench throughput", "--warmup-steps"): ["-1"],
    ("bench throughput", "--model"): ["{tmp}/nope"],
    ("bench throughput", "--sample-batches"): ["0"],
    ("bench throughput", "--policies"): ["bogus"],
    ("bench throughput", "--threshold"): ["2"],
    ("bench throughput", "--min-seconds"): ["0"],
    ("bench throughput", "--threads"): ["-1"],
    ("bench throughput", "--out-dir"): [UNWRITABLE],
    ("bench throughput", "overrides"): ["notkeyvalue"],
    ("bench prime", "--task"): ["bogus"],
    ("bench prime", "--config"): ["no-such-config"],
    ("bench prime", "--digits"): ["0"],
    ("bench prime", "--steps"): ["0"],
    ("bench prime", "--time-steps"): ["0"],
    ("bench prime", "--policy"): ["bogus"],
    ("bench prime", "--eval-examples"): ["0"],
    ("bench prime", "--nll-samples"): ["0"],
    ("bench prime", "--out-dir"): [UNWRITABLE],
    ("bench prime", "overrides"): ["notkeyvalue"],
    ("bench blocks", "--length"): ["0"],
    ("bench blocks", "--block-sizes"): ["0", ""],
    ("bench blocks", "--batch-size"): ["0"],
    ("bench blocks", "--repeats"): ["0"],
    ("bench blocks", "--precision"): ["fp8"],
    ("bench blocks", "--device"): ["tpu", "cuda:x"],
    ("bench blocks", "--threads"): ["-1"],
    ("bench blocks", "--out-dir"): [UNWRITABLE],
    ("bench sampling", "--model"): ["nolabel", "x={tmp}/nope"],
    ("bench sampling", "--decoders"): ["bogus", "k=0"],
    ("bench sampling", "--policy"): ["bogus"],
    ("bench sampling", "--batch-sizes"): ["0", ""],
    ("bench sampling", "--examples"): ["0"],
    ("bench sampling", "--single-examples"): ["0"],
    ("bench sampling", "--caches"): ["bogus"],
    ("bench sampling", "--refresh"): ["0"],
    ("bench sampling", "--precision"): ["fp8"],
    ("bench sampling", "--threads"): ["-1"],
    ("bench sampling", "--out-dir"): [UNWRITABLE],
    ("bench calls", "--model"): ["nolabel", "x={tmp}/nope"],
    ("bench calls", "--widths"): ["0", "x"],
    ("bench calls", "--seq-lens"): ["0"],
    ("bench calls", "--batch-sizes"): ["0", ""],
    ("bench calls", "--repeats"): ["0"],
    ("bench calls", "--every"): ["0"],
    ("bench calls", "--precision"): ["fp8"],
    ("bench calls", "--threads"): ["-1"],
    ("bench calls", "--out-dir"): [UNWRITABLE],
    ("eval", "--entropy-bounds"): ["0", "x"],
    ("eval", "--entropy-sums"): ["0", "x"],
    ("eval", "--cache"): ["bogus"],
    ("eval", "--refresh"): ["0"],
    ("solve", "--entropy-bound"): ["0", "nan"],
    ("solve", "--entropy-sum"): ["0", "nan"],
    ("solve", "--cache"): ["bogus"],
    ("solve", "--refresh"): ["0"],
    ("sample", "--entropy-bound"): ["-1"],
    ("sample", "--entropy-sum"): ["-1"],
    ("sample", "--cache"): ["bogus"],
    ("sample", "--refresh"): ["0"],
    ("analyze mismatch", "--model"): ["{tmp}/nope"],
    ("analyze mismatch", "--task"): ["bogus"],
    ("analyze mismatch", "--data"): ["{tmp}/nope.txt"],
    ("analyze mismatch", "--n"): ["0"],
    ("analyze mismatch", "--policy"): ["bogus"],
    ("analyze mismatch", "--k"): ["0"],
    ("analyze mismatch", "--threshold"): ["2"],
    ("analyze mismatch", "--bins"): ["0"],
    ("analyze mismatch", "--draws"): ["0"],
    ("analyze mismatch", "--batch-size"): ["0"],
    ("analyze mismatch", "--seed"): ["-1"],
    ("analyze mismatch", "--out"): [UNWRITABLE],
    ("analyze mismatch", "--plot"): [UNWRITABLE],
    ("export", "--model"): ["{tmp}/nope"],
    ("export", "--to"): ["onnx"],
    ("export", "out"): [UNWRITABLE],
    ("sample", "--model"): ["{tmp}/nope"],
    ("sample", "--prompt"): ["caf\udce9"],  # a command line byte that is not UTF-8
    ("sample", "--length"): ["0"],
    ("sample", "--policy"): ["bogus"],
    ("sample", "--k"): ["0"],
    ("sample", "--threshold"): ["nan"],
    ("sample", "--temperature"): ["nan", "-1"],
    ("sample", "--seed"): ["-1"],
    ("sample", "--n"): ["0"],
}
# config key → a bad value for `puma train KEY=VALUE`
BAD_CONFIG = {
    "model.dim": "0",
    "model.n_layers": "0",
    "model.n_heads": "0",
    "model.n_kv_heads": "0",
    "model.mlp_hidden": "0",
    "model.rope": "maybe",
    "model.task_positions": "maybe",
    "model.tie_head": "maybe",
    "model.dropout": "1",
    "model.prime.digits": "-1",
    "model.prime.loss": "bogus",
    "model.hf_path": "{tmp}/nope",
    "model.trust_remote_code": "maybe",
    "model.hf_mask_token_id": "-1",
    "model.init_from": "{tmp}/nope",
    "task.name": "bogus",
    "task.options": "{n_train: 0}",
    "training.strategy": "bogus",
    "training.block_size": "-1",
    "training.steps": "0",
    "training.batch_size": "0",
    "training.grad_accum": "0",
    "training.lr": "nan",
    "training.weight_decay": "-1",
    "training.betas": "[0.9]",
    "training.warmup_steps": "-1",
    "training.min_lr_ratio": "2",
    "training.grad_clip": "-1",
    "training.elbo_form": "bogus",
    "training.loss_norm": "bogus",
    "training.ema": "1",
    "training.seed": "abc",
    "training.device": "tpu",
    "training.parallel": "bogus",
    "training.autocast": "bf32",
    "training.compile": "maybe",
    "training.threads": "-1",
    "training.skip_nonfinite": "maybe",
    "training.puma.k_schedule": "[[0,0]]",
    "training.puma.mode": "bogus",
    "training.puma.tau": "2",
    "training.puma.fresh_fraction": "1",
    "eval.every": "-1",
    "eval.examples": "0",
    "eval.policy": "bogus",
    "eval.extra_policies": "[bogus]",
    "eval.k": "0",
    "eval.batch_size": "0",
    "logging.out_dir": UNWRITABLE,
    "logging.log_every": "0",
    "logging.tensorboard": "maybe",
    "logging.progress": "maybe",
    "logging.wandb": "maybe",
    "logging.wandb_project": "",
    "logging.wandb_mode": "bogus",
    "checkpoint.every": "-1",
    "checkpoint.keep_last": "0",
}
MORE_BAD_CONFIG = [  # further values the issue found passing or crashing
    "training.puma.k_schedule=[[8,0],[4,-5]]",
    "training.puma.k_schedule=[[8,100],[4,0]]",
    "task.options.n_eval=0",
    "training.threads=-1",
    "model.n_layers=1000000000",
]


def options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command, option or positional name, action) of every argument of every command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), (action.option_strings or [action.dest])[0], action


def config_keys(cls=Config, prefix: str = ""):
    for f in dataclasses.fields(cls):
        kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(kind):
            yield from config_keys(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


ARGUMENTS = list(options(build_parser()))
VALUED = [(cmd, opt) for cmd, opt, action in ARGUMENTS if action.nargs != 0]


def test_every_option_and_config_field_has_a_bad_value():
    flags = [a for _, _, a in ARGUMENTS if a.nargs == 0]
    assert all(isinstance(a, argparse._StoreTrueAction) for a in flags)  # no value to get wrong
    assert sorted(set(VALUED) - set(BAD)) == [], "add a bad value to BAD for each new option"
    assert sorted(set(BAD) - set(VALUED)) == []
    assert sorted(set(config_keys()) ^ set(BAD_CONFIG)) == []


@pytest.fixture
def files(tmp_path) -> Path:
    (tmp_path / "blocker").write_text("a file, not a directory")
    (tmp_path / "broken.yaml").write_text("training: {steps: [\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.txt").write_bytes(("é" * 81 + "\n").encode("latin-1"))
    (tmp_path / "header.csv").write_text("quizzes,solutions\n")
    return tmp_path


def run(argv: list[str], capsys) -> str:
    """Run ``puma ARGV``; assert exit 2 with one ``error:`` line; return that line."""
    code = main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2, (argv, out.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, out.err[-2000:])
    assert "Traceback" not in out.err + out.out
    return lines[0]


def argv_for(command: str, option: str, value: str, tmp: Path) -> list[str]:
    base = [x.replace("{tmp}", str(tmp)) for x in BASE.get(command, [])]
    value = value.replace("{tmp}", str(tmp))
    if option.startswith("--"):
        if option in base:  # replace the base value
            i = base.index(option)
            del base[i : i + 2]
        return [*command.split(), *base, option, value]
    positional = {"puzzle": PUZZLE, "out": "{tmp}/exported".replace("{tmp}", str(tmp))}
    if option in positional:
        base = [value if x == positional[option] else x for x in base]
        return [*command.split(), *base]
    return [*command.split(), *base, value]  # overrides: appended


def train_argv(tmp: Path, override: str) -> list[str]:
    """``puma train`` of the tiny run with one override last (so it wins, out_dir included)."""
    run_dir = f"logging.out_dir={tmp / 'run'}"
    return ["train", "--config", "sort", *TINY_RUN, "training.steps=1", run_dir, override]


@pytest.mark.parametrize(("command", "option"), VALUED, ids=[f"{c}:{o}" for c, o in VALUED])
def test_a_bad_value_of_any_option_is_one_error_line(files, capsys, command, option):
    for value in BAD[(command, option)]:
        run(argv_for(command, option, value, files), capsys)


@pytest.mark.parametrize("key", sorted(BAD_CONFIG))
def test_a_bad_value_of_any_config_field_is_one_error_line(files, capsys, key):
    value = BAD_CONFIG[key].replace("{tmp}", str(files))
    run(train_argv(files, f"{key}={value}"), capsys)
    assert not (files / "run").exists()  # a refused run leaves nothing behind


@pytest.mark.parametrize("override", MORE_BAD_CONFIG)
def test_further_bad_config_values(files, capsys, override):
    line = run(train_argv(files, override), capsys)
    if "n_layers" in override:
        assert "parameters" in line and "cannot fit" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(files, capsys):
    line = run(train_argv(files, "training.device=cuda"), capsys)
    assert "no CUDA device" in line


def test_broken_model_directories_are_one_error_line(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    (model / "manifest.json").unlink()  # as if edited by hand
    (model / "task.json").write_text("{not json")
    assert "task.json: not a valid task record" in run(["eval", "--model", str(model)], capsys)
    (model / "task.json").write_text(json.dumps({"name": "sudoku", "options": {"bogus": 1}}))
    assert "unknown option" in run(["eval", "--model", str(model)], capsys)
    shutil.copy(Path(MODEL) / "task.json", model / "task.json")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dim": config["dim"] * 2}))
    line = run(["eval", "--model", str(model), "--n", "2"], capsys)
    assert "weights do not match config.json" in line
