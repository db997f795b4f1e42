import pytest
import torch

from puma_mdm.losses import mdm_loss
from puma_mdm.masking import BlockMasking, BlockPool, ExampleStream, block_logits
from puma_mdm.masking.block import block_causal_mask, mask_blocks
from puma_mdm.model import ModelConfig, Transformer

V, L, S = 7, 24, 6
MASK = V


def tiny(block_size=S, **kw):
    cfg = ModelConfig(vocab_size=V, seq_len=L, dim=32, n_layers=2, n_heads=2, **kw)
    return Transformer(ModelConfig(**{**cfg.to_dict(), "block_size": block_size}))


def data(n=64, prompt=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, V, (n, L), generator=gen)
    pm = torch.zeros(n, L, dtype=torch.bool)
    pm[:, :prompt] = True
    return x0, pm


def test_block_causal_mask_pattern():
    m = block_causal_mask(6, 2)
    assert m[0].tolist() == [True, True, False, False, False, False]
    assert m[3].tolist() == [True, True, True, True, False, False]
    assert m[5].all()


def test_later_blocks_do_not_change_earlier_logits():
    model = tiny().eval()
    x = torch.randint(0, V + 1, (3, L))
    y = x.clone()
    y[:, 2 * S :] = torch.randint(0, V + 1, (3, L - 2 * S))
    a, b = model(x), model(y)
    assert torch.equal(a[:, : 2 * S], b[:, : 2 * S])
    assert not torch.allclose(a[:, 2 * S :], b[:, 2 * S :])


def test_vectorised_equals_loop_loss_and_gradients():
    model = tiny()
    x0, pm = data(8)
    batch = mask_blocks(x0, pm, MASK, S, torch.Generator().manual_seed(1))
    results = []
    for vectorised in (True, False):
        model.zero_grad()
        logits = block_logits(model, batch.x_t, batch.x0, S, vectorised=vectorised)
        loss = mdm_loss(logits, batch)
        loss.backward()
        results.append(
            (logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()])
        )
    (la, lossa, ga), (lb, lossb, gb) = results
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lossa, lossb, rtol=1e-6, atol=1e-6)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_noisy_block_sees_only_clean_prefix():
    """Changing x0 inside and after block n, or x_t outside block n, leaves block n's logits."""
    model = tiny().eval()
    x0, pm = data(4)
    batch = mask_blocks(x0, pm, MASK, S, torch.Generator().manual_seed(2))
    base = block_logits(model, batch.x_t, batch.x0, S)
    x0b, x_tb = batch.x0.clone(), batch.x_t.clone()
    x0b[:, S:] = (x0b[:, S:] + 1) % V  # clean copy of blocks ≥ 1
    x_tb[:, 2 * S :] = MASK  # noisy copy of blocks ≥ 2
    other = block_logits(model, x_tb, x0b, S)
    torch.testing.assert_close(base[:, : 2 * S], other[:, : 2 * S])


def test_mask_blocks_per_block_counts_and_weights():
    x0, pm = data(200, prompt=S + 2)  # block 0 all prompt, block 1 partly
    batch = mask_blocks(x0, pm, MASK, S, torch.Generator().manual_seed(3))
    assert not (batch.masked & pm).any()
    per_block = batch.masked.view(200, -1, S).sum(2)
    assert (per_block[:, 0] == 0).all() and (per_block[:, 1:] >= 1).all()
    assert torch.equal(batch.x_t == MASK, batch.masked)
    free = (~pm).view(200, -1, S).sum(2)
    l_eff = L - S - 2
    expect = free[:, 1:].float() / per_block[:, 1:].float() / l_eff
    w = batch.weights.view(200, -1, S)
    torch.testing.assert_close(w[:, 1:, 0], expect)
    # each block's mask count is uniform on 1..S_eff: spot-check the mean for a full block
    assert abs(per_block[:, 2].float().mean().item() - (S + 1) / 2) < 0.4


def test_block_masking_process_resumes():
    x0, pm = data()
    proc = BlockMasking(ExampleStream(x0, pm), 8, MASK, S, seed=5)
    proc.batch(0)
    state = proc.state_dict()
    a = proc.batch(1)
    proc.load_state_dict(state)
    assert torch.equal(a.x_t, proc.batch(1).x_t)
    with pytest.raises(ValueError, match="divide"):
        BlockMasking(ExampleStream(x0, pm), 8, MASK, 5)


def make_pool(mode="fixed", k=4):
    x0, pm = data(200, prompt=S + 2)
    return BlockPool(ExampleStream(x0, pm), 8, MASK, S, [[k, 0]], mode=mode, seed=0)


def confident_logits(x_t):
    return torch.randn(*x_t.shape, V)


@pytest.mark.parametrize("mode", ["fixed", "confidence_collapse"])
def test_block_pool_phases_advance_per_block_and_retire(mode):
    pool = make_pool(mode)
    batch = pool.batch(0)
    assert pool.phase.shape == (8, L // S)
    assert (pool.phase[:, 0] == pool.K).all()  # the all-prompt block is done from the start
    for step in range(12):
        batch = pool.batch(step)
        assert not (batch.masked & batch.prompt_mask).any()
        assert torch.equal(torch.where(batch.masked, batch.x0, batch.x_t), batch.x0)
        live = pool.phase < pool.K
        shown = (~batch.masked & ~batch.prompt_mask).view(8, -1, S).sum(2)
        before_phase, before_shown, before_x0 = pool.phase.clone(), shown, pool.x0.clone()
        pool.update(confident_logits(batch.x_t))
        same = (pool.x0 == before_x0).all(1)
        after = (~((pool.x_t == MASK) & ~pool.prompt_mask)).view(8, -1, S).sum(2)
        after = after - (pool.prompt_mask.view(8, -1, S).sum(2))
        # rows still in the pool: live blocks advanced, revealed tokens never re-masked
        assert (pool.phase[same][live[same]] > before_phase[same][live[same]]).all()
        assert (after[same] >= before_shown[same]).all()
    assert pool.retired > 0


def test_block_pool_standard_mode_blocks_move_together():
    pool = make_pool("standard", k=3)
    for step in range(7):
        pool.batch(step)
        live = pool.phase[:, 1:]
        assert (live == live[:, :1]).all()
        pool.update(confident_logits(pool.x_t))
    assert pool.retired >= 8  # everyone retired after K steps


def test_block_pool_resumes_exactly():
    pool = make_pool()
    for step in range(3):
        pool.update(confident_logits(pool.batch(step).x_t))
    state = pool.state_dict()
    torch.manual_seed(9)
    logits = confident_logits(pool.x_t)
    pool.update(logits)
    a = pool.batch(4).x_t
    twin = make_pool()
    twin.load_state_dict(state)
    twin.update(logits)
    assert torch.equal(a, twin.batch(4).x_t)
