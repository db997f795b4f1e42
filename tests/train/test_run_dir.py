"""A run directory has one writer, is never trained over by accident, and a resumed run shows
each step once, in metrics.jsonl and in TensorBoard."""

import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from puma_mdm.cli import main
from puma_mdm.train.checkpoint import checkpoint_dirs
from puma_mdm.train.run_dir import LOCK_NAME
from tiny import TINY_RUN

RUN = [*TINY_RUN, "training.steps=10", "checkpoint.every=5", "logging.log_every=1"]


def train(capsys, *argv: str) -> tuple[int, str]:
    code = main(["train", *argv])
    return code, capsys.readouterr().err


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, "--config", "sort", "--out-dir", str(run), *RUN)[0] == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom puma_mdm.train.run_dir import RunLock\n"
            "lock = RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(120)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
        for argv in (["--resume", str(run)], ["--config", "sort", "--out-dir", str(run), *RUN]):
            code, err = train(capsys, *argv, "training.steps=20")
            assert code == 2
            assert f"is in use by another training run (PID {holder.pid})" in err
        after = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
        assert after == before  # nothing was touched
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder: the run can be continued now
    assert train(capsys, "--resume", str(run), "training.steps=12")[0] == 0


def test_an_existing_run_is_not_trained_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, "--config", "sort", "--out-dir", str(run), *RUN)[0] == 0
    config = (run / "config.yaml").read_text()
    kept = [p.name for p in checkpoint_dirs(run)]
    code, err = train(capsys, "--config", "sort", "--out-dir", str(run), *RUN, "training.steps=5")
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert (run / "config.yaml").read_text() == config
    assert [p.name for p in checkpoint_dirs(run)] == kept

    code, err = train(
        capsys, "--overwrite", "--config", "sort", "--out-dir", str(run), *RUN, "training.steps=5"
    )
    assert code == 0, err
    assert [p.name for p in checkpoint_dirs(run)] == ["step-00000005"]
    assert "steps: 5" in (run / "config.yaml").read_text()

    (run / "notes.txt").write_text("mine")
    code, err = train(capsys, "--overwrite", "--config", "sort", "--out-dir", str(run), *RUN)
    assert code == 2 and "notes.txt" in err
    assert (run / "notes.txt").read_text() == "mine"


def test_a_refused_run_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "new"
    code, _ = train(capsys, "--config", "sort", "--out-dir", str(run), *RUN, "task.name=bogus")
    assert code == 2 and not run.exists()
    code, _ = train(capsys, "--config", "sort", "--out-dir", str(run), *RUN)
    assert code == 0 and (run / LOCK_NAME).is_file()


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--config", "sort", "--out-dir", str(run), *RUN, "logging.tensorboard=true"]
    assert train(capsys, *argv)[0] == 0
    # as if killed after logging steps 6..10 but before their checkpoint was written
    latest = checkpoint_dirs(run)[-1]
    assert latest.name == "step-00000010"
    for path in sorted(latest.iterdir()):
        path.unlink()
    latest.rmdir()
    assert train(capsys, "--resume", str(run))[0] == 0

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    assert steps == list(range(1, 11))
