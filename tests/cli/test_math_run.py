"""The math-program task end to end: train, evaluate by executing programs, sample, bench."""

import json

import pytest

from puma_mdm.cli import main
from puma_mdm.pretrained import load_trained
from puma_mdm.tokenizers import TOKENIZER_FILE

TINY = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "task.options.n_train=200",
    "task.options.n_eval=8",
    "training.batch_size=8",
    "training.autocast=fp32",
    "training.warmup_steps=2",
    "eval.examples=4",
    "logging.progress=false",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def math_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("math") / "run"
    args = ["train", "--config", "math", "--out-dir", str(run), *TINY]
    assert main([*args, "training.steps=4", "eval.every=0", "checkpoint.every=0"]) == 0
    return run


def test_trained_model_comes_back_with_its_tokenizer(math_run):
    assert (math_run / "model" / TOKENIZER_FILE).is_file()
    model, task = load_trained(math_run)
    assert task.name == "math" and task.tokenizer.vocab_size == model.cfg.vocab_size
    question = "Ava has 12 stickers. She buys 5 more stickers. How many stickers does Ava have now?"
    assert task.text_of(task.prompt_ids(question)) == question + "\n"


def test_eval_scores_executed_programs(math_run, capsys):
    out = math_run / "eval.json"
    args = ["--policies", "margin", "--ks", "4", "--thresholds", "", "--entropy-bounds", ""]
    args += ["--entropy-sums", ""]
    args += ["--n", "4", "--out", str(out)]
    assert main(["eval", "--model", str(math_run), *args]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["policy"] == "margin" and row["n"] == 4 and 0 <= row["accuracy"] <= 1
    assert "margin" in capsys.readouterr().out


def test_sample_writes_a_program_for_a_question(math_run, capsys):
    question = (
        "Ben has 7 coins. He finds 3 coins on the way home. How many coins does Ben have now?"
    )
    assert main(["sample", "--model", str(math_run), "--prompt", question, "--k", "8"]) == 0
    assert capsys.readouterr().out.startswith(question + "\n")


def test_bench_speedup_on_math(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "speedup", "--task", "math", "--seeds", "1", "--steps", "2"]
    args += ["--eval-every", "2", "--eval-examples", "4", "--targets", "0.5", "--out-dir", str(out)]
    assert main([*args, *TINY]) == 0
    report = json.loads((out / "speedup.json").read_text())
    assert report["status"] == "complete" and report["config"]["task"]["name"] == "math"
    for arm in ("standard", "progressive"):
        (point,) = report["runs"][0]["arms"][arm]["curve"]
        assert point["step"] == 2 and 0 <= point["accuracy"] <= 1
        model = out / "seed0" / arm / "model"
        assert (model / TOKENIZER_FILE).is_file() and load_trained(model)[1].name == "math"
