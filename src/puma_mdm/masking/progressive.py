"""PUMA — Progressive UnMAsking by batch streaming (docs/algorithms.md §3).

A pool of ``B`` partially masked sequences is the training batch. Each sequence sits at a
phase ``j ∈ {0..K−1}``; stage ``j`` has an unmasked fraction ``r ~ U[j/K, (j+1)/K)`` of its
``L_eff`` non-prompt positions, i.e. ``u = min(round(r·L_eff), max(L_eff−1, 1))`` tokens.
After each optimiser step the pool advances every sequence by one phase using the same
forward's (detached) logits: it reveals the ``u(next) − #unmasked`` masked positions the
model is most confident about (highest max-probability), writing the ground truth ``x0``
there. Sequences whose phase wraps to 0 retire and are replaced from the data stream. So
the model trains on the masks its own confidence-ordered decoder will meet.

**Without host–device synchronisation** (``sync_free``, the default on CUDA): how many
sequences retire is known only on the device, so instead of asking the stream for exactly
that many, the pool keeps the stream's next ``2B`` rows on the device in a ring and a device
counter ``head`` of how many it has used; retiring rows take ring rows ``head, head+1, ...``
in row order (a cumulative sum, no ``nonzero``), and fresh masks and stage targets are drawn
for all ``B`` rows on the device's generator and kept where a row retired. Before each
update the ring is topped up from the previous update's ``head``, copied to the host without
blocking one step earlier (the trainer reads the loss in between, so it has long arrived).
Sequences enter in the same stream order as on the exact path, but the random draws differ,
so the two paths are not bit-identical; the CPU default is the exact path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from puma_mdm.masking.base import Batch, generator_from, pick_top, random_scores, to_device
from puma_mdm.masking.stream import ExampleStream

MODES = ("fixed", "confidence_collapse")
MODE_ALIASES = {"standard": "fixed"}  # the old name of ``fixed``, still accepted


class KSchedule:
    """Piecewise-constant number of stages: ``[(K, step), ...]``; each entry takes effect at its
    step. Before the first entry's step the first K applies."""

    def __init__(self, entries: Sequence[Sequence[int]]) -> None:
        pairs = [(int(k), int(s)) for k, s in entries]
        if not pairs:
            raise ValueError("the K schedule is empty; give at least one [K, step] entry")
        if any(k < 1 for k, _ in pairs):
            raise ValueError(f"every K in the schedule must be ≥ 1, got {pairs}")
        if [s for _, s in pairs] != sorted(s for _, s in pairs):
            raise ValueError(f"K schedule steps must be increasing, got {pairs}")
        self.pairs = pairs

    def k_at(self, step: int) -> int:
        k = self.pairs[0][0]
        for value, start in self.pairs:
            if step >= start:
                k = value
        return k


