"""Model kinds: the one place that knows how each kind of network trains, is scored, is sampled
and is loaded.

========  ==========================================================================
``mdm``    a bidirectional token model (random masking or PUMA; optionally ARM-shifted)
``block``  block diffusion: block-causal attention, ``[x_t | x0]`` training input
``arm``    an autoregressive model: causal, shifted, next-token targets
``prime``  MDM-Prime: tokens as digits, carry-over logits (prime/)
``hf``     a Hugging Face network as a plain bidirectional denoiser (hf/)
========  ==========================================================================

A network declares its kind once, in its ``kind`` attribute (:class:`~puma_mdm.model.Transformer`
from its config, :attr:`ModelConfig.kind`; the Hugging Face adapter ``"hf"``). A training config
picks it (:func:`kind_for_config`); :func:`kind_of` reads a network's. Nothing else asks a model
what it is. The math of each part is in docs/algorithms.md (§2 model, §3 forward processes and
losses, §4 sampling, §6 MDM-Prime).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from puma_mdm.arm import NextToken, check_first_is_prompt, init_from_arm, next_token_batch
from puma_mdm.errors import ConfigError
from puma_mdm.hf import HF_RECORD
from puma_mdm.losses import mdm_loss
from puma_mdm.masking import (
    Batch,
    BlockMasking,
    BlockPool,
    ExampleStream,
    ForwardProcess,
    ProgressivePool,
    RandomMasking,
    block_logits,
    mask_continuous,
    mask_count,
)
from puma_mdm.masking.block import mask_blocks
from puma_mdm.masking.mixed import MixedBatch, split_rows
from puma_mdm.model import CONFIG_NAME, ModelConfig, Transformer, check_manifest
from puma_mdm.modes import evaluating
from puma_mdm.prepared import PreparedData, ShardStream
from puma_mdm.prime.evaluate import format_prime, prime_eval, prime_nll_bound
from puma_mdm.prime.loss import prime_loss
from puma_mdm.prime.model import PrimeTransformer, codec_of
from puma_mdm.prime.process import DigitProcess, digit_stream
from puma_mdm.prime.sampling import sample_tokens
from puma_mdm.sampling import CACHES, SampleResult
from puma_mdm.sampling import sample as sample_ids
from puma_mdm.tasks.base import Examples, Task

if TYPE_CHECKING:
    from puma_mdm.train.config import Config

Loss = Callable[[torch.Tensor, Batch], torch.Tensor]
KINDS: dict[str, type[ModelKind]] = {}


def register_kind(cls: type[ModelKind]) -> type[ModelKind]:
    KINDS[cls.name] = cls
    return cls


class ModelKind:
    """How one kind of network trains, is scored and is sampled. An instance holds the network's
    config (``cfg``); the base class is the bidirectional token model."""

    name: ClassVar[str]
    #: the exact key-value cache of this kind, where it has one
    exact_cache: ClassVar[str | None] = None
    #: whether the network is our Transformer, whose attention the caches hook into
    cacheable: ClassVar[bool] = True
    #: whether its sampler has the entropy-bounded rule
    entropy_bounded: ClassVar[bool] = True

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @property
    def shifted(self) -> bool:
        """Output ``i`` predicts token ``i`` from position ``i−1`` (ARMs, MDMs initialised
        from one)."""
        return self.cfg.shift

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def model_config(cls, cfg: Config, task: Task) -> ModelConfig:
        """The network's shape for a training config (the kind adds its own fields)."""
        m = cfg.model
        return ModelConfig(
            vocab_size=task.vocab_size,
            seq_len=task.seq_len,
            dim=m.dim,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            n_kv_heads=m.n_kv_heads,
            mlp_hidden=m.mlp_hidden,
            rope=m.rope,
            position_tables=task.position_tables() if m.task_positions else {},
            tie_head=m.tie_head,
            dropout=m.dropout,
            shift=m.init_from is not None,
        )

    @classmethod
    def build(cls, cfg: Config, task: Task) -> torch.nn.Module:
        """A fresh network for ``cfg`` (an MDM initialised from an ARM when ``model.init_from``)."""
        model = Transformer(cls.model_config(cfg, task))
        if cfg.model.init_from is not None:
            init_from_arm(model, cfg.model.init_from)
        return model

    # -- training -------------------------------------------------------------------------------
    def stream(
        self, model, train: Examples | PreparedData, task: Task, rank: int, world: int, seed: int
    ) -> ExampleStream | ShardStream:
        """This rank's training stream: rows ``rank::world`` in memory, or its shard blocks."""
        if isinstance(train, PreparedData):
            if self.shifted and train.min_prompt < 1:
                raise ConfigError(
                    f"{train.directory} holds rows without a prompt, which a shifted model "
                    "cannot predict from"
                )
            return ShardStream(train, rank, world, seed=seed)
        shard = train[rank::world]
        if self.shifted:
            check_first_is_prompt(shard.prompt_mask)
        return ExampleStream(shard.x0, shard.prompt_mask, seed=seed)

    def forward_process(
        self, stream, t, mask_id: int, seed: int, device: torch.device
    ) -> ForwardProcess:
        """Random masking (``training.strategy=standard``) or the PUMA pool, optionally mixed
        with a share of fresh random masks (``training.puma.fresh_fraction``)."""
        if t.strategy == "standard":
            return RandomMasking(stream, t.batch_size, mask_id, seed, t.elbo_form, device)
        pool_rows, fresh_rows = split_rows(t.batch_size, t.puma.fresh_fraction)
        pool = ProgressivePool(
            stream,
            pool_rows,
            mask_id,
            k_schedule=t.puma.k_schedule,
            mode=t.puma.mode,
            tau=t.puma.tau,
            seed=seed,
            device=device,
        )
        if not fresh_rows:
            return pool
        fresh = RandomMasking(stream, fresh_rows, mask_id, seed + 1, t.elbo_form, device)
        return MixedBatch(pool, fresh)

    def training_loss(self, cfg: Config) -> Loss:
        return mdm_loss

    def logits(self, net: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        """The network's logits on a training batch."""
        return net(batch.x_t)

    # -- scoring --------------------------------------------------------------------------------
    def scored_batch(
        self,
        model,
        x0: torch.Tensor,
        prompt: torch.Tensor,
        mask_id: int,
        generator: torch.Generator,
        form: str = "count",
    ) -> tuple[Batch, torch.Tensor]:
        """A batch of the kind the model trains on (random masks here), and its logits there."""
        masks = {"count": mask_count, "continuous": mask_continuous}[form]
        batch = masks(x0, prompt, mask_id, generator)
        return batch, model(batch.x_t)

    @torch.no_grad()
    def nll_bound(
        self,
        model,
        examples: Examples,
        mask_id: int,
        samples: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        form: str = "count",
    ) -> float:
        """Per-token NLL upper bound (nats), averaged over ``samples`` draws of the masks of
        :meth:`scored_batch` (see :func:`puma_mdm.evaluate.nll_bound`)."""
        with evaluating(model):
            device = next(model.parameters()).device
            generator = torch.Generator().manual_seed(seed)
            total, count = 0.0, 0
            for _ in range(samples):
                for start in range(0, len(examples), batch_size):
                    x0 = examples.x0[start : start + batch_size].to(device)
                    prompt = examples.prompt_mask[start : start + batch_size].to(device)
                    batch, logits = self.scored_batch(model, x0, prompt, mask_id, generator, form)
                    total += float(mdm_loss(logits, batch)) * len(x0)
                    count += len(x0)
        return total / count

    def eval_nll(self, model, examples: Examples, mask_id: int, batch_size: int) -> dict:
        """The likelihood metrics of a training evaluation (``nll``: the count-form bound)."""
        return {"nll": self.nll_bound(model, examples, mask_id, batch_size=batch_size)}

    def eval_report(self, model, task: Task, examples: Examples, **options):
        """``puma eval``'s figures of this kind beyond the policy table, as (key, values,
        printable text), or ``None``."""
        return None

    def hf_network(self, model) -> torch.nn.Module | None:
        """The Hugging Face network the model already is (exported as it is), else ``None``
        (ours: converted, hf/export.py)."""
        return None

    # -- sampling -------------------------------------------------------------------------------
    @property
    def decode_block(self) -> int:
        """Positions decoded per block by default (0 = the whole sequence at once)."""
        return 0

    def check_cache(self, cache: str, refresh: int, block_size: int) -> str:
        """The cache to use when decoding in blocks of ``block_size`` (0 = all at once):
        ``auto`` is the exact cache where there is one, else ``none``. ``ValueError`` for a
        cache this kind cannot use."""
        if cache not in CACHES:
            raise ValueError(f"unknown cache {cache!r}; choose one of {list(CACHES)}")
        if not isinstance(refresh, int) or refresh < 1:
            raise ValueError(
                f"refresh (calls between dual-cache refreshes) must be ≥ 1, got {refresh!r}"
            )
        exact = self.exact_cache is not None and self._exact_for(block_size)
        if cache == "auto":
            return self.exact_cache if exact else "none"
        if cache != "none" and not self.cacheable:
            raise ValueError(
                f"cache {cache!r} needs a puma Transformer (not an MDM-Prime model, a Hugging "
                "Face network or a plain function); use cache='none'"
            )
        if cache == "prefix" and not exact:
            raise ValueError(
                "cache 'prefix' is exact only for a causal model or a block-diffusion model "
                "decoded in (multiples of) its own blocks; use cache='dual' (approximate, "
                "bidirectional models) or 'none'"
            )
        if cache == "dual" and (self.exact_cache or self.shifted or block_size):
            raise ValueError(
                "cache 'dual' is for bidirectional models without ARM shift, decoded all at "
                "once; block-diffusion and autoregressive models use the exact cache='prefix'"
            )
        return cache

    def _exact_for(self, block_size: int) -> bool:
        return False

    def sample(self, model, x_t: torch.Tensor, mask_id: int, **options) -> SampleResult:
        """:func:`puma_mdm.sampling.sample` with this kind's block size and cache."""
        block_size = options.pop("block_size", None)
        block_size = self.decode_block if block_size is None else block_size
        cache = self.check_cache(
            options.pop("cache", "auto"), options.get("refresh", 4), block_size
        )
        return sample_ids(model, x_t, mask_id, block_size=block_size, cache=cache, **options)


@register_kind
class MDM(ModelKind):
    """A bidirectional token model: random masking or the PUMA pool, decoded all at once (with
    the approximate dual cache on request)."""

    name = "mdm"


@register_kind
class Block(ModelKind):
    """Block diffusion: each block denoised given the clean blocks before it (block-causal
    attention); decoded block by block, with the exact prefix cache."""

    name = "block"
    exact_cache = "prefix"

    @classmethod
    def model_config(cls, cfg: Config, task: Task) -> ModelConfig:
        block = cfg.training.block_size
        if task.seq_len % block:
            raise ConfigError(
                f"training.block_size={block} must divide the task's sequence length {task.seq_len}"
            )
        return _with(super().model_config(cfg, task), block_size=block)

    def forward_process(self, stream, t, mask_id, seed, device) -> ForwardProcess:
        if t.strategy == "standard":
            return BlockMasking(
                stream,
                t.batch_size,
                mask_id,
                self.cfg.block_size,
                seed=seed,
                form=t.elbo_form,
                device=device,
            )
        p = t.puma
        return BlockPool(
            stream,
            t.batch_size,
            mask_id,
            self.cfg.block_size,
            k_schedule=p.k_schedule,
            mode=p.mode,
            tau=p.tau,
            seed=seed,
            device=device,
        )

    def logits(self, net, batch: Batch) -> torch.Tensor:
        """Block models see ``[x_t | x0]`` (masking/block.py)."""
        return block_logits(net, batch.x_t, batch.x0, self.cfg.block_size)

    def scored_batch(self, model, x0, prompt, mask_id, generator, form="count"):
        batch = mask_blocks(x0, prompt, mask_id, self.cfg.block_size, generator, form)
        return batch, block_logits(model, batch.x_t, batch.x0, self.cfg.block_size)

    @property
    def decode_block(self) -> int:
        return self.cfg.block_size

    def _exact_for(self, block_size: int) -> bool:
        return block_size > 0 and block_size % self.cfg.block_size == 0


@register_kind
class ARM(ModelKind):
    """An autoregressive model: next-token targets, decoded one token per step."""

    name = "arm"
    exact_cache = "prefix"

    @classmethod
    def model_config(cls, cfg: Config, task: Task) -> ModelConfig:
        return _with(super().model_config(cfg, task), causal=True, shift=True)

    def forward_process(self, stream, t, mask_id, seed, device) -> ForwardProcess:
        return NextToken(stream, t.batch_size, device)

    def scored_batch(self, model, x0, prompt, mask_id, generator, form="count"):
        """Next-token targets: the exact NLL."""
        return next_token_batch(x0, prompt), model(x0)

    @property
    def decode_block(self) -> int:
        return 1

    def _exact_for(self, block_size: int) -> bool:
        return block_size > 0


@register_kind
class Prime(ModelKind):
    """MDM-Prime: the forward processes run over digit sequences, the loss and bound are the
    digit ones, and sampling reveals digits (prime/)."""

    name = "prime"
    cacheable = False
    entropy_bounded = False

    @classmethod
    def model_config(cls, cfg: Config, task: Task) -> ModelConfig:
        return _with(super().model_config(cfg, task), prime_digits=cfg.model.prime.digits)

    @classmethod
    def build(cls, cfg: Config, task: Task) -> torch.nn.Module:
        return PrimeTransformer(cls.model_config(cfg, task))

    @property
    def codec(self):
        return codec_of(self.cfg)

    def stream(self, model, train, task, rank, world, seed):
        shard = in_memory(train, task)[rank::world]
        return digit_stream(shard.x0, shard.prompt_mask, self.codec, seed=seed)

    def forward_process(self, stream, t, mask_id, seed, device) -> ForwardProcess:
        codec = self.codec
        tokens = super().forward_process(stream, t, codec.mask_digit, seed, device)
        return DigitProcess(tokens, codec)

    def training_loss(self, cfg: Config) -> Loss:
        return functools.partial(prime_loss, codec=self.codec, form=cfg.model.prime.loss)

    def eval_nll(self, model, examples, mask_id, batch_size) -> dict:
        """The digit-marginal bound, and the joint form (not a bound) beside it."""
        return prime_nll_bound(model, examples, batch_size=batch_size)

    def eval_report(self, model, task, examples, **options):
        """NLL bounds, NFE and idle steps per policy (prime/evaluate.py ``prime_eval``)."""
        report = prime_eval(model, task, examples, **options)
        return "prime", report, format_prime(report)

    def sample(self, model, x_t, mask_id, **options) -> SampleResult:
        """Digit by digit (:func:`puma_mdm.prime.sampling.sample_tokens`)."""
        bound = options.pop("entropy_bound", None)
        total, cache = options.pop("entropy_sum", None), options.pop("cache", "auto")
        if bound is not None or total is not None or cache not in ("auto", "none"):
            raise ValueError(
                "MDM-Prime models are sampled digit by digit: entropy_bound, entropy_sum and "
                "cache do not apply; use k, steps or threshold and cache='none'"
            )
        for unused in ("block_size", "eos_id", "refresh"):
            options.pop(unused, None)
        return sample_tokens(model, x_t, mask_id, model.codec, **options)


@register_kind
class HF(ModelKind):
    """A Hugging Face network trained as a plain bidirectional MDM (hf/adapter.py): no ARM
    shift, no blocks, no key-value cache of ours."""

    name = "hf"
    cacheable = False
    shifted = False

    @classmethod
    def build(cls, cfg: Config, task: Task) -> torch.nn.Module:
        from puma_mdm.hf.adapter import build_hf_denoiser  # needs the optional hf extra

        return build_hf_denoiser(cfg.model, task)

    def stream(self, model, train, task, rank, world, seed):
        train = in_memory(train, task)
        model.check_examples(train.x0)  # its own mask token is a real id
        return super().stream(model, train, task, rank, world, seed)

    def hf_network(self, model) -> torch.nn.Module:
        return model.hf


@register_kind
class Function(ModelKind):
    """A plain function ids (B, L) → logits (B, L, V), e.g. a test double: decoded all at once
    unless a block size is given, without a key-value cache."""

    name = "function"
    cacheable = False
    shifted = False


def _with(cfg: ModelConfig, **changes) -> ModelConfig:
    return ModelConfig(**{**cfg.to_dict(), **changes})


def in_memory(train: Examples | PreparedData, task: Task) -> Examples:
    if isinstance(train, PreparedData):
        raise ConfigError(
            f"task {task.name!r} streams prepared shards from disk; Hugging Face "
            "networks and MDM-Prime need the training set in memory"
        )
    return train


def kind_for_config(cfg: Config) -> type[ModelKind]:
    """The kind a training config asks for."""
    if cfg.model.hf_path:
        return HF
    if cfg.model.prime.digits:
        return Prime
    if cfg.training.strategy == "arm":
        return ARM
    return Block if cfg.training.block_size else MDM


def kind_of(model) -> ModelKind:
    """The kind a network declares (``model.kind``); anything else is a plain function."""
    name = getattr(model, "kind", Function.name)
    if name not in KINDS:
        raise ValueError(f"model kind {name!r} is not one of {sorted(KINDS)}")
    return KINDS[name](getattr(model, "cfg", None))


def build_model(cfg: Config, task: Task) -> torch.nn.Module:
    """A fresh network of the kind ``cfg`` asks for."""
    return kind_for_config(cfg).build(cfg, task)


def load_model(
    directory: str | Path,
    map_location: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """Load any network written by ``save_pretrained`` / ``puma train``: ours (the MDM-Prime
    network when its config has digits) or a Hugging Face network trained with
    ``model.hf_path``, after checking every file against the directory's manifest.
    ``trust_remote_code`` is the caller's decision to run Python code shipped in a Hugging Face
    model directory; nothing in the directory can grant it."""
    directory = Path(directory)
    check_manifest(directory)
    if (directory / HF_RECORD).is_file():
        from puma_mdm.hf.adapter import HFDenoiser  # a Hugging Face model trained by puma

        return HFDenoiser.from_pretrained(directory, map_location, trust_remote_code)
    network = Transformer
    config = directory / CONFIG_NAME
    if config.is_file():
        try:
            if json.loads(config.read_text()).get("prime_digits"):
                network = PrimeTransformer
        except (ValueError, AttributeError):
            pass  # from_pretrained names the problem
    return network.from_pretrained(directory, map_location)


def sample(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    mask_id: int,
    policy: str = "margin",
    k: int | None = None,
    steps: int | None = None,
    threshold: float | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    record_order: bool = False,
    autocast_dtype: torch.dtype | None = None,
    block_size: int | None = None,
    eos_id: int | None = None,
    entropy_bound: float | None = None,
    cache: str = "auto",
    refresh: int = 4,
    entropy_sum: float | None = None,
) -> SampleResult:
    """Fill every ``mask_id`` position of ``x_t`` (B, L) the way the model's kind decodes: with
    none of ``k``, ``steps``, ``threshold``, ``entropy_bound``, ``entropy_sum`` given, ``k=1``.
    ``model`` maps ids (B, L) to logits (B, L, V). An MDM-Prime model is sampled digit by digit;
    ``block_size`` defaults to 1 for an ARM, to the model's blocks for block diffusion, else 0
    (all at once).
    ``cache``: ``auto`` (``prefix`` where exact, else ``none``), ``none``, ``prefix`` or
    ``dual`` (refreshed every ``refresh`` steps). The rest is :func:`puma_mdm.sampling.sample`'s."""
    return kind_of(model).sample(
        model,
        x_t,
        mask_id,
        policy=policy,
        k=k,
        steps=steps,
        threshold=threshold,
        temperature=temperature,
        generator=generator,
        record_order=record_order,
        autocast_dtype=autocast_dtype,
        block_size=block_size,
        eos_id=eos_id,
        entropy_bound=entropy_bound,
        cache=cache,
        refresh=refresh,
        entropy_sum=entropy_sum,
    )
