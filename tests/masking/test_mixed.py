"""The mixed batch: PUMA pool rows first, fresh random-masked rows after, one shared stream."""

import pytest
import torch

from puma_mdm.masking import ExampleStream, ProgressivePool, RandomMasking
from puma_mdm.masking.mixed import MixedBatch, split_rows
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import TINY_RUN

MASK, V, L, P = 9, 9, 12, 2


def make_mixed(pool_rows=6, fresh_rows=2, seed=0):
    x0 = torch.randint(0, V, (100, L), generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros(100, L, dtype=torch.bool)
    prompt[:, :P] = True
    stream = ExampleStream(x0, prompt, seed=0)
    pool = ProgressivePool(stream, pool_rows, MASK, [[4, 0]], seed=seed)
    fresh = RandomMasking(stream, fresh_rows, MASK, seed=seed + 1)
    return MixedBatch(pool, fresh)


def test_rows_split_and_only_the_pool_rows_advance():
    mixed = make_mixed()
    batch = mixed.batch(0)
    assert batch.x0.shape == (8, L) and batch.weights.shape == (8,)
    pool_x_t = mixed.pool.x_t.clone()
    assert torch.equal(batch.x_t[:6], pool_x_t)
    # the pool reveals ground truth where its rows' logits are confident; fresh rows are new
    logits = torch.zeros(8, L, V)
    mixed.update(logits)
    revealed = (pool_x_t == MASK) & (mixed.pool.x_t != MASK)
    assert torch.equal(mixed.pool.x_t[revealed], mixed.pool.x0[revealed])
    nxt = mixed.batch(1)
    assert not torch.equal(nxt.x0[6:], batch.x0[6:])  # fresh data every step
    # every row keeps its own process's 1/n weight
    masked = nxt.masked.sum(1).float()
    assert torch.allclose(nxt.weights, 1 / masked)


def test_state_round_trip_continues_identically():
    a, b = make_mixed(), make_mixed(seed=5)
    for step in range(3):
        a.batch(step)
        a.update(torch.randn(8, L, V, generator=torch.Generator().manual_seed(step)))
    b.load_state_dict(a.state_dict())
    for step in range(3, 6):
        x, y = a.batch(step), b.batch(step)
        assert torch.equal(x.x_t, y.x_t) and torch.equal(x.x0, y.x0)
        logits = torch.randn(8, L, V, generator=torch.Generator().manual_seed(step))
        a.update(logits)
        b.update(logits)


@pytest.mark.parametrize(
    ("batch", "fraction", "expected"), [(32, 0.0, (32, 0)), (32, 0.5, (16, 16)), (4, 0.01, (3, 1))]
)
def test_split_rows(batch, fraction, expected):
    assert split_rows(batch, fraction) == expected


def test_split_rows_refuses_a_fraction_outside_zero_one():
    with pytest.raises(ValueError, match="fresh_fraction"):
        split_rows(8, 1.0)


def test_trainer_builds_the_mixed_batch_from_the_config(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY_RUN,
            "training.strategy=progressive",
            "training.puma.fresh_fraction=0.25",
            "training.steps=3",
            f"logging.out_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.process, MixedBatch)
    assert (trainer.process.pool.batch_size, trainer.process.fresh.batch_size) == (24, 8)
    trainer.train()
    assert trainer.sequences_seen > 24  # fresh rows draw new sequences every step


def test_config_refuses_a_mixed_batch_with_blocks():
    from puma_mdm.errors import ConfigError

    with pytest.raises(ConfigError, match="fresh_fraction"):
        load_config(None, ["training.puma.fresh_fraction=0.5", "training.block_size=4"])
    with pytest.raises(ConfigError, match="fresh_fraction"):
        load_config(None, ["training.puma.fresh_fraction=1.5"])
