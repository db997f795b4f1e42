"""Any Hugging Face model as the network of `puma train` (puma_mdm.hf.adapter)."""

import json
from pathlib import Path

import pytest
import torch

from hf_models import BUILDERS, bert, build, edit_config, save, save_tokenizer
from puma_mdm import sample
from puma_mdm.cli import main
from puma_mdm.evaluate import nll_bound
from puma_mdm.hf.adapter import HFDenoiser, HFModelSpec, load_hf_model
from puma_mdm.kinds import load_model
from puma_mdm.losses import mdm_loss
from puma_mdm.masking import mask_count
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.sampling import POLICIES
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer

RUN = [
    "task.name=sort",
    "task.options.length=5",
    "task.options.n_train=2000",
    "task.options.n_eval=64",
    "training.batch_size=32",
    "training.lr=3e-3",
    "training.warmup_steps=10",
    "training.autocast=fp32",
    "eval.every=0",
    "eval.examples=64",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.log_every=10",
    "checkpoint.every=0",
]


def digits(n, length, vocab, avoid=None, seed=0):
    """Random ids in [0, vocab) without ``avoid``; the first half of each row is the prompt."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, vocab, (n, length), generator=gen)
    if avoid is not None:
        x0[x0 == avoid] = (avoid + 1) % vocab
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, : length // 2] = True
    return x0, prompt


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("mask_token", [10, 3], ids=["mask-outside", "mask-inside"])
def test_our_loss_on_an_hf_model_equals_the_computation_by_hand(tmp_path, arch, mask_token):
    V = 10  # task classes; the HF model has 11 (mask 10) or 12 with its mask at id 3
    path = build(arch, tmp_path, vocab=11 if mask_token == V else 12, mask=mask_token)
    hf, mask, _ = load_hf_model(path)
    assert mask == mask_token
    model = HFDenoiser(hf, HFModelSpec(vocab_size=V, seq_len=12, mask_token_id=mask)).eval()
    x0, prompt = digits(6, 12, V, avoid=mask_token)
    batch = mask_count(x0, prompt, V, torch.Generator().manual_seed(1))
    ours = mdm_loss(model(batch.x_t), batch)

    with torch.no_grad():
        ids = torch.where(batch.x_t == V, mask_token, batch.x_t)  # puma's mask → the model's
        logits = hf(input_ids=ids).logits[..., :V]
    keep = [c for c in range(V) if c != mask_token]  # [MASK] is never a prediction
    log_probs = logits[..., keep].log_softmax(-1)
    column = {c: i for i, c in enumerate(keep)}
    by_hand = 0.0
    for b in range(len(x0)):
        where = batch.masked[b].nonzero().flatten().tolist()
        nll = [-log_probs[b, i, column[int(x0[b, i])]] for i in where]
        by_hand += sum(nll) / len(where)
    assert float(ours.detach()) == pytest.approx(float(by_hand) / len(x0), rel=1e-5)


@pytest.mark.parametrize("strategy", ["standard", "progressive"])
def test_both_strategies_drive_the_toy_loss_down_on_an_hf_model(tmp_path, strategy):
    path = build("qwen2", tmp_path / "qwen2")  # a decoder, made bidirectional on load
    overrides = [*RUN, f"training.strategy={strategy}", "training.steps=250"]
    run = tmp_path / "run"
    cfg = load_config(None, [*overrides, f"model.hf_path={path}", f"logging.out_dir={run}"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, HFDenoiser)
    untrained = nll_bound(trainer.model, trainer.eval_set, trainer.task.mask_id, samples=4)
    trainer.train()
    trained = nll_bound(trainer.model, trainer.eval_set, trainer.task.mask_id, samples=4)
    assert trained < 0.8 * untrained, (untrained, trained)
    saved = load_model(run / "model")  # the HF files + puma_hf.json
    assert isinstance(saved, HFDenoiser)
    assert json.loads((run / "model" / "puma_hf.json").read_text())["vocab_size"] == 10
    for a, b in zip(saved.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_of_an_hf_run_is_bit_exact(tmp_path):
    path = build("bert", tmp_path / "bert")
    common = [*RUN, f"model.hf_path={path}", "checkpoint.every=2", "training.steps=4"]
    Trainer(load_config(None, [*common, f"logging.out_dir={tmp_path / 'straight'}"])).train()
    split = tmp_path / "split"
    Trainer(load_config(None, [*common, f"logging.out_dir={split}", "training.steps=2"])).train()
    resumed = Trainer(load_config(None, [*common, f"logging.out_dir={split}"]), resume=True)
    assert resumed.step == 2
    resumed.train()
    a = load_model(tmp_path / "straight" / "model")
    b = load_model(split / "model")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_samplers_run_on_an_hf_model(tmp_path, policy):
    torch.manual_seed(0)
    hf = bert(vocab=12, mask=3).eval()
    model = HFDenoiser(hf, HFModelSpec(vocab_size=10, seq_len=12, mask_token_id=3))
    x0, prompt = digits(5, 12, 10, avoid=3)
    x_t = x0.masked_fill(~prompt, 10)
    gen = torch.Generator().manual_seed(0)
    result = sample(model, x_t, 10, policy=policy, k=2, generator=gen, record_order=True)
    assert result.nfe == 3  # 6 positions to fill, 2 per step
    assert torch.equal(result.tokens[prompt], x0[prompt])
    filled = result.tokens[~prompt]
    assert filled.lt(10).all() and filled.ne(3).all()  # never the mask token, in either space
    assert set(result.order[~prompt].tolist()) == {0, 1, 2}
    parallel = sample(model, x_t, 10, policy=policy, threshold=0.5, generator=gen)
    assert parallel.tokens.lt(10).all() and 1 <= parallel.nfe <= 6


def run_error(tmp_path, capsys, *overrides):
    args = ["train", "--config", "sort", "--out-dir", str(tmp_path / "run"), *RUN]
    assert main([*args, "training.steps=1", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_directory_that_is_not_an_hf_model(tmp_path, capsys):
    err = run_error(tmp_path, capsys, f"model.hf_path={tmp_path / 'nowhere'}")
    assert "no such directory" in err
    (tmp_path / "empty").mkdir()
    err = run_error(tmp_path, capsys, f"model.hf_path={tmp_path / 'empty'}")
    assert "not a Hugging Face model directory: no config.json" in err
    Transformer(
        ModelConfig(vocab_size=10, seq_len=10, dim=16, n_layers=1, n_heads=2)
    ).save_pretrained(tmp_path / "ours")
    err = run_error(tmp_path, capsys, f"model.hf_path={tmp_path / 'ours'}")
    assert "holds a puma model" in err and "puma export --to hf" in err
    build("bert", tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    err = run_error(tmp_path, capsys, f"model.hf_path={tmp_path / 'noweights'}")
    assert "cannot load model" in err


def test_a_model_without_a_mask_token_says_how_to_add_one(tmp_path, capsys):
    path = build("bert", tmp_path / "bert", mask=None)
    err = run_error(tmp_path, capsys, f"model.hf_path={path}")
    assert "has no mask token" in err and "add_special_tokens" in err
    assert "resize_token_embeddings" in err and "model.hf_mask_token_id" in err
    # the explicit id is the way out
    overrides = [*RUN, f"model.hf_path={path}", "model.hf_mask_token_id=10", "training.steps=1"]
    Trainer(load_config(None, [*overrides, f"logging.out_dir={tmp_path / 'ok'}"])).train()


def test_a_mask_token_from_the_tokenizer_beside_the_model(tmp_path):
    from hf_models import byte_bpe

    tok = byte_bpe(["one two three"], specials=("<eos>", "<mask>"), vocab_size=260)
    path = save(bert(vocab=tok.get_vocab_size(), mask=None), tmp_path / "m")
    save_tokenizer(tok, path, eos_token="<eos>", mask_token="<mask>")
    _, mask, _ = load_hf_model(path)
    assert mask == tok.token_to_id("<mask>")


def test_vocabularies_that_do_not_match(tmp_path, capsys):
    from hf_models import byte_bpe

    small = build("bert", tmp_path / "small", vocab=8, mask=7)  # the sort task has 10 digits
    err = run_error(tmp_path, capsys, f"model.hf_path={small}")
    assert "has 10 tokens but model" in err and "predicts only 8 classes" in err

    tok = byte_bpe(["some text for a tokenizer"], vocab_size=270)
    big = build("bert", tmp_path / "big", vocab=20, mask=10)
    save_tokenizer(tok, big, eos_token="<eos>", mask_token="<mask>")
    err = run_error(tmp_path, capsys, f"model.hf_path={big}")
    assert f"has {tok.get_vocab_size()} tokens but model" in err and "embeds only 20" in err

    pair = build("bert", tmp_path / "pair", vocab=300, mask=10)
    save_tokenizer(tok, pair, eos_token="<eos>", mask_token="<mask>")
    err = run_error(tmp_path, capsys, f"model.hf_path={pair}")
    assert "uses mask token id 10 but tokenizer" in err and "not a pair" in err

    inside = build("bert", tmp_path / "inside", vocab=12, mask=3)  # digit 3 is a sort token
    err = run_error(tmp_path, capsys, f"model.hf_path={inside}")
    assert "token 3 is the model's mask token but the data uses it" in err

    short = build("bert", tmp_path / "short", max_position_embeddings=8)
    err = run_error(tmp_path, capsys, f"model.hf_path={short}")
    assert "at most 8 (max_position_embeddings)" in err


def custom_code_model(path: Path, ran: Path) -> Path:
    """A BERT whose config names model code shipped in its directory; importing that code
    creates the file ``ran``."""
    path = build("bert", path, num_hidden_layers=1)
    auto_map = {"AutoConfig": "configuration_tiny.TinyConfig"}
    auto_map["AutoModelForMaskedLM"] = "modeling_tiny.TinyForMaskedLM"
    edit_config(path, model_type="puma-tiny", architectures=["TinyForMaskedLM"], auto_map=auto_map)
    (path / "configuration_tiny.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).touch()\n"
        "from transformers import BertConfig\n\n\n"
        "class TinyConfig(BertConfig):\n    model_type = 'puma-tiny'\n"
    )
    (path / "modeling_tiny.py").write_text(
        "from transformers import BertForMaskedLM\n\nfrom .configuration_tiny import TinyConfig"
        "\n\n\nclass TinyForMaskedLM(BertForMaskedLM):\n    config_class = TinyConfig\n"
    )
    return path


def test_custom_code_needs_trust_remote_code(tmp_path, capsys):
    path = custom_code_model(tmp_path / "custom", tmp_path / "ran")
    err = run_error(tmp_path, capsys, f"model.hf_path={path}")
    assert "needs the code shipped in its directory" in err
    assert "model.trust_remote_code=true" in err
    model, mask, _ = load_hf_model(path, trust_remote_code=True)
    assert type(model).__name__ == "TinyForMaskedLM" and mask == 10

    assert (tmp_path / "ran").exists()
    edit_config(path, drop=("auto_map",), model_type="puma-unknown")
    err = run_error(tmp_path, capsys, f"model.hf_path={path}")
    assert "model_type 'puma-unknown' is unknown to transformers" in err


def test_a_model_directory_cannot_grant_itself_remote_code(tmp_path, capsys):
    ran = tmp_path / "ran"
    path = custom_code_model(tmp_path / "stranger", ran)
    record = HFModelSpec(vocab_size=10, seq_len=8, mask_token_id=10, trust_remote_code=True)
    (path / "puma_hf.json").write_text(json.dumps(record.to_dict()))
    (path / "task.json").write_text(json.dumps({"name": "sort", "options": {"length": 4}}))
    for command in (
        ["eval", "--n", "2"],
        ["sample"],
        ["solve", "." * 81],
        ["export", "--to", "hf", str(tmp_path / "out")],
    ):
        assert main([*command, "--model", str(path)]) == 2
        err = capsys.readouterr().err
        assert "needs the code shipped in its directory" in err and "--trust-remote-code" in err
    assert not ran.exists()  # nothing from the directory was imported
    assert isinstance(load_model(path, trust_remote_code=True), HFDenoiser)
    assert ran.exists()  # the user's own flag, and only it, runs the code


def test_prime_and_an_hf_model_do_not_mix(tmp_path, capsys):
    path = build("bert", tmp_path / "bert")
    err = run_error(tmp_path, capsys, f"model.hf_path={path}", "model.prime.digits=2")
    assert "model.prime and model.hf_path cannot be combined" in err
