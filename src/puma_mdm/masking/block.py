"""Block diffusion: semi-autoregressive MDMs over blocks of ``S`` tokens (docs/algorithms.md §3).

The sequence is cut into blocks; block ``n`` is denoised with the clean blocks ``< n`` as context
(block-causal attention) and nothing after it. Each block is its own small MDM, so both forward
processes act per block:

* random masking: every block with ``S_eff > 0`` free positions draws its own mask (count or
  continuous form) with weight ``w_blk``; the per-token NLL bound of the sequence is
  ``(1/L_eff) Σ_blk S_eff · E[w_blk Σ_masked CE]``, so position weights are ``w_blk·S_eff/L_eff``;
* PUMA: the pool keeps a phase per block (:class:`BlockPool`).

Training runs one forward over ``[x_t | x0]`` (length ``2L``, both halves at positions
``0..L−1``): a noisy token attends to its own noisy block and to the clean blocks before it, a
clean token to the clean blocks up to its own. Its logits on the noisy half equal those of the
loop ``for n: model([x0 blocks < n | x_t block n])`` with block-causal attention, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from puma_mdm.masking.base import Batch, pick_top, random_scores
from puma_mdm.masking.progressive import KSchedule, ProgressivePool
from puma_mdm.masking.random import RandomMasking, mask_continuous, mask_count
from puma_mdm.masking.stream import ExampleStream


def block_causal_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """Bool (L, L), True = may attend: position i sees position j iff block(j) ≤ block(i)."""
    block = torch.arange(length, device=device) // block_size
    return block.unsqueeze(1) >= block.unsqueeze(0)


def pair_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """Bool (2L, 2L) for the input ``[x_t | x0]``: noisy i sees noisy j in its own block and clean
    j in earlier blocks; clean i sees clean j in blocks up to its own; clean never sees noisy."""
    block = torch.arange(length, device=device) // block_size
    same = block.unsqueeze(1) == block.unsqueeze(0)
    before = block.unsqueeze(1) > block.unsqueeze(0)
    top = torch.cat((same, before), dim=1)
    bottom = torch.cat((torch.zeros_like(same), same | before), dim=1)
    return torch.cat((top, bottom), dim=0)


def block_logits(
    model: Callable[..., torch.Tensor],
    x_t: torch.Tensor,
    x0: torch.Tensor,
    block_size: int,
    vectorised: bool = True,
) -> torch.Tensor:
    """Logits (B, L, V) of every noisy block given the clean blocks before it: one forward over
    ``[x_t | x0]`` with :func:`pair_mask`, or (``vectorised=False``) one forward per block."""
    L, device = x_t.shape[1], x_t.device
    if vectorised:
        ids = torch.cat((x_t, x0), dim=1)
        positions = torch.arange(L, device=device).repeat(2)
        mask = pair_mask(L, block_size, device)
        return model(ids, attn_mask=mask, positions=positions)[:, :L]
    parts = []
    for start in range(0, L, block_size):
        end = min(start + block_size, L)
        ids = torch.cat((x0[:, :start], x_t[:, start:end]), dim=1)
        parts.append(model(ids, attn_mask=block_causal_mask(end, block_size, device))[:, start:])
    return torch.cat(parts, dim=1)


def check_blocks(length: int, block_size: int) -> None:
    if block_size < 1 or length % block_size:
        raise ValueError(
            f"block size {block_size} must be ≥ 1 and divide the sequence length {length}; "
            "choose a divisor of the task's seq_len"
        )


def position_weights(
    block_weights: torch.Tensor, free: torch.Tensor, block_size: int
) -> torch.Tensor:
    """(B·nb,) weights per block → (B, L) weights per position, ``w_blk · S_eff / L_eff``."""
    B = len(free)
    per_block = free.reshape(-1, block_size).sum(1)
    w = (block_weights * per_block).view(B, -1) / free.sum(1, keepdim=True).clamp(min=1)
    return w.repeat_interleave(block_size, dim=1)


def mask_blocks(
    x0: torch.Tensor,
    prompt_mask: torch.Tensor,
    mask_id: int,
    block_size: int,
    generator: torch.Generator,
    form: str = "count",
) -> Batch:
    """Random masking of every block on its own (``form`` as in :mod:`masking.random`); blocks
    that are all prompt get no mask and no weight."""
    B, L = x0.shape
    bx0, bprompt = x0.reshape(-1, block_size), prompt_mask.reshape(-1, block_size)
    live = (~bprompt).any(1).nonzero().flatten()
    draw = mask_count if form == "count" else mask_continuous
    inner = draw(bx0[live], bprompt[live], mask_id, generator)
    masked = torch.zeros_like(bprompt)
    masked[live] = inner.masked
    weights = torch.zeros(len(bx0), device=x0.device)
    weights[live] = inner.weights.float()
    masked = masked.view(B, L)
    w = position_weights(weights, ~prompt_mask, block_size)
    return Batch(x0, x0.masked_fill(masked, mask_id), prompt_mask, masked, w)


class BlockMasking(RandomMasking):
    """The ``standard`` strategy with blocks: random masking's fresh batch every step, each
    block masked on its own (:func:`mask_blocks`)."""

    def __init__(
        self,
        stream: ExampleStream,
        batch_size: int,
        mask_id: int,
        block_size: int,
        seed: int = 0,
        form: str = "count",
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(stream, batch_size, mask_id, seed, form, device)
        check_blocks(stream.seq_len, block_size)
        self.block_size = block_size

    def batch(self, step: int) -> Batch:
        x0, prompt = (t.to(self.device) for t in self.stream.take(self.batch_size))
        return mask_blocks(x0, prompt, self.mask_id, self.block_size, self.generator, self.form)


class BlockPool(ProgressivePool):
    """PUMA with a phase per block, ``phase`` (B, nb). Each block runs PUMA's stages on its own
    ``S_eff`` free positions (targets, confidence reveal, confidence collapse); a block whose
    phase would wrap is done: it is revealed and stays clean (no loss) with phase ``K``. A
    sequence retires once all its blocks are done. In ``fixed`` mode a sequence's blocks
    move in step; with ``confidence_collapse`` fast blocks wait, clean, for the slowest."""

    def __init__(
        self,
        stream: ExampleStream,
        batch_size: int,
        mask_id: int,
        block_size: int,
        k_schedule: KSchedule | Sequence[Sequence[int]] = ((8, 0),),
        mode: str = "fixed",
        tau: float = 0.9,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(stream, batch_size, mask_id, k_schedule, mode, tau, seed, device)
        check_blocks(stream.seq_len, block_size)
        self.block_size = block_size

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, self.block_size)

    def _fill(self, rows: torch.Tensor, phase: torch.Tensor) -> None:
        x0, prompt = (t.to(self.device) for t in self.stream.take(len(rows)))
        free = ~self._blocks(prompt)
        nb = x0.shape[1] // self.block_size
        l_blk = free.sum(1)
        block_phase = phase.repeat_interleave(nb)
        u = self._target_unmasked(block_phase, l_blk)
        shown = pick_top(random_scores(free.shape, self.generator, self.device), free, u)
        shown = shown.view(x0.shape)
        self.x0[rows], self.prompt_mask[rows] = x0, prompt
        self.phase[rows] = torch.where(l_blk > 0, block_phase, self.K).view(len(rows), nb)
        self.x_t[rows] = torch.where(shown | prompt, x0, self.mask_id)

    def _rebuild(self, k: int) -> None:
        B, L = self.batch_size, self.stream.seq_len
        self.K = k
        self.x0 = torch.zeros(B, L, dtype=torch.long, device=self.device)
        self.x_t = torch.zeros_like(self.x0)
        self.prompt_mask = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        self.phase = torch.zeros(B, L // self.block_size, dtype=torch.long, device=self.device)
        spread = torch.arange(B) * k // B
        phase = spread[torch.randperm(B, generator=self.generator)].to(self.device)
        self._fill(torch.arange(B, device=self.device), phase)

    def batch(self, step: int) -> Batch:
        k = self.schedule.k_at(step)
        if k != self.K:
            self._rebuild(k)
        masked = (self.x_t == self.mask_id) & ~self.prompt_mask
        per_block = 1.0 / self._blocks(masked).sum(1).clamp(min=1).float()
        weights = position_weights(per_block, ~self.prompt_mask, self.block_size)
        return Batch(self.x0, self.x_t.clone(), self.prompt_mask, masked, weights)

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        """Advance every unfinished block one phase using the logits just trained on."""
        shape, K = self.x_t.shape, self.K
        x0, x_t = self._blocks(self.x0), self._blocks(self.x_t)
        free = ~self._blocks(self.prompt_mask)
        masked = (x_t == self.mask_id) & free
        confidence = self._blocks(logits.detach().float().softmax(-1).amax(-1))
        phase = self.phase.flatten()
        active = phase < K
        nxt = phase + 1
        stay = active & (nxt < K)
        l_blk = free.sum(1)
        unmasked = l_blk - masked.sum(1)
        target = self._target_unmasked(nxt.clamp(max=K - 1), l_blk)
        reveal = pick_top(confidence, masked, (target - unmasked).clamp(min=0) * stay)
        if self.mode == "confidence_collapse":
            reveal |= masked & (confidence > self.tau) & stay.unsqueeze(1)
        reveal |= masked & (active & ~stay).unsqueeze(1)  # blocks finishing now
        x_t = torch.where(reveal, x0, x_t)
        phase = torch.where(active, nxt, phase)
        if self.mode == "confidence_collapse":
            still = ((x_t == self.mask_id) & free).sum(1)
            fraction = (l_blk - still).float() / l_blk.clamp(min=1).float()
            bucket = (fraction * K).floor().long().clamp(max=K - 1)
            phase = torch.where(stay, torch.maximum(phase, bucket), phase)
            phase = torch.where(still == 0, K, phase)
        self.x_t = x_t.view(shape)
        self.phase = phase.view(self.phase.shape)
        done = (self.phase == K).all(1).nonzero().flatten()
        if len(done):
            self.retired += len(done)
            self._fill(done, torch.zeros(len(done), dtype=torch.long, device=self.device))
