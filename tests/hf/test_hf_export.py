"""`puma export --to hf`: our Transformer as a plain transformers model (puma_mdm.hf.export)."""

import json

import pytest
import torch

from hf_models import build, transformers
from puma_mdm import sample
from puma_mdm.cli import main
from puma_mdm.hf.adapter import HFDenoiser, HFModelSpec, load_hf_model
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.prime.model import PrimeTransformer


def ours(directory, **changes):
    """A small trained-looking model (norm gains and weights perturbed) saved to ``directory``."""
    torch.manual_seed(0)
    shape = {"vocab_size": 10, "seq_len": 16, "dim": 32, "n_layers": 2, "n_heads": 4}
    cfg = ModelConfig(**(shape | changes))
    model = (PrimeTransformer if cfg.prime_digits else Transformer)(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    (directory / "task.json").write_text(json.dumps({"name": "sort", "options": {}}))
    return model.eval()


@pytest.mark.parametrize(
    "shape",
    [{}, {"n_kv_heads": 2, "tie_head": True, "rope_base": 500.0}, {"mlp_hidden": 48}],
    ids=["plain", "gqa-tied", "mlp"],
)
def test_plain_transformers_loads_the_export_with_our_logits(tmp_path, capsys, shape):
    model = ours(tmp_path / "ours", **shape)
    out = tmp_path / "hf"
    assert main(["export", "--model", str(tmp_path / "ours"), "--to", "hf", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["architecture"] == "EuroBertForMaskedLM" and summary["max_logit_gap"] < 1e-5
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "task.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".py"))]

    exported = transformers.AutoModelForMaskedLM.from_pretrained(out)  # the documented call
    assert exported.config.mask_token_id == 10
    ids = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = exported(input_ids=ids).logits
        assert logits.shape == (4, 16, 11)
        torch.testing.assert_close(logits[..., :10], model(ids), atol=1e-5, rtol=1e-5)
        assert logits.argmax(-1).lt(10).all()  # the mask token is never predicted


def test_the_export_trains_and_samples_through_the_adapter(tmp_path):
    model = ours(tmp_path / "ours")
    main(["export", "--model", str(tmp_path / "ours"), "--to", "hf", str(tmp_path / "hf")])
    hf, mask, n_classes = load_hf_model(tmp_path / "hf")
    assert (mask, n_classes) == (10, 11)
    wrapped = HFDenoiser(hf, HFModelSpec(vocab_size=10, seq_len=16, mask_token_id=mask)).eval()
    x_t = torch.full((3, 16), 10)
    x_t[:, :8] = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x_t), model(x_t), atol=1e-5, rtol=1e-5)
    a = sample(model, x_t, 10, policy="margin", k=1)
    b = sample(wrapped, x_t, 10, policy="margin", k=1)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe == 8


def test_a_model_trained_from_an_hf_directory_exports_as_itself(tmp_path):
    path = build("bert", tmp_path / "bert")
    hf, mask, _ = load_hf_model(path)
    HFDenoiser(hf, HFModelSpec(10, 16, mask)).save_pretrained(tmp_path / "run")
    assert (
        main(["export", "--model", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 0
    )
    again = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    for p, q in zip(hf.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "shape, reason",
    [
        ({"position_tables": {"row": [i // 4 for i in range(16)]}}, "learned position tables"),
        ({"rope": False}, "no rotary position embedding"),
        ({"causal": True}, "causal attention"),
        ({"prime_digits": 2}, "MDM-Prime digits"),
    ],
)
def test_what_cannot_be_exported_is_refused(tmp_path, capsys, shape, reason):
    ours(tmp_path / "ours", **shape)
    out = tmp_path / "hf"
    assert main(["export", "--model", str(tmp_path / "ours"), "--to", "hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert reason in err and "EuroBERT" in err and err.count("\n") == 1
    assert not out.exists()
