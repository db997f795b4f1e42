"""The run configuration: one validated tree (model, task, training, eval, logging, checkpoint)
loaded from YAML with ``key=value`` dot-list overrides. Unknown keys and wrong types are
reported with the key's full path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puma_mdm.arguments import device_problem
from puma_mdm.errors import ConfigError
from puma_mdm.losses import LOSS_NORMS
from puma_mdm.masking.settings import PumaSettings
from puma_mdm.precision import PRECISIONS
from puma_mdm.sampling import POLICIES

STRATEGIES = ("standard", "progressive", "arm")
PARALLEL = ("ddp", "fsdp")


@dataclass
class PrimeSection:
    digits: int = 0  # MDM-Prime: sub-tokens per token ℓ (0 = off); base b = ⌈C^(1/ℓ)⌉
    loss: str = "joint"  # training loss: joint (published) | marginal (the NLL bound itself)


@dataclass
class ModelSection:
    dim: int = 128  # width of the residual stream
    n_layers: int = 4  # Transformer blocks
    n_heads: int = 4  # attention heads
    n_kv_heads: int | None = None  # grouped KV heads (None = n_heads)
    mlp_hidden: int | None = None  # SwiGLU width (None ≈ 8/3·dim)
    rope: bool = True  # rotary position embedding
    task_positions: bool = True  # add the task's structured position tables (Sudoku row/col/box)
    tie_head: bool = False  # share the output head with the token embedding
    dropout: float = 0.0
    prime: PrimeSection = field(default_factory=PrimeSection)  # partial masking (prime/)
    # A Hugging Face model from a local directory instead of the shape above (puma-mdm[hf])
    hf_path: str | None = None
    trust_remote_code: bool = False  # run the model code shipped in hf_path (custom models)
    hf_mask_token_id: int | None = None  # default: from its config.json or its tokenizer
    init_from: str | None = None  # an ARM's model dir to start from, keeping its shift (arm.py)


@dataclass
class TaskSection:
    name: str = "sort"  # a registered task: sort, sudoku
    options: dict[str, Any] = field(default_factory=dict)  # task-specific, checked by the task


@dataclass
class PumaSection(PumaSettings):
    # mixed batch: this share of each batch is fresh random masks, the rest the pool
    # (masking/mixed.py); 0 = the pure PUMA pool
    fresh_fraction: float = 0.0


@dataclass
class TrainingSection:
    strategy: str = "progressive"  # standard (random masking) | progressive (PUMA) | arm
    block_size: int = 0  # block diffusion: blocks of this many tokens (0 = off; masking/block.py)
    steps: int = 1000  # optimiser steps
    batch_size: int = 32  # sequences per optimiser step (the PUMA pool size)
    grad_accum: int = 1  # micro-batches per step (batch_size must be divisible by it)
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (β1, β2)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    elbo_form: str = "count"  # random masking's ELBO estimator: count (1/n) | continuous (1/t)
    loss_norm: str = "sequence"  # sequence (1/n_b, the ELBO) | token (mean over masked tokens)
    ema: float = 0.0  # EMA decay of the weights (0 = off); evaluation uses the EMA weights
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    autocast: str = "auto"  # auto (bf16 where native, else fp32; precision.py) | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the training forward/backward (≈1 min to compile)
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    # under torchrun: ddp (replicas) | fsdp (FSDP2: parameters, gradients, optimiser and EMA
    # sharded over the ranks, sharded checkpoints; train/distributed.py)
    parallel: str = "ddp"
    skip_nonfinite: bool = False  # skip a step with a non-finite loss instead of stopping
    puma: PumaSection = field(default_factory=PumaSection)


@dataclass
class EvalSection:
    every: int = 250  # steps between evaluations (0 = only at the end)
    examples: int = 200  # held-out examples evaluated
    policy: str = "margin"  # the decoder behind eval/accuracy (and best/)
    extra_policies: list[str] = field(default_factory=list)  # also logged: eval/accuracy_<p>
    k: int = 1
    batch_size: int = 256


@dataclass
class LoggingSection:
    out_dir: str = "runs/default"
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "puma-mdm"
    wandb_mode: str = "offline"  # offline (sync later with `wandb sync`) | online


@dataclass
class CheckpointSection:
    every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_last: int = 2


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"{key}: {msg}" if key else msg


# old spellings of renamed keys, still accepted in YAML files (saved runs) and overrides
KEY_ALIASES = {"training.loss_form": "training.elbo_form"}


def _renamed(tree: DictConfig) -> DictConfig:
    """``tree`` with every old key of :data:`KEY_ALIASES` moved to its new name."""
    data = OmegaConf.to_container(tree)
    for old, new in KEY_ALIASES.items():
        *parents, leaf = old.split(".")
        section = data
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict) and leaf in section:
            section[new.rsplit(".", 1)[1]] = section.pop(leaf)
    return OmegaConf.create(data)


def _renamed_override(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{KEY_ALIASES.get(key, key)}={value}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← YAML file ← ``key=value`` overrides (old key spellings accepted), validated."""
    try:
        merged = OmegaConf.structured(Config)
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                loaded = OmegaConf.load(path)
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                detail = str(err).strip().splitlines()[0]
                raise ConfigError(f"{path} is not a valid YAML config ({detail})") from None
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{path}: a config is a mapping of sections, not a list")
            merged = OmegaConf.merge(merged, _renamed(loaded))
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        dotlist = [_renamed_override(o) for o in overrides or []]
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config: {_describe(err)}") from None
    validate(cfg)
    return cfg


