"""Digit-wise forward processes: random masking and the PUMA pool over sub-tokens."""

import pytest
import torch

from puma_mdm.masking import ProgressivePool, RandomMasking
from puma_mdm.prime.encoding import PrimeCodec
from puma_mdm.prime.process import DigitProcess, digit_stream

C, L, P, B = 10, 12, 3, 16


def examples(n: int = 200):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, C, (n, L), generator=gen)
    prompt = torch.zeros(n, L, dtype=torch.bool)
    prompt[:, :P] = True
    return x0, prompt


@pytest.mark.parametrize("digits", [1, 2, 4])
@pytest.mark.parametrize("form", ["count", "continuous"])
def test_random_digit_masking_batches(digits, form):
    codec = PrimeCodec(C, digits)
    x0, prompt = examples()
    stream = digit_stream(x0, prompt, codec)
    process = DigitProcess(RandomMasking(stream, B, codec.mask_digit, form=form), codec)
    batch = process.batch(0)
    assert batch.x_t.shape == batch.masked.shape == (B, L, digits)
    assert batch.x0.shape == batch.prompt_mask.shape == (B, L)
    assert ((batch.x0 >= 0) & (batch.x0 < C)).all() and torch.equal(batch.prompt_mask, prompt[:B])
    code = codec.encode(batch.x0)
    assert torch.equal(batch.x_t, code.masked_fill(batch.masked, codec.mask_digit))
    assert not batch.masked[batch.prompt_mask].any()
    if form == "count":  # ℓ/n per row: the per-token bound of L_eff·ℓ digits
        n = batch.masked.flatten(1).sum(1)
        assert torch.allclose(batch.weights, digits / n.float())
    # partly masked tokens exist as soon as a token has two digits
    per_token = batch.masked.sum(-1)
    if digits > 1 and form == "count":
        assert ((per_token > 0) & (per_token < digits)).any()


def test_puma_over_digits_reveals_the_most_confident_digits_with_the_truth():
    codec = PrimeCodec(C, 2)
    x0, prompt = examples()
    pool = ProgressivePool(digit_stream(x0, prompt, codec), B, codec.mask_digit, [[4, 0]])
    process = DigitProcess(pool, codec)
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for step in range(6):
        batch = process.batch(step)
        before = batch.masked.clone()
        assert torch.allclose(batch.weights, 2 / before.flatten(1).sum(1).float())
        logits = codec.carry_over(3 * torch.randn(B, L, C, generator=gen), batch.x_t)
        confidence = codec.digit_log_marginals(logits.log_softmax(-1)).amax(-1).exp()
        rows_before = pool.x0.clone()
        process.update(logits)
        after = process.batch(step + 1)
        kept = (pool.x0 == rows_before).all(1)  # rows that did not retire
        assert kept.any()
        for r in kept.nonzero().flatten().tolist():
            revealed = before[r] & ~after.masked[r]
            assert torch.equal(after.x_t[r][revealed], codec.encode(after.x0[r])[revealed])
            m = int(revealed.sum())
            if m:  # exactly the m most confident masked digits
                lowest_revealed = confidence[r][revealed].min()
                highest_left = confidence[r][before[r] & ~revealed].max()
                assert lowest_revealed >= highest_left
                checked += 1
    assert checked >= 20


def test_digit_pool_state_round_trips():
    codec = PrimeCodec(C, 2)
    x0, prompt = examples()

    def make():
        pool = ProgressivePool(digit_stream(x0, prompt, codec, seed=3), B, codec.mask_digit)
        return DigitProcess(pool, codec)

    a = make()
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        batch = a.batch(step)
        a.update(codec.carry_over(torch.randn(B, L, C, generator=gen), batch.x_t))
    b = make()
    b.load_state_dict(a.state_dict())
    logits = torch.randn(B, L, C, generator=gen)
    for process in (a, b):
        batch = process.batch(3)
        process.update(codec.carry_over(logits, batch.x_t))
    assert torch.equal(a.batch(4).x_t, b.batch(4).x_t)
