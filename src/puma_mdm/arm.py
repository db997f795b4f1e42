"""Autoregressive models and MDMs initialised from one (docs/algorithms.md §3).

An ARM is the puma Transformer with causal attention and ``shift``: output ``i`` is computed at
position ``i−1``, i.e. ``p(x_i | x_<i)``. Its training loss is next-token cross-entropy over every
non-prompt position after the first, ``<eos>`` padding included (the EOS convention), weighted
``1/#targets`` per sequence like the MDM loss. The forward process therefore adds no noise:
``x_t = x0`` and the "masked" positions are the targets (:class:`NextToken`).

An MDM initialised from an ARM takes its weights with bidirectional attention and keeps the
shift. Because the shift lives in the model's output, the MDM loss, PUMA's confidence-ordered
reveal and every sampler use it unchanged. Position 0 has no predecessor, so shifted models need
every sequence to start with a prompt token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from puma_mdm.errors import ConfigError
from puma_mdm.masking.base import Batch
from puma_mdm.masking.stream import ExampleStream
from puma_mdm.model import Transformer


def check_first_is_prompt(prompt_mask: torch.Tensor) -> None:
    """Refuse data a shifted model cannot predict: position 0 outside the prompt."""
    bad = (~prompt_mask[:, 0]).nonzero().flatten()
    if len(bad):
        raise ConfigError(
            f"example {int(bad[0])} does not start with a prompt token, but an autoregressive "
            "(shifted) model cannot predict position 0; use a task encoding whose sequences "
            "start with a prompt (e.g. sudoku with the clue prefix, math programs)"
        )


def next_token_batch(x0: torch.Tensor, prompt_mask: torch.Tensor) -> Batch:
    """Clean inputs; every non-prompt position is a target, weighted ``1/#targets`` per row."""
    targets = ~prompt_mask
    return Batch(x0, x0, prompt_mask, targets, 1.0 / targets.sum(1).clamp(min=1).float())


class NextToken:
    """The ``arm`` strategy's forward process: clean inputs, targets at non-prompt positions ≥ 1."""

    def __init__(
        self,
        stream: ExampleStream,
        batch_size: int,
        device: torch.device | str = "cpu",
    ) -> None:
        check_first_is_prompt(stream.prompt_mask)
        self.stream, self.batch_size, self.device = stream, batch_size, torch.device(device)

    def batch(self, step: int) -> Batch:
        x0, prompt = (t.to(self.device) for t in self.stream.take(self.batch_size))
        return next_token_batch(x0, prompt)

    def update(self, logits: torch.Tensor) -> None:
        """Teacher forcing needs no feedback."""

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])


def init_from_arm(model: Transformer, directory: str | Path) -> None:
    """Copy the weights of the ARM saved in ``directory`` into ``model`` (a shifted MDM)."""
    arm = Transformer.from_pretrained(directory)
    if not (arm.cfg.causal and arm.cfg.shift):
        raise ConfigError(
            f"model.init_from: {directory} is not an autoregressive model; train one with "
            "training.strategy=arm and point init_from at its model/ directory"
        )
    mine, theirs = model.state_dict(), arm.state_dict()
    diff = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if diff or set(theirs) - set(mine):
        raise ConfigError(
            f"model.init_from: the ARM in {directory} has another shape (first mismatch: "
            f"{(diff or sorted(set(theirs) - set(mine)))[0]}); use the same model section and task"
        )
    model.load_state_dict(theirs)