# what ``--resume`` may change: everything else is part of the run's saved state (weights,
# optimiser, PUMA pool, data order) or would make the resumed run a different one
RESUMABLE = (
    "training.steps",
    "training.device",
    "training.threads",
    "training.compile",
    "training.autocast",
    "training.skip_nonfinite",
    "eval.*",
    "logging.*",
    "checkpoint.*",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _resumable(key: str) -> bool:
    return key in RESUMABLE or key.split(".")[0] in ("eval", "logging", "checkpoint")


def changed_on_resume(saved: Config, new: Config) -> list[str]:
    """``key: saved → new`` for every setting that differs but cannot change on ``--resume``."""
    old = _flat(OmegaConf.to_container(OmegaConf.structured(saved)))
    cur = _flat(OmegaConf.to_container(OmegaConf.structured(new)))
    keys = sorted(set(old) | set(cur))
    return [
        f"{k}={cur.get(k)!r} (the run has {old.get(k)!r})"
        for k in keys
        if old.get(k) != cur.get(k) and not _resumable(k)
    ]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def validate(cfg: Config) -> None:
    """Semantic checks the type system cannot express."""
    t, e = cfg.training, cfg.eval

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(t.strategy in STRATEGIES, f"training.strategy: {t.strategy!r} is not one of {STRATEGIES}")
    need(t.steps >= 1, f"training.steps must be ≥ 1, got {t.steps}")
    need(t.batch_size >= 1, f"training.batch_size must be ≥ 1, got {t.batch_size}")
    need(t.grad_accum >= 1, f"training.grad_accum must be ≥ 1, got {t.grad_accum}")
    need(
        t.batch_size % t.grad_accum == 0,
        f"training.batch_size={t.batch_size} must be divisible by grad_accum={t.grad_accum}",
    )
    need(t.lr > 0, f"training.lr must be > 0, got {t.lr}")
    need(
        len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas),
        f"training.betas must be two numbers in [0, 1), got {t.betas}",
    )
    need(0 <= t.min_lr_ratio <= 1, f"training.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    need(0 <= t.ema < 1, f"training.ema must be in [0, 1), got {t.ema}")
    need(t.elbo_form in ("count", "continuous"), f"training.elbo_form: {t.elbo_form!r} unknown")
    need(
        t.loss_norm in LOSS_NORMS,
        f"training.loss_norm: {t.loss_norm!r} unknown; choose one of {LOSS_NORMS}",
    )
    need(t.parallel in PARALLEL, f"training.parallel: {t.parallel!r} is not one of {PARALLEL}")
    need(
        t.parallel != "fsdp" or cfg.model.hf_path is None,
        "training.parallel=fsdp shards puma's own Transformer; a Hugging Face network "
        "(model.hf_path) trains with ddp",
    )
    need(t.autocast in PRECISIONS, f"training.autocast: {t.autocast!r} is not one of {PRECISIONS}")
    t.puma.check("training.puma")
    need(
        cfg.logging.wandb_mode in ("offline", "online"),
        f"logging.wandb_mode: {cfg.logging.wandb_mode!r} is not offline or online",
    )
    need(
        cfg.model.prime.digits >= 0, f"model.prime.digits must be ≥ 0, got {cfg.model.prime.digits}"
    )
    need(
        cfg.model.prime.loss in ("joint", "marginal"),
        f"model.prime.loss: {cfg.model.prime.loss!r} is not joint or marginal",
    )
    need(
        0 <= t.puma.fresh_fraction < 1,
        f"training.puma.fresh_fraction must be in [0, 1), got {t.puma.fresh_fraction}",
    )
    need(
        t.puma.fresh_fraction == 0 or (t.block_size == 0 and cfg.model.prime.digits == 0),
        "training.puma.fresh_fraction (a mixed batch) is for full-sequence models; set it to 0 "
        "with training.block_size or model.prime",
    )
    need(t.block_size >= 0, f"training.block_size must be ≥ 0, got {t.block_size}")
    special = {
        "training.block_size": t.block_size > 0,
        "training.strategy=arm": t.strategy == "arm",
        "model.init_from": cfg.model.init_from is not None,
        "model.prime": cfg.model.prime.digits > 0,
        "model.hf_path": cfg.model.hf_path is not None,
    }
    on = [name for name, used in special.items() if used]
    need(
        len(on) <= 1,
        f"{' and '.join(on)} cannot be combined; block diffusion, ARM training, ARM "
        "initialisation, MDM-Prime and Hugging Face networks are separate model kinds",
    )
    need(e.policy in POLICIES, f"eval.policy: {e.policy!r} is not one of {sorted(POLICIES)}")
    for extra in e.extra_policies:
        need(
            extra in POLICIES and extra != e.policy,
            f"eval.extra_policies: {extra!r} is not one of {sorted(POLICIES)} other than "
            f"eval.policy={e.policy!r}",
        )
    need(e.k >= 1, f"eval.k must be ≥ 1, got {e.k}")
    need(e.examples >= 1, f"eval.examples must be ≥ 1, got {e.examples}")
    need(e.every >= 0, f"eval.every must be ≥ 0 (0 = only at the end), got {e.every}")
    need(e.batch_size >= 1, f"eval.batch_size must be ≥ 1, got {e.batch_size}")
    need(t.warmup_steps >= 0, f"training.warmup_steps must be ≥ 0, got {t.warmup_steps}")
    need(t.weight_decay >= 0, f"training.weight_decay must be ≥ 0, got {t.weight_decay}")
    need(t.grad_clip >= 0, f"training.grad_clip must be ≥ 0 (0 = off), got {t.grad_clip}")
    need(t.threads >= 0, f"training.threads must be ≥ 0 (0 = torch's default), got {t.threads}")
    device = device_problem(t.device)
    need(device is None, f"training.device: {device}")
    m = cfg.model
    for name in ("dim", "n_layers", "n_heads"):
        need(getattr(m, name) >= 1, f"model.{name} must be ≥ 1, got {getattr(m, name)}")
    for name, low in (("n_kv_heads", 1), ("mlp_hidden", 1), ("hf_mask_token_id", 0)):
        value = getattr(m, name)
        need(value is None or value >= low, f"model.{name} must be ≥ {low} or null, got {value}")
    need(0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}")
    lg, ck = cfg.logging, cfg.checkpoint
    need(lg.log_every >= 1, f"logging.log_every must be ≥ 1, got {lg.log_every}")
    need(bool(lg.out_dir.strip()), "logging.out_dir is empty")
    need(ck.every >= 0, f"checkpoint.every must be ≥ 0 (0 = only at the end), got {ck.every}")
    need(ck.keep_last >= 1, f"checkpoint.keep_last must be ≥ 1, got {ck.keep_last}")
