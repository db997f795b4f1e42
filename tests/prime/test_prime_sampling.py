"""Digit-by-digit sampling: valid ids, digit confidences, idle steps and cached outputs."""

import itertools

import pytest
import torch

from puma_mdm import sample
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.prime.encoding import PrimeCodec
from puma_mdm.prime.model import PrimeTransformer
from puma_mdm.prime.sampling import sample_digits, sample_tokens
from puma_mdm.sampling import POLICIES


def prime_model(classes: int, digits: int, length: int = 10, seed: int = 0) -> PrimeTransformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=classes, seq_len=length, dim=24, n_layers=1, n_heads=2, prime_digits=digits
    )
    model = PrimeTransformer(cfg)
    for p in model.parameters():  # confident, varied predictions
        p.data.normal_(0, 1.0)
    return model.eval()


class Counting(torch.nn.Module):
    """A deterministic fake Prime model that records every call."""

    kind = "prime"

    def __init__(self, codec: PrimeCodec, length: int) -> None:
        super().__init__()
        self.codec = codec
        self.logits = torch.randn(length, codec.classes, generator=torch.Generator().manual_seed(3))
        self.inputs: list[torch.Tensor] = []

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self.inputs.append(y.clone())
        return self.codec.carry_over(self.logits.expand(len(y), -1, -1), y)


MODES = [
    {"k": 1},
    {"k": 3},
    {"steps": 4},
    {"threshold": 0.6},
    {"time_steps": 7},
]


