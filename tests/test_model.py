import json

import pytest
import torch

from puma_mdm.errors import ConfigError, ModelLoadError
from puma_mdm.model import ModelConfig, Transformer


def small(**kw) -> Transformer:
    cfg = dict(vocab_size=7, seq_len=12, dim=32, n_layers=2, n_heads=4)
    cfg.update(kw)
    return Transformer(ModelConfig(**cfg))


def test_output_shape_and_mask_row_in_embedding():
    model = small(n_kv_heads=2)
    ids = torch.randint(0, 8, (3, 12))
    assert model(ids).shape == (3, 12, 7)
    assert model.embed.weight.shape[0] == 8 and model.mask_id == 7


def test_bidirectional_by_default_and_causal_when_asked():
    ids = torch.randint(0, 7, (2, 12))
    later = ids.clone()
    later[:, -1] = (later[:, -1] + 1) % 7
    bi, causal = small(), small(causal=True)
    assert not torch.allclose(bi(ids)[:, 0], bi(later)[:, 0])
    torch.testing.assert_close(causal(ids)[:, :-1], causal(later)[:, :-1])


def test_custom_attention_mask_blocks_information():
    model = small()
    allowed = torch.ones(12, 12, dtype=torch.bool)
    allowed[:6, 6:] = False  # the first half cannot see the second
    ids = torch.randint(0, 7, (2, 12))
    other = ids.clone()
    other[:, 6:] = (other[:, 6:] + 3) % 7
    torch.testing.assert_close(model(ids, allowed)[:, :6], model(other, allowed)[:, :6])


def test_tied_head_shares_embedding():
    model = small(tie_head=True)
    assert model.head is None
    n_untied = small().num_parameters()
    assert model.num_parameters() == n_untied - 7 * 32


@pytest.mark.parametrize("kw", [{}, {"tie_head": True}, {"position_tables": {"r": [0, 1] * 6}}])
def test_save_and_load_round_trip(tmp_path, kw):
    model = small(**kw)
    model.save_pretrained(tmp_path)
    loaded = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(0, 8, (2, 12))
    assert torch.equal(model(ids), loaded(ids))
    assert loaded.cfg == model.cfg


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        Transformer.from_pretrained(tmp_path)
    small().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is corrupt \(its sha256"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "manifest.json").unlink()  # a directory from before manifests
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        Transformer.from_pretrained(tmp_path)
    other = tmp_path / "other"
    small(dim=64).save_pretrained(other)
    (tmp_path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match=r"weights do not match config\.json"):
        Transformer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"dim": 30}, "not divisible by n_heads"),
        ({"n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"position_tables": {"row": [0, 1]}}, "has 2 entries"),
        ({"n_layers": 0}, "n_layers must be ≥ 1"),
    ],
)
def test_bad_shapes_are_rejected(kw, message):
    with pytest.raises(ConfigError, match=message):
        small(**kw)


def test_longer_input_than_seq_len_is_rejected():
    with pytest.raises(ValueError, match="exceeds the model's seq_len"):
        small()(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize("mask", ["none", "causal", "custom"])
def test_explicit_low_precision_attention_matches_sdpa(mask):
    """The explicit path taken when training in bf16 on a CPU computes the same attention
    (values and gradients) as F.scaled_dot_product_attention in fp32, to bf16 precision."""
    import torch.nn.functional as F

    from puma_mdm.model import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    allowed = torch.rand(10, 10) < 0.6
    allowed.fill_diagonal_(True)
    attn_mask = allowed if mask == "custom" else None
    causal = mask == "causal"
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=attn_mask, is_causal=causal)
    ref.square().sum().backward()
    low_in = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out = attend(*low_in, attn_mask, causal, 0.0)
    out.float().square().sum().backward()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
    for a, b in zip(low_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"n_kv_heads": 2, "tie_head": True, "mlp_hidden": 40},
        {"position_tables": {"row": [0, 1, 2, 0, 1, 2, 0, 1]}, "rope": False},
    ],
)
def test_the_parameter_count_from_the_config_is_exact(shape):
    cfg = ModelConfig(vocab_size=11, seq_len=8, dim=32, n_layers=2, n_heads=4, **shape)
    assert cfg.num_parameters() == Transformer(cfg).num_parameters()


def test_a_config_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    model = tmp_path / "model"
    Transformer(
        ModelConfig(vocab_size=11, seq_len=8, dim=32, n_layers=1, n_heads=4)
    ).save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "n_layers": 1_000_000_000}))
    (model / "manifest.json").unlink()
    with pytest.raises(
        ModelLoadError,
        match=r"13,376,000,\d{3},\d{3} parameters \(\d+\.\d GiB in float32\) cannot fit",
    ):
        Transformer.from_pretrained(model)
