"""Checkpoints survive crashes, are pruned, keep the best weights, and fail loudly when unusable."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from puma_mdm.bundled import bundled_config
from puma_mdm.cli import main
from puma_mdm.errors import ModelLoadError
from puma_mdm.manifest import MANIFEST_NAME
from puma_mdm.pretrained import load_trained
from puma_mdm.train.checkpoint import STATE_NAME, checkpoint_dirs, load_checkpoint
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import logged as records

TINY = [
    "model.dim=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "task.options.length=5",
    "task.options.n_train=1000",
    "task.options.n_eval=50",
    "training.batch_size=16",
    "training.warmup_steps=5",
    "training.autocast=fp32",
    "training.threads=1",
    "eval.every=0",
    "eval.examples=10",
    "logging.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def config(run: Path, *overrides: str):
    return load_config(bundled_config("sort"), [*TINY, f"logging.out_dir={run}", *overrides])


def names(run: Path) -> list[str]:
    return [p.name for p in checkpoint_dirs(run)]


def cli_error(capsys, *argv: str) -> str:
    """Run ``puma train ARGV``, expect exit code 2 and return its one-line error."""
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed 10-step run with checkpoints at steps 5 and 10."""
    run = tmp_path_factory.mktemp("finished")
    Trainer(config(run, "training.steps=10", "checkpoint.every=5")).train()
    return run


def test_crash_before_the_rename_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    run, reference = tmp_path / "run", tmp_path / "reference"
    overrides = ["training.steps=30", "checkpoint.every=10", "checkpoint.keep_last=2"]
    Trainer(config(reference, *overrides)).train()

    rename, calls = Path.rename, []

    def crash_on_second_checkpoint(self: Path, target):
        if Path(target).name.startswith("step-"):
            calls.append(target)
            if len(calls) == 2:
                raise OSError("simulated crash between the write and the rename")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second_checkpoint)
    with pytest.raises(OSError, match="simulated crash"):
        Trainer(config(run, *overrides)).train()
    monkeypatch.undo()

    root = run / "checkpoints"
    assert names(run) == ["step-00000010"]
    assert (root / ".step-00000020.tmp" / STATE_NAME).is_file()  # fully written, not renamed
    (root / ".step-00000099.tmp").mkdir()  # a stale half-written later one
    state, path = load_checkpoint(run)
    assert path.name == "step-00000010" and state["step"] == 10

    assert main(["train", "--resume", str(run)]) == 0
    assert not list(root.glob(".*.tmp"))
    assert names(run) == ["step-00000020", "step-00000030"]  # keep_last=2
    # the log lines of steps 11-20 written before the crash were dropped and re-logged
    assert records(run) == records(reference)


def test_best_keeps_the_weights_of_the_best_evaluation(tmp_path, monkeypatch):
    """checkpoints/ holds the last ``keep_last``; best/ the weights of the best eval accuracy,
    and a resumed run still knows the best accuracy so far."""
    accuracies = iter([0.2, 0.6, 0.4, 0.5, 0.55, 0.3])
    snapshots = []

    def scripted_eval(self: Trainer, model) -> dict:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"accuracy": next(accuracies), "nfe": 1.0, "n": 10, "nll": 1.0}

    monkeypatch.setattr(Trainer, "run_eval", scripted_eval)
    overrides = ["eval.every=5", "checkpoint.every=5", "checkpoint.keep_last=2"]
    Trainer(config(tmp_path, "training.steps=20", *overrides)).train()
    # extend the run: its evaluations (0.55, 0.3) do not beat 0.6 from step 10
    Trainer(config(tmp_path, "training.steps=30", *overrides), resume=True).train()

    assert names(tmp_path) == ["step-00000025", "step-00000030"]
    best = load_file(tmp_path / "best" / "model.safetensors")
    assert best.keys() == snapshots[1].keys()
    assert all(torch.equal(best[k], snapshots[1][k]) for k in best)
    assert load_checkpoint(tmp_path)[0]["best_accuracy"] == 0.6
    assert json.loads((tmp_path / "best" / "task.json").read_text())["name"] == "sort"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no manifest"])
