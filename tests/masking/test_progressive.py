import pytest
import torch

from puma_mdm.masking import ExampleStream, KSchedule, ProgressivePool

MASK, V = 9, 9
B, L, P = 16, 24, 4  # pool size, length, prompt length


def make_pool(k_schedule=((4, 0),), mode="fixed", tau=0.9, seed=0, n=200):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (n, L), generator=gen)
    for digit in range(3):  # a per-example id written in base V into the prompt
        x0[:, digit] = torch.arange(n) // V**digit % V
    prompt = torch.zeros(n, L, dtype=torch.bool)
    prompt[:, :P] = True
    stream = ExampleStream(x0, prompt, seed=0)
    return ProgressivePool(stream, B, MASK, k_schedule, mode=mode, tau=tau, seed=seed)


def crafted_logits(confidence: torch.Tensor) -> torch.Tensor:
    """Logits whose max-probability is strictly increasing in ``confidence`` (B, L)."""
    logits = torch.zeros(*confidence.shape, V)
    logits[..., 3] = confidence * 10
    return logits


def stage_bounds(pool, phase):
    l_eff = L - P
    lo = torch.round(phase.double() / pool.K * l_eff).long().clamp(max=l_eff - 1)
    hi = torch.round((phase.double() + 1) / pool.K * l_eff).long().clamp(max=l_eff - 1)
    return lo, hi


def unmasked_count(pool):
    return ((pool.x_t != MASK) & ~pool.prompt_mask).sum(1)


def ids(pool):
    return pool.x0[:, 0] + V * pool.x0[:, 1] + V * V * pool.x0[:, 2]


def test_start_spreads_phases_and_unmasks_for_each_stage():
    pool = make_pool(k_schedule=((4, 0),))
    pool.batch(0)
    assert sorted(pool.phase.tolist()) == sorted([i * 4 // B for i in range(B)])
    lo, hi = stage_bounds(pool, pool.phase)
    u = unmasked_count(pool)
    assert ((u >= lo) & (u <= hi)).all()


@pytest.mark.parametrize("K", [1, 2, 4, 7])
def test_counts_stay_in_stage_and_reveals_are_ground_truth(K):
    pool = make_pool(k_schedule=((K, 0),))
    gen = torch.Generator().manual_seed(1)
    for step in range(3 * K + 2):
        batch = pool.batch(step)
        before_x_t, before_ids = batch.x_t, ids(pool)
        pool.update(crafted_logits(torch.rand(B, L, generator=gen)))
        lo, hi = stage_bounds(pool, pool.phase)
        u = unmasked_count(pool)
        assert ((u >= lo) & (u <= hi)).all(), (step, u, lo, hi)
        assert (u <= L - P - 1).all()  # at least one token always stays masked
        visible = pool.x_t != MASK
        assert torch.equal(pool.x_t[visible], pool.x0[visible])  # only ground truth is shown
        same = ids(pool) == before_ids
        changed = (pool.x_t != before_x_t)[same]
        assert (before_x_t[same][changed] == MASK).all()  # only masked positions change
        assert not (changed & pool.prompt_mask[same]).any()


def test_reveals_follow_the_confidence_order():
    pool = make_pool(k_schedule=((4, 0),))
    gen = torch.Generator().manual_seed(2)
    for step in range(6):
        pool.batch(step)
        before, before_ids = pool.x_t.clone(), ids(pool)
        confidence = torch.rand(B, L, generator=gen)
        pool.update(crafted_logits(confidence))
        for b in torch.nonzero(ids(pool) == before_ids).flatten():
            was_masked = before[b] == MASK
            revealed = was_masked & (pool.x_t[b] != MASK)
            kept = was_masked & (pool.x_t[b] == MASK)
            if revealed.any() and kept.any():
                assert confidence[b][revealed].min() > confidence[b][kept].max()


def test_a_sequence_is_replaced_exactly_after_K_updates():
    K = 5
    pool = make_pool(k_schedule=((K, 0),))
    pool.batch(0)
    history = [ids(pool).clone()]
    for step in range(1, 4 * K):
        pool.update(crafted_logits(torch.rand(B, L)))
        pool.batch(step)
        history.append(ids(pool).clone())
    history = torch.stack(history)  # (steps, B)
    for b in range(B):
        changes = torch.nonzero(history[1:, b] != history[:-1, b]).flatten() + 1
        assert len(changes) >= 3
        assert (torch.diff(changes) == K).all()
    assert pool.retired == pool.stream.consumed - B


def test_confidence_collapse_reveals_every_confident_position():
    pool = make_pool(k_schedule=((8, 0),), mode="confidence_collapse", tau=0.9)
    pool.batch(0)
    before, before_ids, old_phase = pool.x_t.clone(), ids(pool), pool.phase.clone()
    confidence = torch.zeros(B, L)
    confidence[:, P : P + 10] = 5.0  # p_max ≈ 1 at ten positions of every row
    logits = crafted_logits(confidence)
    pool.update(logits)
    stayed = ids(pool) == before_ids
    p_max = logits.softmax(-1).amax(-1)
    confident = (before == MASK) & (p_max > 0.9)
    assert (pool.x_t[stayed][confident[stayed]] != MASK).all()
    frac = unmasked_count(pool).float() / (L - P)
    expected = torch.maximum((old_phase + 1), (frac * 8).floor().long().clamp(max=7))
    assert torch.equal(pool.phase[stayed], expected[stayed])
    assert (pool.phase[stayed] > old_phase[stayed]).all()


def test_k_schedule_switch_happens_at_the_scheduled_step():
    pool = make_pool(k_schedule=((4, 0), (8, 5)))
    for step in range(5):
        pool.batch(step)
        assert pool.K == 4
        pool.update(crafted_logits(torch.rand(B, L)))
    pool.batch(5)
    assert pool.K == 8
    assert sorted(pool.phase.tolist()) == sorted([i * 8 // B for i in range(B)])


def test_schedule_before_first_entry_and_validation():
    assert KSchedule([[6, 100], [9, 200]]).k_at(0) == 6
    with pytest.raises(ValueError, match="≥ 1"):
        KSchedule([[0, 0]])
    with pytest.raises(ValueError, match="increasing"):
        KSchedule([[4, 10], [8, 5]])


def test_restored_pool_continues_identically():
    a = make_pool(k_schedule=((3, 0),), seed=4)
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        a.batch(step)
        a.update(crafted_logits(torch.rand(B, L, generator=gen)))
    b = make_pool(k_schedule=((3, 0),), seed=99)
    b.load_state_dict(a.state_dict())
    for step in range(4, 12):
        ba, bb = a.batch(step), b.batch(step)
        assert torch.equal(ba.x_t, bb.x_t) and torch.equal(ba.x0, bb.x0)
        conf = torch.rand(B, L, generator=gen)
        a.update(crafted_logits(conf))
        b.update(crafted_logits(conf))
    assert torch.equal(a.phase, b.phase)
