"""The training loop: config → task → forward process → model → loss → optimiser.

One step = take the forward process's batch, forward it (in ``grad_accum`` micro-batches),
backward the MDM loss, clip, AdamW step, scheduler step, then hand the same forward's
detached logits back to the forward process (PUMA advances its pool; random masking ignores
them). Checkpoints capture everything needed to continue bit-exactly on CPU.

Under ``torchrun`` every rank trains on its own shard of the training set with its own forward
process (its own PUMA pool) and seed ``training.seed + rank``; ``batch_size`` is per rank. The
model is a DDP replica, or (``training.parallel=fsdp``) an FSDP2 shard whose optimiser state and
EMA are sharded too and checkpointed with ``torch.distributed.checkpoint``. Rank 0 logs and
writes every other file; checkpoints hold every rank's forward-process state.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from puma_mdm.errors import CheckpointError, ConfigError, PumaError
from puma_mdm.evaluate import evaluate
from puma_mdm.files import write_text
from puma_mdm.kinds import build_model, kind_of, load_model
from puma_mdm.losses import normalize_loss
from puma_mdm.masking import Batch
from puma_mdm.model import Transformer
from puma_mdm.precision import autocast_dtype
from puma_mdm.pretrained import TASK_FILE
from puma_mdm.tasks import build_task
from puma_mdm.train.checkpoint import (
    SHARDS,
    begin_checkpoint,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
    staging_path,
    write_model_dir,
)
from puma_mdm.train.config import RESUMABLE, Config, changed_on_resume, load_config, to_yaml
from puma_mdm.train.distributed import Distributed, full_tensor
from puma_mdm.train.run_dir import LOCK_NAME, RunLock, check_fresh, clear_run


class TrainingStopped(PumaError):
    """The run stopped early (non-finite loss); the last good checkpoint is intact."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written after the current step."""


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def task_record(cfg: Config) -> str:
    """What ``task.json`` beside saved weights holds: which task (and options) they solve."""
    return json.dumps({"name": cfg.task.name, "options": dict(cfg.task.options)}, indent=2)