class ProgressivePool:
    """The ``progressive`` (PUMA) strategy. ``batch(step)`` returns the pool as it is; call
    ``update(logits)`` with that batch's logits after the optimiser step."""

    def __init__(
        self,
        stream: ExampleStream,
        batch_size: int,
        mask_id: int,
        k_schedule: KSchedule | Sequence[Sequence[int]] = ((8, 0),),
        mode: str = "fixed",
        tau: float = 0.9,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sync_free: bool | None = None,
    ) -> None:
        mode = MODE_ALIASES.get(mode, mode)
        if mode not in MODES:
            raise ValueError(f"unknown PUMA mode {mode!r}; choose one of {MODES}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"confidence_collapse threshold tau must be in (0, 1], got {tau}")
        stream.check_mask_id(mask_id)
        self.stream, self.batch_size, self.mask_id = stream, batch_size, mask_id
        self.schedule = k_schedule if isinstance(k_schedule, KSchedule) else KSchedule(k_schedule)
        self.mode, self.tau, self.device = mode, tau, torch.device(device)
        self.sync_free = self.device.type == "cuda" if sync_free is None else sync_free
        self.generator = generator_from(seed, self.device if self.sync_free else "cpu")
        self.K = 0  # set by _rebuild on the first batch()
        self.x0 = self.x_t = self.prompt_mask = self.phase = torch.empty(0)
        self.retired = 0
        if self.sync_free:
            R, L = 2 * batch_size, stream.seq_len
            self.ring_x0 = torch.zeros(R, L, dtype=torch.long, device=self.device)
            self.ring_prompt = torch.zeros(R, L, dtype=torch.bool, device=self.device)
            self.head = torch.zeros((), dtype=torch.long, device=self.device)  # ring rows used
            self.retired = torch.zeros((), dtype=torch.long, device=self.device)
            pinned = self.device.type == "cuda"
            self._head_seen = torch.zeros((), dtype=torch.long, pin_memory=pinned)
            self._head_event = torch.cuda.Event() if pinned else None
            self.filled = 0  # rows ever loaded into the ring (host)

    # -- stage arithmetic ------------------------------------------------------------------
    def _target_unmasked(self, phase: torch.Tensor, l_eff: torch.Tensor) -> torch.Tensor:
        """u = min(round(r·L_eff), max(L_eff−1, 1)) with r ~ U[phase/K, (phase+1)/K)."""
        at = self.generator.device
        u01 = torch.rand(len(phase), generator=self.generator, dtype=torch.float64, device=at)
        r = (phase.double().to(at) + u01) / self.K
        u = torch.round(r * l_eff.double().to(at)).long()
        return torch.minimum(u, (l_eff.to(at) - 1).clamp(min=1)).to(self.device)

    def _fill(self, rows: torch.Tensor, phase: torch.Tensor) -> None:
        """Load fresh sequences into ``rows`` at ``phase``, randomly unmasked for that stage."""
        x0, prompt = (t.to(self.device) for t in self.stream.take(len(rows)))
        free = ~prompt
        u = self._target_unmasked(phase, free.sum(1))
        shown = pick_top(random_scores(x0.shape, self.generator, self.device), free, u)
        self.x0[rows], self.prompt_mask[rows], self.phase[rows] = x0, prompt, phase
        self.x_t[rows] = torch.where(shown | prompt, x0, self.mask_id)

    def _top_up(self) -> None:
        """Sync-free path: load stream rows into the ring until it holds ``2B`` unused rows
        beyond the last update's ``head``."""
        if self._head_event is not None:
            self._head_event.synchronize()  # recorded one update ago: already complete
        need = int(self._head_seen) + len(self.ring_x0) - self.filled
        if need <= 0:
            return
        x0, prompt = self.stream.take(need)
        slots = to_device((torch.arange(need) + self.filled) % len(self.ring_x0), self.device)
        self.ring_x0.index_copy_(0, slots, to_device(x0, self.device))
        self.ring_prompt.index_copy_(0, slots, to_device(prompt, self.device))
        self.filled += need

    def _replace(self, done: torch.Tensor, phase: torch.Tensor) -> None:
        """Sync-free path: rows where ``done`` take the next ring rows, at ``phase``."""
        slot = (self.head + done.long().cumsum(0) - 1) % len(self.ring_x0)
        x0, prompt = self.ring_x0[slot], self.ring_prompt[slot]
        free = ~prompt
        u = self._target_unmasked(phase, free.sum(1))
        shown = pick_top(random_scores(x0.shape, self.generator, self.device), free, u)
        rows = done.unsqueeze(1)
        self.x0 = torch.where(rows, x0, self.x0)
        self.prompt_mask = torch.where(rows, prompt, self.prompt_mask)
        self.x_t = torch.where(rows, torch.where(shown | prompt, x0, self.mask_id), self.x_t)
        self.phase = torch.where(done, phase, self.phase)
        used = done.sum()
        self.head += used
        self.retired += used
        self._head_seen.copy_(self.head, non_blocking=self._head_event is not None)
        if self._head_event is not None:
            self._head_event.record()

    def _rebuild(self, k: int) -> None:
        """(Re)start the pool with ``k`` stages: fresh sequences, phases spread evenly."""
        self.K = k
        B = self.batch_size
        L = self.stream.seq_len
        self.x0 = torch.zeros(B, L, dtype=torch.long, device=self.device)
        self.x_t = torch.zeros_like(self.x0)
        self.prompt_mask = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        self.phase = torch.zeros(B, dtype=torch.long, device=self.device)
        spread = torch.arange(B) * k // B
        if self.sync_free:
            perm = torch.randperm(B, generator=self.generator, device=self.device)
            self._top_up()
            all_rows = torch.ones(B, dtype=torch.bool, device=self.device)
            self._replace(all_rows, to_device(spread, self.device)[perm])
            self.retired -= B  # a rebuild retires nothing
            return
        phase = spread[torch.randperm(B, generator=self.generator)].to(self.device)
        self._fill(torch.arange(B, device=self.device), phase)

    # -- the ForwardProcess interface ---------------------------------------------------------
    def batch(self, step: int) -> Batch:
        k = self.schedule.k_at(step)
        if k != self.K:
            self._rebuild(k)
        masked = (self.x_t == self.mask_id) & ~self.prompt_mask
        weights = 1.0 / masked.sum(1).clamp(min=1).float()
        return Batch(self.x0, self.x_t.clone(), self.prompt_mask, masked, weights)

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        """Advance every sequence one phase using the logits of the batch just trained on."""
        if self.sync_free:
            self._top_up()
        masked = (self.x_t == self.mask_id) & ~self.prompt_mask
        confidence = logits.detach().float().softmax(-1).amax(-1)
        nxt = (self.phase + 1) % self.K
        stay = nxt != 0
        l_eff = (~self.prompt_mask).sum(1)
        unmasked = l_eff - masked.sum(1)
        need = (self._target_unmasked(nxt, l_eff) - unmasked).clamp(min=0) * stay
        reveal = pick_top(confidence, masked, need)
        if self.mode == "confidence_collapse":
            reveal |= masked & (confidence > self.tau) & stay.unsqueeze(1)
        self.x_t = torch.where(reveal, self.x0, self.x_t)
        self.phase = torch.where(stay, nxt, self.phase)
        if self.mode == "confidence_collapse":
            still_masked = ((self.x_t == self.mask_id) & ~self.prompt_mask).sum(1)
            fraction = (l_eff - still_masked).float() / l_eff.float()
            bucket = (fraction * self.K).floor().long().clamp(max=self.K - 1)
            self.phase = torch.where(stay, torch.maximum(self.phase, bucket), self.phase)
            stay &= still_masked > 0  # fully revealed sequences have nothing left to teach
        if self.sync_free:
            self._replace(~stay, torch.zeros_like(self.phase))
            return
        done = (~stay).nonzero().flatten()
        if len(done):
            self.retired += len(done)
            self._fill(done, torch.zeros(len(done), dtype=torch.long, device=self.device))

    def state_dict(self) -> dict:
        state = {
            "K": self.K,
            "x0": self.x0.cpu(),
            "x_t": self.x_t.cpu(),
            "prompt_mask": self.prompt_mask.cpu(),
            "phase": self.phase.cpu(),
            "retired": int(self.retired),
            "rng": self.generator.get_state(),
            "stream": self.stream.state_dict(),
        }
        if self.sync_free:
            state["ring"] = {
                "x0": self.ring_x0.cpu(),
                "prompt_mask": self.ring_prompt.cpu(),
                "head": int(self.head),
                "filled": self.filled,
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        self.K = int(state["K"])
        for name in ("x0", "x_t", "prompt_mask", "phase"):
            setattr(self, name, state[name].to(self.device))
        self.generator.set_state(state["rng"])
        self.stream.load_state_dict(state["stream"])
        if not self.sync_free:
            self.retired = int(state["retired"])
            return
        if "ring" not in state:
            raise ValueError("this PUMA state was saved by the exact (CPU) path; resume on CPU")
        ring = state["ring"]
        self.ring_x0, self.ring_prompt = (ring[k].to(self.device) for k in ("x0", "prompt_mask"))
        self.head.fill_(int(ring["head"]))
        self.retired.fill_(int(state["retired"]))
        self._head_seen.fill_(int(ring["head"]))
        self.filled = int(ring["filled"])
