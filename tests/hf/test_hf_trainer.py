"""PUMA inside transformers.Trainer (puma_mdm.hf.trainer_integration)."""

import shutil

import pytest

pytest.importorskip("accelerate", reason="transformers.Trainer needs it")
import torch

from hf_models import bert, transformers
from puma_mdm.errors import CheckpointError, ConfigError
from puma_mdm.hf.adapter import HFModelError
from puma_mdm.hf.trainer_integration import PumaArguments, PumaTrainer
from puma_mdm.tasks import build_task


def sort_rows(n=200):
    """The sort task as a Trainer dataset: rows of input_ids and prompt_mask (digits 0..9)."""
    task = build_task("sort", {"length": 5, "n_train": n, "n_eval": 10})
    ex = task.train_examples()
    return [
        {"input_ids": x.tolist(), "prompt_mask": p.int().tolist()}
        for x, p in zip(ex.x0, ex.prompt_mask, strict=True)
    ]


def arguments(out, steps, **extra):
    return transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
        logging_steps=1,
        disable_tqdm=True,
        **extra,
    )


def trainer(out, steps, model=None, rows=None, puma=None, **extra):
    torch.manual_seed(0)
    return PumaTrainer(
        model=model or bert(),  # vocabulary 11: the digits and the mask token 10
        args=arguments(out, steps, **extra),
        train_dataset=rows or sort_rows(),
        puma=puma or PumaArguments(k_schedule=[[4, 0]]),
    )


def losses(t):
    return [h["loss"] for h in t.state.log_history if "loss" in h]


def test_resume_from_a_trainer_checkpoint_restores_the_identical_pool(tmp_path):
    straight = trainer(tmp_path / "a", 6, save_steps=3)
    straight.train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    saved = torch.load(checkpoint / "puma_state-0.pt", weights_only=True)
    assert saved["process"]["phase"].shape == (8,)
    loaded = trainer(tmp_path / "b", 6, save_steps=3)
    loaded.load_puma_state(checkpoint)  # what train(resume_from_checkpoint=...) does first
    for key in ("x0", "x_t", "phase", "prompt_mask", "rng"):
        assert torch.equal(loaded.process.state_dict()[key], saved["process"][key])

    shutil.copytree(checkpoint, tmp_path / "b" / "checkpoint-3")
    resumed = trainer(tmp_path / "b", 6, save_steps=3)
    resumed.train(resume_from_checkpoint=True)  # the latest checkpoint in b: checkpoint-3
    a, b = straight.process.state_dict(), resumed.process.state_dict()
    for key in ("x0", "x_t", "phase", "prompt_mask", "rng"):
        assert torch.equal(a[key], b[key]), key
    assert (a["retired"], a["stream"]) == (b["retired"], b["stream"])
    assert losses(resumed) == losses(straight)  # steps 1-3 from the checkpoint, 4-6 anew
    assert len(losses(resumed)) == 6
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_pool_is_fed_from_the_dataset_and_advanced_by_the_same_forward(tmp_path):
    rows = sort_rows()
    t = trainer(tmp_path, 3, rows=rows, save_strategy="no")
    calls = []
    t.model.register_forward_hook(lambda *_: calls.append(1))
    data = {tuple(r["input_ids"]) for r in rows}
    assert {tuple(x) for x in t.process.batch(0).x0.tolist()} <= data
    t.train()
    assert len(calls) == 3  # one forward per step: the pool update reuses its logits
    pool = t.process
    assert pool.retired > 0 and pool.stream.consumed == 8 + pool.retired
    assert {tuple(x) for x in pool.x0.tolist()} <= data
    revealed = (pool.x_t != 10) & ~pool.prompt_mask  # never the prompt, always the truth
    assert torch.equal(pool.x_t[revealed], pool.x0[revealed])
    assert torch.equal(pool.x_t[pool.prompt_mask], pool.x0[pool.prompt_mask])
    assert losses(t)[-1] < losses(t)[0]


def test_random_masking_baseline_and_gradient_accumulation(tmp_path):
    puma = PumaArguments(strategy="standard", loss_norm="token")
    t = trainer(tmp_path, 2, puma=puma, save_steps=1, gradient_accumulation_steps=2)
    t.train()
    assert t.process.stream.consumed == 2 * 2 * 8  # every micro-batch draws a fresh batch
    other = trainer(tmp_path, 2, save_steps=1)  # progressive
    with pytest.raises(CheckpointError, match="strategy 'standard'"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_bad_input_is_named(tmp_path):
    with pytest.raises(HFModelError, match="names a mask token"):
        trainer(tmp_path, 1, model=bert(mask=None))
    with pytest.raises(ConfigError, match="equal-length sequences"):
        trainer(tmp_path, 1, rows=[{"input_ids": [1, 2, 3]}, {"input_ids": [1, 2]}])
    with pytest.raises(ConfigError, match="need input_ids"):
        trainer(tmp_path, 1, rows=[{"ids": [1, 2, 3]}])
    with pytest.raises(ConfigError, match="mask id 3 is inside the data"):
        trainer(tmp_path, 1, puma=PumaArguments(mask_token_id=3))
    with pytest.raises(ConfigError, match="strategy"):
        PumaArguments(strategy="fast")
    plain = tmp_path / "checkpoint-5"
    plain.mkdir()
    with pytest.raises(CheckpointError, match="has no PUMA state"):
        trainer(tmp_path, 1).train(resume_from_checkpoint=str(plain))