def test_corrupt_train_state_is_a_one_line_error(finished_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    run.mkdir()
    for item in ("config.yaml", "metrics.jsonl"):
        (run / item).write_bytes((finished_run / item).read_bytes())
    latest = checkpoint_dirs(finished_run)[-1]
    copy = run / "checkpoints" / latest.name
    copy.mkdir(parents=True)
    for item in latest.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    state = copy / STATE_NAME
    data = state.read_bytes()
    state.write_bytes(b"not a checkpoint" * 10 if damage == "garbage" else data[: len(data) // 2])
    if damage == "no manifest":  # a checkpoint from before manifests: torch.load finds it
        (copy / MANIFEST_NAME).unlink()

    err = cli_error(capsys, "--resume", str(run))
    if damage == "no manifest":
        assert f"{state} is corrupt or unreadable" in err
    else:
        assert f"{state} is corrupt (its sha256 differs from manifest.json)" in err
    assert "no earlier checkpoint is intact" in err


@pytest.mark.parametrize("name", ["model.safetensors", STATE_NAME, "config.json", "task.json"])
def test_a_flipped_byte_anywhere_in_a_checkpoint_names_it_and_the_previous_good_one(
    finished_run, tmp_path, capsys, name
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    previous, latest = checkpoint_dirs(run)
    data = bytearray((latest / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (latest / name).write_bytes(bytes(data))

    err = cli_error(capsys, "--resume", str(run))
    assert f"{latest / name} is corrupt (its sha256 differs from manifest.json)" in err
    assert f"the previous good checkpoint is {previous}: delete {latest}" in err


def test_a_flipped_byte_in_a_model_directory_is_refused(finished_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(finished_run / "model", model)
    assert load_trained(model)[0].num_parameters() > 0  # intact: loads
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor: safetensors itself would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=re.escape(f"{weights} is corrupt")):
        load_trained(model)
    (model / MANIFEST_NAME).unlink()
    (model / "task.json").unlink()
    with pytest.raises(
        ModelLoadError, match=re.escape("has no task.json")
    ):  # without a manifest: no such check
        load_trained(model)


def test_missing_run_or_checkpoint_is_a_one_line_error(tmp_path, capsys):
    err = cli_error(capsys, "--resume", str(tmp_path / "nope"))
    assert "no such run directory" in err
    err = cli_error(capsys, "--resume", str(tmp_path))
    assert "no config.yaml there" in err
    (tmp_path / "config.yaml").write_text("training: {steps: 5}\n")
    err = cli_error(capsys, "--resume", str(tmp_path))
    assert "holds no checkpoint" in err


def test_resume_refuses_a_different_model_shape(finished_run, capsys):
    before = (finished_run / "config.yaml").read_text()
    for override, says in [
        ("model.dim=64", "model.dim=64 (the run has 32)"),
        ("training.batch_size=8", "training.batch_size=8 (the run has 16)"),
        ("training.strategy=standard", "training.strategy='standard' (the run has 'progressive')"),
        ("training.lr=0.5", "training.lr=0.5 (the run has"),
    ]:
        err = cli_error(capsys, "--resume", str(finished_run), override)
        assert f"cannot resume {finished_run} with {says}" in err
    for flag in ("--out-dir", "--config", "--data"):
        err = cli_error(capsys, "--resume", str(finished_run), flag, str(finished_run))
        assert f"{flag} cannot be used with --resume" in err
    assert names(finished_run) == ["step-00000005", "step-00000010"]  # untouched
    assert (finished_run / "config.yaml").read_text() == before


def test_missing_train_data_file_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    err = cli_error(
        capsys, "--config", "sudoku", "--out-dir", str(run), "task.options.train_data=/nonexistent"
    )
    assert "task.options.train_data: no such file /nonexistent" in err
    assert not run.exists()
