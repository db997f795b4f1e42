import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from puma_mdm.losses import mdm_loss, normalize_loss
from puma_mdm.masking import Batch, ExampleStream, mask_continuous, mask_count
from puma_mdm.model import ModelConfig, Transformer

MASK = 9


def data(B=64, L=20, prompt_len=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, MASK, (B, L), generator=gen)
    prompt = torch.zeros(B, L, dtype=torch.bool)
    prompt[:, :prompt_len] = True
    return x0, prompt


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), prompt_len=st.integers(0, 19))
def test_count_form_masks_n_free_positions_with_weight_one_over_n(seed, prompt_len):
    x0, prompt = data(prompt_len=prompt_len, seed=seed)
    batch = mask_count(x0, prompt, MASK, torch.Generator().manual_seed(seed))
    n = batch.masked.sum(1)
    assert (n >= 1).all() and (n <= 20 - prompt_len).all()
    assert not (batch.masked & prompt).any()
    torch.testing.assert_close(batch.weights, 1.0 / n.float())
    assert torch.equal(batch.x_t == MASK, batch.masked)
    assert torch.equal(batch.x_t[~batch.masked], x0[~batch.masked])


def test_count_form_draws_every_count_uniformly():
    x0, prompt = data(B=20000, L=6, prompt_len=2)
    n = mask_count(x0, prompt, MASK, torch.Generator().manual_seed(1)).masked.sum(1)
    freq = torch.bincount(n, minlength=5)[1:].float() / len(n)
    torch.testing.assert_close(freq, torch.full((4,), 0.25), atol=0.015, rtol=0)


def test_continuous_form_is_antithetic_and_weights_one_over_t_leff():
    x0, prompt = data(B=8, L=400, prompt_len=100)
    batch = mask_continuous(x0, prompt, MASK, torch.Generator().manual_seed(3))
    t = 1.0 / (batch.weights * 300)
    gaps = torch.diff(t.sort().values)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 8), atol=1e-5, rtol=0)
    assert not (batch.masked & prompt).any()
    frac = batch.masked.sum(1) / 300
    assert (frac - t).abs().max() < 0.12  # each row masks ≈ t of its free positions


def test_both_forms_estimate_the_same_bound_on_a_fixed_model():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=MASK, seq_len=10, dim=32, n_layers=1, n_heads=2))
    x0, prompt = data(B=256, L=10, prompt_len=3)
    gen = torch.Generator().manual_seed(0)
    count, cont = [], []
    with torch.no_grad():
        for _ in range(40):
            for fn, out in ((mask_count, count), (mask_continuous, cont)):
                batch = fn(x0, prompt, MASK, gen)
                out.append(float(mdm_loss(model(batch.x_t), batch)))
    c, k = torch.tensor(count), torch.tensor(cont)
    stderr = math.sqrt(c.var() / len(c) + k.var() / len(k))
    assert abs(c.mean() - k.mean()) < 4 * stderr + 1e-3


def test_loss_ignores_prompt_and_unmasked_positions():
    model = Transformer(ModelConfig(vocab_size=MASK, seq_len=20, dim=32, n_layers=1, n_heads=2))
    x0, prompt = data(B=4)
    batch = mask_count(x0, prompt, MASK, torch.Generator().manual_seed(0))
    logits = model(batch.x_t)
    poisoned = logits.clone()
    poisoned[~batch.masked] = 1e4 * torch.randn_like(poisoned[~batch.masked])
    torch.testing.assert_close(mdm_loss(logits, batch), mdm_loss(poisoned, batch))


def test_token_normalisation_is_the_mean_over_masked_tokens_and_splits_exactly():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 5, (6, 12), generator=g)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    batch = normalize_loss(mask_count(x0, prompt, 5, g), "token")
    logits = torch.randn(6, 12, 5, generator=g)
    m = batch.masked
    plain = torch.nn.functional.cross_entropy(logits[m], x0[m])
    torch.testing.assert_close(mdm_loss(logits, batch), plain)
    # micro-batches of the normalised batch average back to the full-batch loss
    fields = Batch.__dataclass_fields__
    halves = [
        mdm_loss(logits[rows], Batch(*(getattr(batch, f)[rows] for f in fields)))
        for rows in (slice(0, 3), slice(3, 6))
    ]
    torch.testing.assert_close(sum(halves) / 2, plain)
    assert normalize_loss(batch, "sequence") is batch
    with pytest.raises(ValueError, match="loss normalisation"):
        normalize_loss(batch, "row")


def test_stream_rejects_prompt_covering_whole_sequence():
    x0, prompt = data(B=3)
    prompt[1] = True
    with pytest.raises(ValueError, match="example 1: the prompt mask covers the whole sequence"):
        ExampleStream(x0, prompt)


def test_stream_resumes_exactly_across_epochs():
    x0, prompt = data(B=10)
    a = ExampleStream(x0, prompt, seed=5)
    a.take(7)
    b = ExampleStream(x0, prompt, seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert torch.equal(a.take(6)[0], b.take(6)[0])
    assert a.consumed == 31


def test_mask_id_inside_the_data_vocabulary_is_refused():
    from puma_mdm.masking import ProgressivePool, RandomMasking

    x0, prompt = data()
    stream = ExampleStream(x0, prompt)
    for make in (RandomMasking, ProgressivePool):
        with pytest.raises(ValueError, match="mask id 3 is inside the data's vocabulary"):
            make(stream, 4, mask_id=3)
