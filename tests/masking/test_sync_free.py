"""The PUMA pool's sync-free path (the default on CUDA; forced here on the CPU) and, on a GPU,
that neither the pool's update nor the samplers' loop synchronises host and device."""

import pytest
import torch
from test_progressive import MASK, B, L, P, V, crafted_logits, ids, stage_bounds, unmasked_count

from puma_mdm import sample
from puma_mdm.masking import ExampleStream, ProgressivePool
from puma_mdm.model import ModelConfig, Transformer


def make_pool(sync_free=True, mode="fixed", K=4, device="cpu", n=200):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (n, L), generator=gen)
    for digit in range(3):  # a per-example id written in base V into the prompt
        x0[:, digit] = torch.arange(n) // V**digit % V
    prompt = torch.zeros(n, L, dtype=torch.bool)
    prompt[:, :P] = True
    stream = ExampleStream(x0, prompt, seed=0)
    pool = ProgressivePool(
        stream, B, MASK, ((K, 0),), mode=mode, seed=0, device=device, sync_free=sync_free
    )
    return pool, ExampleStream(x0, prompt, seed=0)


@pytest.mark.parametrize("mode", ["fixed", "confidence_collapse"])
@pytest.mark.parametrize("K", [1, 3, 4])
def test_stages_and_ground_truth_reveals_hold_on_the_sync_free_path(K, mode):
    pool, _ = make_pool(K=K, mode=mode)
    gen = torch.Generator().manual_seed(1)
    for step in range(3 * K + 2):
        batch = pool.batch(step)
        pool.update(crafted_logits(torch.rand(B, L, generator=gen)))
        assert torch.equal(batch.x_t.ne(MASK) | batch.prompt_mask, batch.masked.logical_not())
        shown = (pool.x_t != MASK) & ~pool.prompt_mask
        assert torch.equal(pool.x_t[shown], pool.x0[shown])  # revealed values are x0's
        assert (unmasked_count(pool) < L - P).all()
        if mode == "standard":
            lo, hi = stage_bounds(pool, pool.phase)
            assert ((unmasked_count(pool) >= lo) & (unmasked_count(pool) <= hi)).all()


@pytest.mark.parametrize("sync_free", [False, True])
def test_fresh_sequences_enter_in_stream_order(sync_free):
    pool, reference = make_pool(sync_free=sync_free, K=3)
    gen = torch.Generator().manual_seed(2)
    pool.batch(0)
    entered = ids(pool).tolist()
    for step in range(1, 12):
        before = ids(pool)
        pool.update(crafted_logits(torch.rand(B, L, generator=gen)))
        pool.batch(step)
        entered += ids(pool)[ids(pool) != before].tolist()
    order = reference.take(len(entered))[0]
    assert entered == (order[:, 0] + V * order[:, 1] + V * V * order[:, 2]).tolist()
    assert int(pool.retired) == len(entered) - B


def test_sync_free_state_resumes_exactly():
    pool, _ = make_pool(K=4, mode="confidence_collapse")
    logits = [crafted_logits(torch.rand(B, L)) for _ in range(12)]
    for step in range(5):
        pool.batch(step)
        pool.update(logits[step])
    again, _ = make_pool(K=4, mode="confidence_collapse")
    again.load_state_dict(pool.state_dict())
    for step in range(5, 12):
        a, b = pool.batch(step), again.batch(step)
        assert torch.equal(a.x_t, b.x_t) and torch.equal(pool.phase, again.phase)
        pool.update(logits[step])
        again.update(logits[step])
    assert int(pool.retired) == int(again.retired)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_no_host_device_sync_in_the_puma_update_or_the_sampler_loop():
    device = torch.device("cuda")
    pool, _ = make_pool(device=device, mode="confidence_collapse", K=4)
    assert pool.sync_free
    cfg = ModelConfig(vocab_size=V, seq_len=L, dim=32, n_layers=2, n_heads=2)
    model = Transformer(cfg).to(device).eval()
    x_t = torch.full((8, L), MASK, device=device)
    x_t[:, :P] = 1
    pool.batch(0)  # the first fill (and CUDA start-up) may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 9):
            batch = pool.batch(step)
            with torch.no_grad():
                pool.update(model(batch.x_t))
        with torch.no_grad():
            result = sample(model, x_t, MASK, policy="top_prob", k=2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.nfe == -(-(L - P) // 2) and not (result.tokens == MASK).any()


@pytest.mark.gpu
@cuda
def test_bf16_training_step_on_the_gpu_uses_the_fused_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = ModelConfig(vocab_size=V, seq_len=64, dim=64, n_layers=2, n_heads=4)
    model = Transformer(cfg).cuda()
    x = torch.randint(0, V, (4, 64), device="cuda")
    # only the fused kernels allowed: the step fails if the model fell back to the math path
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        logits.float().logsumexp(-1).mean().backward()
    assert logits.dtype == torch.bfloat16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