@pytest.mark.parametrize("classes, digits", [(5, 2), (10, 4), (11, 3), (7, 1)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoded_ids_are_always_real_tokens_and_prompts_stay(classes, digits, mode, temperature):
    model = prime_model(classes, digits)
    x = torch.randint(0, classes, (6, 10))
    prompt = torch.rand(6, 10) < 0.3
    x_t = x.masked_fill(~prompt, classes)
    gen = torch.Generator().manual_seed(0)
    for policy in sorted(POLICIES):
        out = sample_tokens(
            model,
            x_t,
            classes,
            model.codec,
            policy=policy,
            temperature=temperature,
            generator=gen,
            **mode,
        )
        assert ((out.tokens >= 0) & (out.tokens < classes)).all()
        assert torch.equal(out.tokens[prompt], x[prompt])
        assert torch.equal(model.codec.decode(out.digits), out.tokens)


def test_k_digits_per_step_and_the_decoding_order():
    codec = PrimeCodec(10, 2)
    model = Counting(codec, 6)
    x_t = torch.full((3, 6), 10)
    x_t[:, 0] = 4  # one given token
    out = sample(model, x_t, 10, "top_prob", k=2, record_order=True)
    assert out.nfe == len(model.inputs) == 5  # ⌈5 tokens · 2 digits / 2⌉
    assert (out.idle == 0).all() and torch.equal(out.row_nfe, torch.full((3,), 5))
    assert (out.order[:, 0] == -1).all() and (out.order[:, 1:] >= 0).all()
    # a token is finished at the step its last digit was revealed: never more than 2 per step
    for step in range(out.nfe):
        assert ((out.order == step).sum(1) <= 2).all()


def test_confidence_is_the_digit_marginal_not_the_token_probability():
    """Token 0: p = (.5, .5, 0, 0) — its leading digit (base 2) is certain though the token is
    not. Token 1: p = (.7, .1, .1, .1) — the likelier token, but each digit only .8 sure."""
    codec = PrimeCodec(4, 2)
    model = Counting(codec, 2)
    model.logits = torch.tensor([[0.5, 0.5, 1e-9, 1e-9], [0.7, 0.1, 0.1, 0.1]]).log()
    y = torch.full((1, 2, 2), codec.mask_digit)
    sample_digits(model, y, codec, "top_prob", k=1)
    after_first_step = model.inputs[1][0]
    m = codec.mask_digit
    assert after_first_step.tolist() == [[0, m], [m, m]]
    # the token sampler, on the same distribution, decodes token 1 first
    plain = sample(
        lambda ids: model.logits.expand(len(ids), -1, -1),
        torch.full((1, 2), 4),
        4,
        "top_prob",
        k=1,
        record_order=True,
    )
    assert plain.order.tolist() == [[1, 0]]


@pytest.mark.parametrize("digits", [1, 2, 4])
def test_idle_steps_call_nothing_and_match_their_expected_fraction(digits):
    codec = PrimeCodec(16, digits)
    length, T, B = 8, 12, 300
    model = Counting(codec, length)
    y = torch.full((B, length, digits), codec.mask_digit)
    gen = torch.Generator().manual_seed(0)
    out = sample_digits(model, y, codec, "random", time_steps=T, generator=gen)
    assert (out.horizon == T).all()
    # every call served a step that revealed something, and no row was called twice in a row
    # without a change: each row's calls = its non-idle steps
    assert torch.equal(out.row_nfe, T - out.idle)
    assert sum(len(i) for i in model.inputs) == int(out.row_nfe.sum())
    expected = (1 - 1 / T) ** (length * digits)  # a step is idle if no digit picks it
    assert out.idle_fraction == pytest.approx(expected, abs=0.03)
    assert (out.digits != codec.mask_digit).all()


def test_a_cached_output_is_reused_only_while_the_state_is_unchanged():
    codec = PrimeCodec(10, 2)
    for seed in range(20):
        model = Counting(codec, 5)
        y = torch.full((1, 5, 2), codec.mask_digit)
        gen = torch.Generator().manual_seed(seed)
        out = sample_digits(model, y, codec, "margin", time_steps=15, generator=gen)
        states = model.inputs
        assert len(states) == int(out.row_nfe[0]) == 15 - int(out.idle[0])
        assert not any(torch.equal(a, b) for a, b in itertools.pairwise(states))
        masks = [int((s == codec.mask_digit).sum()) for s in states]
        assert masks[0] == 10 and masks == sorted(masks, reverse=True)


def test_more_digits_make_idle_steps_rarer():
    fractions = []
    for digits in (1, 2, 4):
        codec = PrimeCodec(16, digits)
        model = Counting(codec, 8)
        y = torch.full((200, 8, digits), codec.mask_digit)
        gen = torch.Generator().manual_seed(1)
        fractions.append(
            sample_digits(model, y, codec, "random", time_steps=8, generator=gen).idle_fraction
        )
    assert fractions[0] > fractions[1] > fractions[2]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_one_digit_decodes_like_the_token_sampler(policy):
    cfg = dict(vocab_size=6, seq_len=9, dim=16, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**cfg)).eval()
    torch.manual_seed(0)
    prime = PrimeTransformer(ModelConfig(**cfg, prime_digits=1)).eval()
    x_t = torch.full((4, 9), 6)
    x_t[:, :2] = torch.randint(0, 6, (4, 2))
    a = sample(
        plain, x_t, 6, policy, k=2, generator=torch.Generator().manual_seed(5), record_order=True
    )
    b = sample(
        prime, x_t, 6, policy, k=2, generator=torch.Generator().manual_seed(5), record_order=True
    )
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.order, b.order) and a.nfe == b.nfe


def test_bad_arguments_are_named():
    codec = PrimeCodec(10, 2)
    model = Counting(codec, 4)
    y = torch.full((1, 4, 2), codec.mask_digit)
    with pytest.raises(ValueError, match="time_steps must be"):
        sample_digits(model, y, codec, time_steps=0)
    with pytest.raises(ValueError, match="drop k/steps/threshold"):
        sample_digits(model, y, codec, k=1, time_steps=4)
    with pytest.raises(ValueError, match=r"y must be \(batch, length, 2\)"):
        sample_digits(model, y[..., 0], codec)
    with pytest.raises(ValueError, match="mask id 3 is one of the model's 10 classes"):
        sample_tokens(model, torch.zeros(1, 4, dtype=torch.long), 3, codec)
