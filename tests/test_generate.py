import json
import math
from types import SimpleNamespace

import pytest
import torch

from puma_mdm.cli import main
from puma_mdm.generate import SampleError, generate
from puma_mdm.pretrained import load_trained
from puma_mdm.tasks import build_task
from puma_mdm.tasks.tokenized import MASK_GLYPH
from puma_mdm.tokenizers import TOKENIZER_FILE


class EndsEarly(torch.nn.Module):
    """Predicts 'x' at positions < ``end`` and <eos> from ``end`` on, surer of the <eos>."""

    def __init__(self, vocab: int, eos: int, end: int, seq_len: int) -> None:
        super().__init__()
        self.vocab, self.eos, self.end = vocab, eos, end
        self.cfg = SimpleNamespace(seq_len=seq_len)

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[:, : self.end, ord("x")] = 3.0
        logits[:, self.end :, self.eos] = 10.0
        return logits


def test_generation_fills_in_step_by_step_and_stops_at_eos():
    task = build_task("text", {"data": "unused.txt"})
    model = EndsEarly(task.vocab_size, task.tokenizer.eos_id, end=5, seq_len=10)
    (g,) = generate(model, task, prompt="ab", length=8, k=1, show_steps=True)
    assert g.completion == "xxx" and g.text == "abxxx" and g.nfe == 8
    assert [s.count(MASK_GLYPH) for s in g.steps] == list(range(7, -1, -1))
    assert g.steps[4] == "ab" + MASK_GLYPH * 3  # the five <eos> came first, shown as nothing
    assert g.steps[-1] == "abxxx"
    (fast,) = generate(model, task, prompt="ab", length=8, k=4)
    assert fast.nfe == 2 and fast.completion == "xxx" and fast.steps == []


def test_prompt_and_length_must_fit_the_model():
    task = build_task("text", {"data": "unused.txt"})
    model = EndsEarly(task.vocab_size, task.tokenizer.eos_id, end=5, seq_len=10)
    with pytest.raises(SampleError, match="the prompt is 12 tokens, but the model's sequences"):
        generate(model, task, prompt="twelve bytes")
    with pytest.raises(SampleError, match=r"--length 9 after the 2-token prompt makes 11 tokens"):
        generate(model, task, prompt="ab", length=9)
    with pytest.raises(SampleError, match="unknown policy"):
        generate(model, task, prompt="ab", policy="best")
    math_task = build_task("math", {"tokenizer": "byte"})
    with pytest.raises(SampleError, match="give --prompt"):
        generate(model, math_task)


TINY = [
    "model.dim=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "training.steps=6",
    "training.batch_size=8",
    "training.autocast=fp32",
    "training.warmup_steps=2",
    "eval.every=0",
    "eval.examples=8",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.every=0",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"Verse {i}: and it was good, number {i}." for i in range(400)))
    args = ["train", "--config", "text", "--data", str(corpus), "--out-dir", str(root / "run")]
    options = [f"task.options.{o}" for o in ("tokenizer=bpe", "bpe_vocab=300", "seq_len=48")]
    assert main([*args, *TINY, *options]) == 0
    return root


def test_text_model_keeps_its_tokenizer_and_reports_likelihood(text_run, capsys):
    model_dir = text_run / "run" / "model"
    assert (model_dir / TOKENIZER_FILE).is_file()
    model, task = load_trained(model_dir)
    assert task.tokenizer.vocab_size == model.cfg.vocab_size > 258  # bytes, specials, merges
    options = {"data": str(text_run / "corpus.txt"), "tokenizer": "bpe", "bpe_vocab": 300}
    assert task.tokenizer.to_json() == build_task("text", options).tokenizer.to_json()
    out = text_run / "eval.json"
    capsys.readouterr()
    args = ["--model", str(text_run / "run"), "--samples", "2", "--out", str(out)]
    assert main(["eval", *args]) == 0
    assert "perplexity" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["samples"] == 2 and report["perplexity"] > 1
    assert report["bits_per_byte"] < report["nll"]  # BPE tokens span several bytes


def test_sample_command(text_run, capsys):
    run = str(text_run / "run")
    args = ["--prompt", "Verse", "--length", "6", "--show-steps", "--k", "2"]
    assert main(["sample", "--model", run, *args]) == 0
    out = capsys.readouterr().out
    assert "--- step 3/3 ---" in out and "--- result ---" in out
    assert out.rstrip().splitlines()[-1].startswith("Verse")
    code = main(["sample", "--model", run, "--prompt", "Verse " * 40])
    err = capsys.readouterr().err
    assert code == 2 and "shorten the prompt" in err and err.count("\n") == 1
    assert main(["sample", "--model", run, "--length", "100"]) == 2
    assert "more than the model's sequence length 48" in capsys.readouterr().err


def test_sample_refuses_a_sudoku_model(capsys):
    assert main(["sample", "--model", "src/puma_mdm/assets/sudoku"]) == 2
    assert "puma solve" in capsys.readouterr().err


def test_prime_models_train_and_evaluate_on_text(text_run, capsys):
    """MDM-Prime on a corpus: the trainer's evaluation and `puma eval` report the
    digit-marginal bound and idle steps, and no accuracy."""
    run = text_run / "prime"
    args = ["train", "--config", "text", "--data", str(text_run / "corpus.txt")]
    args += ["--out-dir", str(run), *TINY, "model.prime.digits=2", "task.options.seq_len=48"]
    assert main(args) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "eval/accuracy" not in last and last["eval/nll_joint"] > 0
    assert last["eval/perplexity"] == pytest.approx(math.exp(last["eval/nll"]))
    out = text_run / "prime-eval.json"
    eval_args = ["--policies", "random", "--time-steps", "8", "--out", str(out)]
    assert main(["eval", "--model", str(run), *eval_args]) == 0
    report = json.loads(out.read_text())["prime"]
    assert report["digits"] == 2 and report["nll"] > 0
    (row,) = report["ancestral"]
    assert row["accuracy"] is None and 0 <= row["idle_fraction"] <= 1
    assert "—" in capsys.readouterr().out
