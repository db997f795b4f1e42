import pytest
import torch
import torch.nn.functional as F

from puma_mdm.arm import NextToken, init_from_arm, next_token_batch
from puma_mdm.bench.speedup import run_speedup
from puma_mdm.bundled import bundled_config
from puma_mdm.errors import ConfigError
from puma_mdm.evaluate import nll_bound
from puma_mdm.losses import mdm_loss
from puma_mdm.masking import Batch, ExampleStream
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.train.config import load_config
from puma_mdm.train.trainer import Trainer
from tiny import TINY_RUN as TINY

V, L, P = 7, 12, 4


def arm_model(**kw) -> Transformer:
    cfg = dict(vocab_size=V, seq_len=L, dim=32, n_layers=2, n_heads=2, causal=True, shift=True)
    return Transformer(ModelConfig(**{**cfg, **kw}))


def data(n=6):
    x0 = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(0))
    pm = torch.zeros(n, L, dtype=torch.bool)
    pm[:, :P] = True
    return x0, pm


def test_shift_output_i_predicts_token_i_from_the_prefix():
    model = arm_model().eval()
    x0, _ = data()
    a = model(x0)
    y = x0.clone()
    y[:, 7:] = (y[:, 7:] + 1) % V  # changing token 7 onwards leaves outputs 0..7
    torch.testing.assert_close(model(y)[:, :8], a[:, :8])
    assert not torch.allclose(model(y)[:, 8:], a[:, 8:])


@pytest.mark.parametrize("i", [P, 7, L - 1])
def test_shifted_mdm_loss_with_one_mask_equals_the_arm_next_token_loss(i):
    model = arm_model().eval()
    x0, pm = data()
    masked = torch.zeros_like(pm)
    masked[:, i] = True
    one = Batch(x0, x0.masked_fill(masked, V), pm, masked, torch.ones(len(x0)))
    mdm = mdm_loss(model(one.x_t), one)
    arm_logits = model(x0)  # teacher forcing on the clean sequence
    arm = F.cross_entropy(arm_logits[:, i], x0[:, i])
    torch.testing.assert_close(mdm, arm)
    # and the ARM's own training loss is the mean of those per-position losses
    full = mdm_loss(arm_logits, next_token_batch(x0, pm))
    per_pos = F.cross_entropy(arm_logits[:, P:].transpose(1, 2), x0[:, P:], reduction="none")
    torch.testing.assert_close(full, per_pos.mean())


def test_next_token_process_refuses_unprompted_first_positions():
    x0, pm = data()
    pm[2, 0] = False
    with pytest.raises(ConfigError, match="position 0"):
        NextToken(ExampleStream(x0, pm), 4)


def test_init_from_copies_weights_and_checks_the_source(tmp_path):
    arm = arm_model()
    arm.save_pretrained(tmp_path / "arm")
    mdm = arm_model(causal=False)
    init_from_arm(mdm, tmp_path / "arm")
    for (name, a), b in zip(arm.state_dict().items(), mdm.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    arm_model(causal=False, shift=False).save_pretrained(tmp_path / "mdm")
    with pytest.raises(ConfigError, match="not an autoregressive"):
        init_from_arm(mdm, tmp_path / "mdm")
    with pytest.raises(ConfigError, match="another shape"):
        init_from_arm(arm_model(causal=False, dim=64), tmp_path / "arm")


def run(tmp_path, name, *overrides):
    cfg = load_config(
        None,
        [*TINY, "task.options.length=6", f"logging.out_dir={tmp_path / name}", *overrides],
    )
    trainer = Trainer(cfg)
    before = nll_bound(trainer.model, trainer.eval_set, trainer.task.mask_id)
    metrics = trainer.train()
    return trainer, before, metrics


@pytest.mark.slow
def test_arm_then_arm_initialised_puma(tmp_path):
    arm, before, metrics = run(tmp_path, "arm", "training.strategy=arm", "training.steps=150")
    assert metrics["nll"] < 0.8 * before
    assert arm.model.cfg.causal and arm.model.cfg.shift
    init = str(tmp_path / "arm" / "model")
    mdm, start, _ = run(
        tmp_path,
        "mdm",
        "training.strategy=progressive",
        f"model.init_from={init}",
        "training.steps=20",
    )
    assert mdm.model.cfg.shift and not mdm.model.cfg.causal
    # initialised (not random): it starts from far below a fresh network's bound
    fresh = Trainer(
        load_config(None, [*TINY, "task.options.length=6", f"logging.out_dir={tmp_path / 'fresh'}"])
    )
    untrained = nll_bound(fresh.model, fresh.eval_set, fresh.task.mask_id)
    assert start < untrained
    saved = Transformer.from_pretrained(tmp_path / "mdm" / "model")
    assert saved.cfg.shift


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["standard", "progressive"])
def test_block_diffusion_trains(tmp_path, strategy):
    trainer, before, metrics = run(
        tmp_path,
        strategy,
        f"training.strategy={strategy}",
        "training.block_size=3",
        "training.steps=150",
    )
    assert trainer.model.cfg.block_size == 3
    assert metrics["nll"] < 0.8 * before
    assert 0 <= metrics["accuracy"] <= 1


def test_config_refuses_mixed_model_kinds():
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(None, ["training.block_size=4", "training.strategy=arm"])
    with pytest.raises(ConfigError, match="must divide"):
        Trainer(load_config(None, [*TINY, "training.block_size=4"]))


@pytest.mark.parametrize("name", ["math-block", "math-arm", "math-arm-init", "sudoku-block"])
def test_bundled_configs_load(name):
    cfg = load_config(bundled_config(name))
    t = cfg.training
    assert (t.block_size, t.strategy, cfg.model.init_from is not None) == {
        "math-block": (16, "progressive", False),
        "math-arm": (0, "arm", False),
        "math-arm-init": (0, "progressive", True),
        "sudoku-block": (9, "progressive", False),
    }[name]


@pytest.mark.slow
def test_bench_speedup_runs_block_and_arm_init_arms(tmp_path):
    small = [
        "model.dim=32",
        "model.n_layers=1",
        "model.n_heads=2",
        "task.options.length=6",
        "task.options.n_train=500",
        "task.options.n_eval=20",
        "training.batch_size=16",
        "training.autocast=fp32",
    ]
    cfg = load_config(bundled_config("sort"), [*small, "training.strategy=arm", "training.steps=5"])
    cfg.logging.out_dir, cfg.logging.progress = str(tmp_path / "arm"), False
    Trainer(cfg).train()
    for name, extra in (
        ("block", "training.block_size=3"),
        ("init", f"model.init_from={tmp_path / 'arm' / 'model'}"),
    ):
        out = tmp_path / name
        report = run_speedup(
            bundled_config("sort"), [*small, extra], out, seeds=1, steps=4, eval_every=2
        )
        assert report["status"] == "complete"
        for arm in ("standard", "progressive"):
            saved = Transformer.from_pretrained(out / "seed0" / arm / "model")
            assert (saved.cfg.block_size, saved.cfg.shift) == (
                (3, False) if name == "block" else (0, True)
            )
