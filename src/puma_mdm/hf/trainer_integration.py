"""PUMA inside ``transformers.Trainer``: swap ``Trainer`` for :class:`PumaTrainer`.

* The forward process (the PUMA pool, or random masking for the baseline) lives beside the
  Trainer as ``trainer.process`` and is fed from the Trainer's ``train_dataset``: rows with
  equal-length ``input_ids`` and, optionally, a ``prompt_mask`` (1 = conditioning position,
  never masked, never scored). They are read once into an :class:`ExampleStream` (reshuffled
  every epoch, resumable from two integers); each process of a multi-GPU run keeps its own
  shard, pool and seed (``args.seed + process_index``).
* Every training forward runs on the pool's ``x_t`` (the model's own mask token at masked
  positions). The loss is puma's MDM loss (per sequence ``1/#masked`` by default, the ELBO) and
  the same forward's detached logits advance the pool: no extra forward pass. The batches of the
  Trainer's own dataloader only clock the steps; their contents are not used. With gradient
  accumulation every micro-batch is one pool step.
* Every checkpoint ``checkpoint-N/`` also holds ``puma_state-<process>.pt`` (the pool, its data
  position and RNG), and ``train(resume_from_checkpoint=...)`` restores it, so a resumed run
  continues with the identical pool.

Fresh sequences enter the pool at about ``B/K`` per step, so the Trainer's epochs (which count
steps) are not passes over the data; ``trainer.process.stream.consumed`` says how many
sequences were used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from puma_mdm.errors import CheckpointError, ConfigError
from puma_mdm.files import atomic_path
from puma_mdm.hf import require
from puma_mdm.hf.adapter import ADD_MASK_HINT, HFModelError, exclude_mask, probe
from puma_mdm.losses import LOSS_NORMS, mdm_loss, normalize_loss
from puma_mdm.masking import ExampleStream, ForwardProcess, ProgressivePool, RandomMasking
from puma_mdm.masking.settings import PumaSettings

FEATURE = "PumaTrainer (transformers.Trainer integration)"
transformers = require("transformers", FEATURE)
require("accelerate", FEATURE)  # what transformers.Trainer runs on

STATE_FILE = "puma_state-{rank}.pt"
STRATEGIES = ("progressive", "standard")


@dataclass
class PumaArguments(PumaSettings):
    """How the Trainer's sequences are masked: the PUMA settings (``k_schedule``, ``mode``,
    ``tau``, as in the ``training.puma`` config section) and these; ``mask_token_id`` defaults
    to the model config's, then the tokenizer's (``processing_class``)."""

    strategy: str = "progressive"  # progressive (PUMA) | standard (random masking)
    loss_norm: str = "sequence"  # sequence (1/n_b, the ELBO) | token (mean over masked tokens)
    mask_token_id: int | None = None
    prompt_column: str = "prompt_mask"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"PumaArguments.strategy: {self.strategy!r} is not in {STRATEGIES}")
        if self.loss_norm not in LOSS_NORMS:
            raise ConfigError(f"PumaArguments.loss_norm: {self.loss_norm!r} is not in {LOSS_NORMS}")
        self.check("PumaArguments")


def dataset_examples(dataset, prompt_column: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0`` (N, L) and ``prompt_mask`` (N, L) from rows holding ``input_ids``."""
    if dataset is None or len(dataset) == 0:
        raise ConfigError("PumaTrainer needs a non-empty train_dataset of rows with input_ids")
    rows = [dataset[i] for i in range(len(dataset))]
    if "input_ids" not in rows[0]:
        raise ConfigError(
            f"train_dataset rows need input_ids (token ids); the first row has {sorted(rows[0])}"
        )
    lengths = {len(row["input_ids"]) for row in rows}
    if len(lengths) > 1:
        raise ConfigError(
            f"PUMA needs equal-length sequences, got lengths {sorted(lengths)[:5]}: pad them to "
            "one length (e.g. tokenizer(..., padding='max_length', max_length=L))"
        )
    x0 = torch.as_tensor([list(row["input_ids"]) for row in rows], dtype=torch.long)
    if prompt_column in rows[0]:
        prompt = torch.as_tensor([list(row[prompt_column]) for row in rows]).bool()
    else:
        prompt = torch.zeros_like(x0, dtype=torch.bool)
    return x0, prompt


