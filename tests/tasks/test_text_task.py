import json
import math

import pytest
import torch

from puma_mdm.errors import ConfigError
from puma_mdm.evaluate import likelihood_report
from puma_mdm.tasks import build_task
from puma_mdm.tasks.text import CorpusError, pack, read_documents


def write_corpus(path, n_docs=60, words=30):
    """Paragraphs ``doc i: w i.0 w i.1 …`` separated by blank lines."""
    docs = [f"doc {i}: " + " ".join(f"w{i}.{j}" for j in range(words)) for i in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n")
    return docs


def test_paragraphs_and_jsonl_records_are_documents(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first line\nsecond line\n\n\n  \nnext paragraph\n")
    assert list(read_documents(txt)) == ["first line\nsecond line", "next paragraph"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n"bare string"\n')
    assert list(read_documents(jsonl)) == ["one", "two", "bare string"]
    (tmp_path / "ignored.csv").write_text("x")
    every = ["first line\nsecond line", "next paragraph", "one", "two", "bare string"]
    assert list(read_documents(tmp_path)) == every
    other = tmp_path / "c.jsonl"
    other.write_text('{"body": "x"}\n')
    assert list(read_documents(other, text_field="body")) == ["x"]


def test_pack_separates_documents_with_eos_and_drops_the_tail():
    rows = pack([[1, 2, 3], [4], [5, 6, 7, 8, 9]], seq_len=4, eos_id=0)
    assert rows.tolist() == [[1, 2, 3, 0], [4, 0, 5, 6], [7, 8, 9, 0]]
    assert pack([[1]], seq_len=4, eos_id=0).shape == (0, 4)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_split_by_document_and_packing(tmp_path, tokenizer):
    docs = write_corpus(tmp_path / "c.txt")
    options = {"seq_len": 64, "heldout_every": 10, "tokenizer": tokenizer, "bpe_vocab": 300}
    task = build_task("text", {"data": str(tmp_path / "c.txt"), **options})
    train, held = task.train_examples(), task.eval_examples()
    assert train.x0.shape[1] == held.x0.shape[1] == 64 and not train.prompt_mask.any()
    held_text = task.tokenizer.decode(held.x0.flatten().tolist())
    train_text = task.tokenizer.decode(train.x0.flatten().tolist())
    assert "doc 10:" in held_text and "doc 10:" not in train_text  # every 10th document
    assert "doc 11:" in train_text and "doc 11:" not in held_text
    stream = []  # the training documents, each followed by <eos>, cut into rows of 64
    for i, doc in enumerate(docs):
        if i % 10:
            stream += [*task.tokenizer.encode(doc), task.tokenizer.eos_id]
    assert len(train) == len(stream) // 64
    assert train.x0.flatten().tolist() == stream[: len(train) * 64]
    if tokenizer == "bpe":  # learnt from training documents only
        assert set(task.tokenizer_texts()) == {d for i, d in enumerate(docs) if i % 10}


def test_bad_corpora_get_clear_errors(tmp_path):
    def train(path, **options):
        return build_task("text", {"data": str(path), **options}).train_examples()

    (tmp_path / "empty.txt").write_text("\n   \n\n")
    with pytest.raises(CorpusError, match="the corpus is empty"):
        train(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"line 1 is not valid UTF-8 \(byte 0xe9 at column 4\)"):
        train(tmp_path / "latin1.txt")
    (tmp_path / "short.txt").write_text("just a few words\n")
    with pytest.raises(CorpusError, match="shorter than one sequence of 256 tokens"):
        train(tmp_path / "short.txt")
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(CorpusError, match="line 1 has no string field 'text'"):
        train(tmp_path / "bad.jsonl")
    (tmp_path / "doc.pdf").write_text("x")
    with pytest.raises(CorpusError, match=r"must be a \.txt or \.jsonl file"):
        train(tmp_path / "doc.pdf")
    with pytest.raises(CorpusError, match="no such corpus"):
        train(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="no corpus given"):
        build_task("text").train_examples()


class Uniform(torch.nn.Module):
    """Equal logits over ``vocab`` classes: its NLL is log(vocab) at every position."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # evaluation asks for a device

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


def test_likelihood_report_of_a_uniform_model(tmp_path):
    write_corpus(tmp_path / "c.txt")
    task = build_task("text", {"data": str(tmp_path / "c.txt"), "seq_len": 32})
    examples = task.eval_examples()
    model, sizes = Uniform(task.vocab_size), task.tokenizer.token_bytes()
    report = likelihood_report(model, examples, task.mask_id, samples=6, token_bytes=sizes)
    # the continuous-time bound weighs masked counts by 1/(t·L): unbiased, not exact per draw
    assert report["nll"] == pytest.approx(math.log(task.vocab_size), rel=0.05)
    assert report["perplexity"] == pytest.approx(task.vocab_size, rel=0.3)
    assert report["bits_per_byte"] == pytest.approx(report["nll"] / math.log(2))  # 1 byte/token
    assert report["nll_stderr"] > 0 and report["tokens"] == examples.x0.numel()
    json.dumps(report)