class Trainer:
    """Train one run. ``resume=True`` continues from the latest checkpoint in ``out_dir``;
    otherwise ``out_dir`` must not hold a run yet, unless ``overwrite=True`` replaces it. The main
    process holds the run directory's lock (run_dir.py) from here to the end of :meth:`train`."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.logging.out_dir)
        self.dist = Distributed.setup(cfg.training.device, cfg.training.parallel)
        self.lock = None
        if not self.dist.is_main:
            self._setup(resume)
            return
        created = not self.out_dir.exists()
        self.lock = RunLock(self.out_dir).acquire()
        try:
            if not resume:
                check_fresh(self.out_dir, overwrite)
            self._setup(resume)
            if not resume:
                clear_run(self.out_dir)
        except BaseException:
            self.lock.release()
            if created:  # leave no trace of a run that never started
                (self.out_dir / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.out_dir.rmdir()
            raise

    def _setup(self, resume: bool) -> None:
        cfg = self.cfg
        t = cfg.training
        self.device = self.dist.device
        self.amp = autocast_dtype(t.autocast, self.device)
        if t.threads > 0:
            torch.set_num_threads(t.threads)

        self.task = build_task(cfg.task.name, cfg.task.options)
        with self.dist.main_first():  # rank 0 builds (and caches or prepares) the data first
            train = self.task.training_data()
            self.eval_set = self.task.eval_examples()[: cfg.eval.examples]
        rank, world = self.dist.rank, self.dist.world_size
        if len(self.eval_set) < world:
            raise ConfigError(
                f"eval.examples={len(self.eval_set)} is less than the {world} processes; "
                "each process evaluates a share of the held-out set"
            )
        torch.manual_seed(t.seed)  # the same initial weights (and EMA) on every rank
        self.model = build_model(cfg, self.task).to(self.device)
        self.model_class = type(self.model)  # FSDP2 changes the instance's class
        self.kind = kind_of(self.model)  # how this network trains and is scored (kinds.py)
        seed = t.seed + rank  # each rank: its own data order, masks and dropout
        torch.manual_seed(seed)
        self.stream = self.kind.stream(self.model, train, self.task, rank, world, seed)
        self.loss = self.kind.training_loss(cfg)
        self.process = self.kind.forward_process(
            self.stream, t, self.task.mask_id, seed + 1, self.device
        )
        self.dist.shard(self.model, self.amp)

        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay}],
            lr=t.lr,
            betas=tuple(t.betas),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.warmup_steps, t.steps, t.min_lr_ratio)
        )
        self.ema = [p.detach().clone() for p in self.model.parameters()] if t.ema > 0 else None
        self.step = 0
        self.best_accuracy = -math.inf  # best score(): accuracy, or −NLL without accuracy
        self.skipped = 0
        self.sequences_seen = 0  # by all ranks, counted in train_step
        self.train_seconds = 0.0  # wall-clock inside training steps (evaluation excluded)
        self.stop_requested = False  # a stop signal reached some rank (agreed every step)
        self._stop_signal: int | None = None
        self.resumed = resume
        if resume:
            self._resume()
        self.net = self.dist.wrap(self.model)  # what forward/backward run through
        if t.compile:  # fuses the elementwise work; evaluation keeps the eager model
            self.net = torch.compile(self.net)

    def _resume(self) -> None:
        state, path = load_checkpoint(self.out_dir)
        fixed = changed_on_resume(load_config(path / "config.yaml"), self.cfg)
        if fixed:
            raise CheckpointError(
                f"cannot resume {self.out_dir} with {fixed[0]}: it is part of the saved state "
                f"of the run; on --resume only {', '.join(RESUMABLE)} may change. Start a new "
                "run (another --out-dir) for other settings"
            )
        # under FSDP the weights themselves come from the shards
        where = "cpu" if self.dist.sharded else self.device
        saved = load_model(path, where, self.cfg.model.trust_remote_code)
        ranks = state["ranks"]
        if len(ranks) != self.dist.world_size:
            raise CheckpointError(
                f"cannot resume from {path}: it was written by {len(ranks)} process(es), this "
                f"run has {self.dist.world_size}; resume with the same number of processes"
            )
        if state.get("parallel", "ddp") != self.dist.parallel and self.dist.enabled:
            raise CheckpointError(
                f"cannot resume from {path}: it was written with training.parallel="
                f"{state.get('parallel', 'ddp')}, this run uses {self.dist.parallel}"
            )
        if self.dist.sharded:
            self._load_shards(path / SHARDS)
        else:
            self.model.load_state_dict(saved.state_dict())
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and "ema" in state:
                self.ema = [e.to(self.device) for e in state["ema"]]
        self.scheduler.load_state_dict(state["scheduler"])
        mine = ranks[self.dist.rank]
        self.process.load_state_dict(mine["process"])
        torch.set_rng_state(mine["rng"])
        if "cuda_rng" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        self.step = int(state["step"])
        self.best_accuracy = float(state["best_accuracy"])
        self.skipped = int(state["skipped"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.dist.is_main:
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint (and a line torn by a crash), so a
        resumed log has no repeated steps."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        write_text(path, "".join(kept))

    # -- one step ------------------------------------------------------------------------------
    def _forward_backward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and detached logits of the whole batch, accumulating gradients over chunks."""
        parts = self.cfg.training.grad_accum
        size = len(batch.x0) // parts
        losses, logits_all = [], []
        for i in range(parts):
            rows = slice(i * size, (i + 1) * size)
            micro = Batch(*(getattr(batch, f)[rows] for f in Batch.__dataclass_fields__))
            # gradients are reduced over the ranks once, in the last micro-batch's backward
            with self.dist.accumulating(self.net, skip_sync=i < parts - 1):
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    logits = self.kind.logits(self.net, micro)
                loss = self.loss(logits, micro)
                (loss / parts).backward()
            losses.append(loss.detach())
            logits_all.append(logits.detach())
        return torch.stack(losses).mean(), torch.cat(logits_all)

    def _agree(self, loss: float) -> float:
        """The loss averaged over ranks; also agree on stopping and count the sequences seen
        (one small all-reduce per step, so every rank takes the same decisions)."""
        stop = float(self._stop_signal is not None)
        total, stops, seen = self.dist.all_sum([loss, stop, float(self.stream.consumed)])
        self.stop_requested = stops > 0
        self.sequences_seen = int(seen)
        return total / self.dist.world_size

    def train_step(self) -> float | None:
        """One optimiser step; returns the loss (averaged over ranks), or None when a
        non-finite loss was skipped."""
        t = self.cfg.training
        batch = normalize_loss(self.process.batch(self.step), t.loss_norm)
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self._forward_backward(batch)
        value = self._agree(float(loss))
        if not math.isfinite(value):
            if not t.skip_nonfinite:
                raise TrainingStopped(
                    f"non-finite loss ({value}) at step {self.step}; stopped without saving. "
                    f"The last good checkpoint in {self.out_dir}/checkpoints is intact: lower "
                    "training.lr or set training.skip_nonfinite=true, then --resume"
                )
            self.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            params = [p.detach() for p in self.model.parameters()]
            torch._foreach_lerp_(self.ema, params, 1 - t.ema)
        self.process.update(logits)
        return value

    # -- evaluation, checkpoints, logging ------------------------------------------------------
    @torch.no_grad()
    def eval_model(self) -> Transformer:
        """The weights to evaluate and publish: the EMA weights when enabled. (A copy, not a
        fresh model: building one would draw from the RNG and change the training run.)
        Under FSDP a collective: every rank gets the whole model, unsharded."""
        if self.dist.sharded:
            return self.full_model(self.ema or list(self.model.parameters()))
        if self.ema is None:
            return self.model
        model = copy.deepcopy(self.model)
        for p, e in zip(model.parameters(), self.ema, strict=True):
            p.copy_(e)
        return model

    @torch.no_grad()
    def full_model(self, params: list[torch.Tensor]) -> Transformer:
        """A plain (unsharded) model holding the all-gathered ``params`` (FSDP only)."""
        with torch.random.fork_rng(devices=[]):  # building draws from the CPU RNG
            model = self.model_class(self.model.cfg).to(self.device)
        for p, value in zip(model.parameters(), params, strict=True):
            p.copy_(full_tensor(value.detach()))
        return model

    def published_weights(self) -> Transformer:
        """What a checkpoint's ``model.safetensors`` holds: the training weights, unsharded."""
        if self.dist.sharded:
            return self.full_model(list(self.model.parameters()))
        return self.model

    def sharded_state(self) -> dict:
        """The FSDP state ``torch.distributed.checkpoint`` saves and loads in place: model,
        optimiser and EMA shards, keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        if self.ema is not None:
            names = [name for name, _ in self.model.named_parameters()]
            state["ema"] = dict(zip(names, self.ema, strict=True))
        return state

    def _load_shards(self, directory: Path) -> None:
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is missing: the checkpoint has no FSDP shards")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self.sharded_state()
        dcp.load(state, checkpoint_id=directory)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )

    def run_eval(self, model: Transformer) -> dict[str, float]:
        """Accuracy, NFE per batch and NLL bound of ``model`` on the held-out set (only the
        NLL bound and perplexity for tasks without accuracy); each rank evaluates every
        ``world_size``-th example and the sums are all-reduced."""
        e = self.cfg.eval
        share = self.eval_set[self.dist.rank :: self.dist.world_size]
        n = len(share)
        sums = {}
        if self.task.scores_outputs:  # text corpora are judged by likelihood alone
            for policy in (e.policy, *e.extra_policies):
                local = evaluate(
                    model,
                    self.task,
                    share,
                    policy=policy,
                    k=e.k,
                    batch_size=e.batch_size,
                    autocast_dtype=self.amp,
                )
                suffix = "" if policy == e.policy else f"_{policy}"
                sums |= {
                    f"accuracy{suffix}": local["accuracy"] * n,
                    f"nfe{suffix}": local["nfe"] * n,
                }
        nlls = self.kind.eval_nll(model, share, self.task.mask_id, e.batch_size)
        sums |= {key: value * n for key, value in nlls.items()}
        total, *values = self.dist.all_sum([n, *sums.values()])
        metrics = {key: value / total for key, value in zip(sums, values, strict=True)}
        if "accuracy" in metrics:
            for key in metrics:
                if key.startswith("accuracy"):
                    metrics[key] = round(metrics[key] * total) / total  # a count
        else:
            metrics["perplexity"] = math.exp(metrics["nll"])
        return {**metrics, "n": int(total)}

    def record_files(self) -> dict[str, str]:
        """What is written beside saved weights: the resolved config, the task they solve and
        the task's own files (a trained tokenizer)."""
        return {
            "config.yaml": to_yaml(self.cfg),
            TASK_FILE: task_record(self.cfg),
            **self.task.artifacts(),
        }

    def rank_state(self) -> dict:
        """What differs between ranks: the forward process (PUMA pool, data position) and RNGs."""
        state = {"process": self.process.state_dict(), "rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def train_state(self) -> dict:
        """Everything a resumed run needs, with every rank's own state under ``ranks``
        (a collective: every rank calls it; only rank 0 gets the ranks' states). Under FSDP
        the optimiser and EMA are in the checkpoint's shards instead."""
        state = {
            "step": self.step,
            "parallel": self.dist.parallel,
            "scheduler": self.scheduler.state_dict(),
            "ranks": self.dist.gather(self.rank_state()),
            "best_accuracy": self.best_accuracy,
            "skipped": self.skipped,
            "train_seconds": self.train_seconds,
        }
        if not self.dist.sharded:
            state["optimizer"] = self.optimizer.state_dict()
            if self.ema is not None:
                state["ema"] = [e.cpu() for e in self.ema]
        return state

    def save(self) -> Path:
        """Checkpoint this step (every rank takes part; rank 0 writes all but the shards)."""
        state = self.train_state()
        weights = self.published_weights()
        if self.dist.sharded:
            if self.dist.is_main:
                begin_checkpoint(self.out_dir, self.step)
            self.dist.barrier()
            import torch.distributed.checkpoint as dcp

            shards = staging_path(self.out_dir, self.step) / SHARDS
            dcp.save(self.sharded_state(), checkpoint_id=shards)
        if self.dist.is_main:
            save_checkpoint(
                self.out_dir,
                self.step,
                weights,
                state,
                self.record_files(),
                self.cfg.checkpoint.keep_last,
                staged=self.dist.sharded,
            )
        self.dist.barrier()  # the next save's clean-up must not race this one
        return checkpoint_path(self.out_dir, self.step)

    def _handle_signal(self, signum: int, frame) -> None:
        self._stop_signal = signum

    def _signal_name(self) -> str:
        if self._stop_signal is None:
            return "a signal to another process"
        return signal.Signals(self._stop_signal).name

    def _relaunch_hint(self) -> str:
        if not self.dist.enabled:
            return ""
        return f" (under torchrun, with the same {self.dist.world_size} processes)"

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train to ``training.steps``; returns the last evaluation's metrics."""
        try:
            return self._train()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _train(self) -> dict:
        cfg, t = self.cfg, self.cfg.training
        main = self.dist.is_main
        if main:
            write_text(self.out_dir / "config.yaml", to_yaml(cfg))
        # after a resume TensorBoard hides the events of the replayed steps (purge_step)
        log = Logger(
            self.out_dir, cfg, enabled=main, purge_step=self.step + 1 if self.resumed else None
        )
        old_handlers = {s: signal.signal(s, self._handle_signal) for s in _STOP_SIGNALS}
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            disable=not (cfg.logging.progress and main),
            desc=f"{t.strategy} {cfg.task.name}",
            dynamic_ncols=True,
        )
        tokens_per_step = t.batch_size * self.task.seq_len * self.dist.world_size
        metrics: dict = {}
        tick = time.perf_counter()
        try:
            while self.step < t.steps:
                start = time.perf_counter()
                loss = self.train_step()
                self.train_seconds += time.perf_counter() - start
                self.step += 1
                bar.update(1)
                if loss is not None and (self.step % cfg.logging.log_every == 0):
                    now = time.perf_counter()
                    rate = cfg.logging.log_every * tokens_per_step / (now - tick)
                    tick = now
                    lr = self.scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
                    log.write(
                        self.step,
                        {
                            "loss": loss,
                            "lr": lr,
                            "tokens_per_s": rate,
                            "sequences_seen": self.sequences_seen,
                        },
                    )
                if self.step == t.steps or (cfg.eval.every and self.step % cfg.eval.every == 0):
                    metrics = self._evaluate_and_publish(log)
                    if main:
                        bar.write(f"step {self.step}: eval {headline(metrics)}")
                due = cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0
                if self.step == t.steps or due or self.stop_requested:
                    path = self.save()
                    if self.stop_requested:
                        raise TrainingInterrupted(
                            f"stopped by {self._signal_name()} after step {self.step}; "
                            f"checkpoint {path}. Resume with: puma train --resume {self.out_dir}"
                            + self._relaunch_hint()
                        )
        finally:
            bar.close()
            log.close()
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
        final = self.eval_model()  # every rank: a collective under FSDP
        if main:
            write_model_dir(final, self.out_dir / "model", self.record_files())
        return metrics

    def _evaluate_and_publish(self, log: Logger) -> dict:
        """Evaluate (on every rank) and, on rank 0, log and update ``best/``."""
        model = self.eval_model()
        metrics = self.run_eval(model)
        log.write(
            self.step,
            {f"eval/{k}": v for k, v in metrics.items()}
            | {"skipped": self.skipped, "train_seconds": round(self.train_seconds, 3)},
        )
        if score(metrics) > self.best_accuracy:
            self.best_accuracy = score(metrics)
            if self.dist.is_main:
                write_model_dir(model, self.out_dir / "best", self.record_files())
        return metrics


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def score(metrics: dict) -> float:
    """What ``best/`` maximises: accuracy, or −NLL for tasks judged by likelihood alone."""
    return metrics["accuracy"] if "accuracy" in metrics else -metrics["nll"]


def headline(metrics: dict) -> str:
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.3f}"
    return f"nll {metrics['nll']:.4f} (perplexity {metrics['perplexity']:.2f})"


class Logger:
    """Metrics to ``metrics.jsonl`` (always), TensorBoard and Weights & Biases (optional); a
    disabled logger (every rank but 0) writes nothing."""

    def __init__(
        self, out_dir: Path, cfg: Config, enabled: bool = True, purge_step: int | None = None
    ) -> None:
        self.file = self.tb = self.wandb = None
        if not enabled:
            return
        self.file = open(out_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge_step)
        if cfg.logging.wandb:
            self.wandb = start_wandb(out_dir, cfg)

    def write(self, step: int, values: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(out_dir: Path, cfg: Config):
    """A wandb run (offline by default, so no network is needed), or a clear error."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "logging.wandb=true needs the wandb package: pip install wandb "
            "(or set logging.wandb=false)"
        ) from None
    return wandb.init(
        project=cfg.logging.wandb_project,
        dir=str(out_dir),
        mode=cfg.logging.wandb_mode,
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
    )