class _SaveState(transformers.TrainerCallback):
    """Writes the forward process's state into the checkpoint the Trainer just saved."""

    def __init__(self, trainer: PumaTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        prefix = transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
        folder = Path(args.output_dir) / f"{prefix}-{state.global_step}"
        path = folder / STATE_FILE.format(rank=args.process_index)
        with atomic_path(path) as tmp:
            torch.save(self.trainer.puma_state(), tmp)
        return control


class PumaTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains the model as a masked diffusion model with
    PUMA (or random masking); ``puma`` says how. The model must map ``input_ids`` to an output
    with ``.logits`` and attend both ways."""

    def __init__(self, *args, puma: PumaArguments | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.puma = puma or PumaArguments()
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: scale it for GA
        n_classes = probe(self.model, type(self.model).__name__)
        self.mask_token_id = self._mask_token_id()
        if self.mask_token_id >= n_classes:
            raise HFModelError(
                f"mask token id {self.mask_token_id} is outside the model's {n_classes} classes; "
                f"{ADD_MASK_HINT}"
            )
        self.process = self._forward_process()
        self.add_callback(_SaveState(self))

    def _mask_token_id(self) -> int:
        for source in (
            self.puma.mask_token_id,
            getattr(self.model.config, "mask_token_id", None),
            getattr(self.processing_class, "mask_token_id", None),
        ):
            if source is not None:
                return int(source)
        raise HFModelError(
            "PumaTrainer: neither the model config nor the tokenizer (processing_class) names a "
            f"mask token, and PumaArguments.mask_token_id is unset; {ADD_MASK_HINT}"
        )

    def _forward_process(self) -> ForwardProcess:
        args, puma = self.args, self.puma
        x0, prompt = dataset_examples(self.train_dataset, puma.prompt_column)
        rank, world = args.process_index, args.world_size
        seed = args.seed + rank
        stream = ExampleStream(x0[rank::world], prompt[rank::world], seed=seed)
        B, device = args.per_device_train_batch_size, args.device
        try:
            if puma.strategy == "standard":
                return RandomMasking(stream, B, self.mask_token_id, seed + 1, device=device)
            return ProgressivePool(
                stream,
                B,
                self.mask_token_id,
                k_schedule=puma.k_schedule,
                mode=puma.mode,
                tau=puma.tau,
                seed=seed + 1,
                device=device,
            )
        except ValueError as err:  # e.g. the data holds the mask token
            raise ConfigError(f"PumaTrainer: {err}") from None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: the MDM loss on the pool's batch, then advance the pool with the same
        logits. Evaluation (``model.eval()``): the Trainer's own loss on ``inputs``."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch = normalize_loss(self.process.batch(self.state.global_step), self.puma.loss_norm)
        outputs = model(input_ids=batch.x_t)
        logits = exclude_mask(outputs.logits, self.mask_token_id)
        loss = mdm_loss(logits, batch)
        self.process.update(logits.detach())
        return (loss, outputs) if return_outputs else loss

    # -- checkpoints ---------------------------------------------------------------------------
    def puma_state(self) -> dict:
        return {"strategy": self.puma.strategy, "process": self.process.state_dict()}

    def load_puma_state(self, checkpoint: str | os.PathLike) -> None:
        path = Path(checkpoint) / STATE_FILE.format(rank=self.args.process_index)
        if not path.is_file():
            raise CheckpointError(
                f"{checkpoint} has no PUMA state ({path.name}): it was written by a plain "
                "Trainer or interrupted while saving; resume from another checkpoint"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["strategy"] != self.puma.strategy:
            raise CheckpointError(
                f"{checkpoint} was trained with strategy {state['strategy']!r}, this run uses "
                f"{self.puma.strategy!r}; resume with the same PumaArguments.strategy"
            )
        self.process.load_state_dict(state["process"])

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``, restoring the PUMA state with the rest of the checkpoint."""
        path = resume_from_checkpoint
        if path is True:
            path = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
        if path:
            self.load_puma_state(path)
        return super().train(resume_from_checkpoint=path or resume_from_checkpoint, **kwargs)
