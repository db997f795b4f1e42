"""An endless, reshuffled, resumable stream of training examples."""

from __future__ import annotations

import torch

from puma_mdm.masking.base import check_mask_id


class ExampleStream:
    """Yields examples ``(x0, prompt_mask)`` in epochs; epoch ``e`` visits every example once in
    the order ``randperm(N)`` drawn from seed ``seed + e``. Its state is two integers, so it
    resumes exactly and costs nothing to checkpoint."""

    def __init__(self, x0: torch.Tensor, prompt_mask: torch.Tensor, seed: int = 0) -> None:
        if x0.shape != prompt_mask.shape or x0.dim() != 2:
            raise ValueError(
                f"x0 and prompt_mask must both be (N, L); got {tuple(x0.shape)} and "
                f"{tuple(prompt_mask.shape)}"
            )
        if len(x0) == 0:
            raise ValueError("the training set is empty")
        full = prompt_mask.all(dim=1)
        if full.any():
            row = int(full.nonzero()[0])
            raise ValueError(
                f"example {row}: the prompt mask covers the whole sequence, so there is nothing "
                "to predict; leave at least one position outside the prompt"
            )
        self.x0, self.prompt_mask = x0, prompt_mask.bool()
        self.seed = seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.x0), generator=gen)

    @property
    def seq_len(self) -> int:
        return self.x0.shape[1]

    def check_mask_id(self, mask_id: int) -> None:
        check_mask_id(self.x0, mask_id)

    @property
    def consumed(self) -> int:
        """Number of examples handed out so far (epochs = consumed / N)."""
        return self.epoch * len(self.x0) + self.position

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` examples, crossing epoch boundaries as needed."""
        picks = []
        while n > 0:
            if self.position == len(self.x0):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            step = min(n, len(self.x0) - self.position)
            picks.append(self._order[self.position : self.position + step])
            self.position += step
            n -= step
        idx = torch.cat(picks) if picks else torch.empty(0, dtype=torch.long)
        return self.x0[idx], self.prompt_mask[idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
