"""The TinyGSM → GSM8K task and the paper-scale config, at a size a CPU trains in seconds."""

import json
import math
import shutil

import pytest
import torch

from hf_models import byte_bpe, save_tokenizer
from puma_mdm.bundled import bundled_config
from puma_mdm.cli import main
from puma_mdm.tasks import build_task
from puma_mdm.tasks.math_programs import MathTaskError
from puma_mdm.tasks.tinygsm import gsm8k_answer, read_gsm8k
from puma_mdm.train.checkpoint import checkpoint_path, load_checkpoint
from puma_mdm.train.config import load_config
from tiny import logged
from tinygsm_files import ENTRY, problems, write_gsm8k, write_tinygsm


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinygsm")
    train = write_tinygsm(root / "train.jsonl", 400)
    test = write_gsm8k(root / "test.jsonl", 6)
    texts = [line for line in train.read_text().splitlines()[:200]]
    tok = byte_bpe(texts, specials=("<|endoftext|>",), vocab_size=400)
    save_tokenizer(tok, root / "tokenizer", eos_token="<|endoftext|>")
    return {"train": train, "test": test, "tokenizer": root / "tokenizer", "root": root}


def options(files, **more):
    base = {
        "train_data": str(files["train"]),
        "eval_data": str(files["test"]),
        "tokenizer": str(files["tokenizer"]),
        "seq_len": 256,
        "workers": 1,
        "prepared": str(files["root"] / "prepared"),
    }
    return base | more


def test_gsm8k_answers_and_bad_lines(tmp_path):
    assert gsm8k_answer("so 3 + 4 = 7.\n#### 1,234") == "1234"
    assert gsm8k_answer("#### -2.5 ") == "-2.5"
    with pytest.raises(ValueError, match="does not end in '#### NUMBER'"):
        gsm8k_answer("the answer is 7")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q", "answer": "7"}\n')
    with pytest.raises(MathTaskError, match=r"bad.jsonl: line 2: its answer does not end"):
        read_gsm8k(bad, ENTRY)


def test_programs_are_graded_by_running_them_against_the_gsm8k_number(files):
    task = build_task("tinygsm", options(files))
    held = task.eval_examples()
    questions = [q for q, _ in task.eval_problems()]
    answers = [p.answer for p in problems(6, seed=1)]
    # what a model might write: the right number computed, a wrong one, one that crashes
    written = [
        f"def {ENTRY}():\n    a = {answers[0] - 1}\n    return a + 1\n",
        f"def {ENTRY}():\n    return {answers[1] + 1}\n",
        f"def {ENTRY}():\n    return 1 // 0\n",
        f"def solution():\n    return {answers[3]}\n",  # not the function TinyGSM names
    ]
    decoded = task.encode(list(zip(questions[:4], written, strict=True))).x0
    assert task.correct(decoded, held[:4]).tolist() == [True, False, False, False]


def tiny_overrides(files, run):
    return [
        "model.dim=32",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.mlp_hidden=64",
        *(f"task.options.{k}={v}" for k, v in options(files).items()),
        "training.steps=6",
        "training.batch_size=8",
        "training.warmup_steps=2",
        "training.compile=false",
        "training.autocast=fp32",
        "training.puma.k_schedule=[[3,0],[4,3]]",
        "eval.every=0",
        "eval.examples=4",
        "eval.batch_size=4",
        "eval.k=8",
        "logging.log_every=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "checkpoint.every=3",
        f"logging.out_dir={run}",
    ]


def test_the_125m_config_is_the_papers_recipe():
    cfg = load_config(bundled_config("tinygsm-125m"))
    m, t = cfg.model, cfg.training
    assert (m.dim, m.n_layers, m.n_heads, m.mlp_hidden, m.tie_head) == (512, 14, 8, 1536, True)
    assert (t.strategy, t.lr, t.warmup_steps, t.batch_size, t.ema) == (
        "progressive",
        3e-4,
        1000,
        32,
        0.9999,
    )
    assert (t.puma.mode, t.puma.tau, cfg.task.options["seq_len"]) == (
        "confidence_collapse",
        0.9,
        512,
    )
    assert t.puma.k_schedule == [[12 + 3 * i, 30000 * i] for i in range(11)]
    base = load_config(bundled_config("tinygsm-125m-standard"))
    assert base.training.strategy == "standard"
    base.training.strategy, base.logging.out_dir = t.strategy, cfg.logging.out_dir
    assert base == cfg  # the twins differ in the forward process (and run directory) only


def test_the_125m_config_trains_from_local_files_and_resumes(files, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--config", "tinygsm-125m", *tiny_overrides(files, run)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 4 and 0 <= result["accuracy"] <= 1 and result["nll"] > 0
    state, _ = load_checkpoint(run)
    stream = state["ranks"][0]["process"]["stream"]
    assert stream["position"] > 8  # fresh rows came from the shards as sequences retired
    assert (files["root"] / "prepared" / "manifest.json").is_file()
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))

    # as if the run had died after its step-3 checkpoint: resuming reproduces it exactly
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("model", "best"))
    shutil.rmtree(checkpoint_path(resumed, 6))
    assert main(["train", "--resume", str(resumed)]) == 0
    assert logged(resumed) == logged(run)
    mine, _ = load_checkpoint(resumed)
    for key in ("x0", "x_t", "phase"):
        assert torch.equal(mine["ranks"][0]["process"][key], state["ranks"][0]["process"][key])


def test_puma_prepare_command(files, tmp_path, capsys):
    where = tmp_path / "shards"
    args = [
        "prepare",
        "--config",
        "tinygsm-125m",
        *tiny_overrides(files, tmp_path / "r"),
        f"task.options.prepared={where}",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "400 rows" in out and "problems/s" in out
    assert main(args) == 2
    assert "already prepared; pass --force" in capsys.readouterr().err
    assert main([*args[:3], "--force", *args[3:]]) == 0
    assert main(["prepare", "--config", "sort"]) == 2
    assert "nothing to prepare" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_125m_config_trains_and_resumes_on_a_gpu_in_bf16(files, tmp_path):
    """The CUDA path end to end at a tiny size: bf16 autocast, the sync-free PUMA pool,
    torch.compile, the sandboxed GSM8K evaluation, a checkpoint and a resume."""
    run = tmp_path / "run"
    gpu = ["training.device=cuda", "training.autocast=bf16", "training.compile=true"]
    args = ["train", "--config", "tinygsm-125m", *tiny_overrides(files, run), *gpu]
    assert main(args) == 0
    state, _ = load_checkpoint(run)
    assert "ring" in state["ranks"][0]["process"]  # the pool ran its sync-free path
    assert main(["train", "--resume", str(run), "training.steps=9"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 10))
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
