"""Bidirectional Transformer denoiser for masked diffusion (docs/algorithms.md §2).

token embedding (+ optional learned structured-position tables) → N pre-norm blocks
(RMSNorm → multi-head attention with RoPE via ``F.scaled_dot_product_attention`` → RMSNorm →
SwiGLU MLP) → RMSNorm → linear head over the vocabulary. No time embedding: the number of
masks is visible in the input. ``causal=True`` turns the same network into an autoregressive
model, and ``forward(..., attn_mask=...)`` accepts any boolean mask (True = may attend), e.g.
block-causal attention. ``block_size`` makes block-causal attention the default (block
diffusion, masking/block.py); ``shift`` aligns the output of an autoregressively initialised
network: output ``i`` is the logits computed at position ``i−1`` (it predicts token ``i``).

Samplers may pass a :class:`KVCache`: the keys and values of positions already encoded, so a
forward over a few new positions attends to them without recomputing them (exact for a
finished prefix under block-causal or causal attention, ``sampling.py``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from puma_mdm.errors import ConfigError, ModelLoadError
from puma_mdm.files import atomic_path, write_json
from puma_mdm.manifest import corrupt_files, write_manifest
from puma_mdm.masking.block import block_causal_mask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ModelConfig:
    """Shape of the network. ``vocab_size`` counts real tokens; the mask id is ``vocab_size``
    unless ``mask_id`` says otherwise, and the embedding has ``vocab_size + 1`` rows."""

    vocab_size: int = 16
    seq_len: int = 64
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    mlp_hidden: int | None = None
    rope: bool = True
    rope_base: float = 10000.0
    position_tables: dict[str, list[int]] = field(default_factory=dict)
    causal: bool = False
    tie_head: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-6
    prime_digits: int = 0  # MDM-Prime: digits per token ℓ (0 = a plain token model; prime/)
    block_size: int = 0  # block diffusion: block-causal attention in blocks of this size
    shift: bool = False  # output i = logits at position i−1 (ARMs and MDMs initialised from one)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def kind(self) -> str:
        """The model kind (kinds.py) this shape makes: ``arm``, ``block``, ``prime`` or ``mdm``."""
        if self.causal:
            return "arm"
        if self.block_size:
            return "block"
        return "prime" if self.prime_digits else "mdm"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden(self) -> int:
        """SwiGLU width: by default ≈ 8/3·dim rounded up to a multiple of 32."""
        if self.mlp_hidden:
            return self.mlp_hidden
        return 32 * math.ceil(8 * self.dim / 3 / 32)

    def num_parameters(self) -> int:
        """Parameters of the network this config describes, computed without building it
        (exact for the token model; the token embedding counted as ``vocab_size + 1`` rows)."""
        d, head_dim = self.dim, self.dim // self.n_heads
        attention = d * (self.n_heads + 2 * self.kv_heads) * head_dim + d * d
        block = 2 * d + attention + 3 * d * self.hidden
        tables = sum((max(t) + 1) * d for t in self.position_tables.values() if t)
        head = 0 if self.tie_head else self.vocab_size * d
        return (self.vocab_size + 1) * d + tables + self.n_layers * block + d + head

    def check_fits_in_memory(self) -> None:
        """Refuse, before allocating, a network whose float32 weights (and RoPE tables) exceed
        the memory this machine has available."""
        n = self.num_parameters()
        need_bytes = 4 * (n + (self.seq_len * (self.dim // self.n_heads) if self.rope else 0))
        have = available_memory()
        if need_bytes > have:
            raise ConfigError(
                f"model: {n:,} parameters ({need_bytes / 2**30:.1f} GiB in float32) cannot fit "
                f"in the {have / 2**30:.1f} GiB of memory available (dim={self.dim}, "
                f"n_layers={self.n_layers}, vocab_size={self.vocab_size}, seq_len={self.seq_len})"
            )

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model: {msg}")

        for name in ("vocab_size", "seq_len", "dim", "n_layers", "n_heads"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        need(self.dim % self.n_heads == 0, f"dim={self.dim} is not divisible by n_heads")
        need(self.kv_heads >= 1, f"n_kv_heads must be ≥ 1, got {self.kv_heads}")
        need(
            self.n_heads % self.kv_heads == 0,
            f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads}",
        )
        need(
            not self.rope or (self.dim // self.n_heads) % 2 == 0,
            "RoPE needs an even head dimension (dim / n_heads)",
        )
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        for name, table in self.position_tables.items():
            need(
                len(table) == self.seq_len,
                f"position table {name!r} has {len(table)} entries, seq_len is {self.seq_len}",
            )
            need(min(table) >= 0, f"position table {name!r} has negative entries")
        need(self.block_size >= 0, f"block_size must be ≥ 0, got {self.block_size}")
        need(
            not (self.block_size and (self.shift or self.causal or self.prime_digits)),
            "block_size cannot be combined with shift, causal or prime_digits; train block "
            "diffusion from scratch as a plain token model",
        )
        need(self.prime_digits >= 0, f"prime_digits must be ≥ 0, got {self.prime_digits}")
        if self.prime_digits:
            need(
                self.dim % self.prime_digits == 0,
                f"dim={self.dim} must be divisible by prime_digits={self.prime_digits} (each "
                "digit embedding is dim/ℓ wide)",
            )
            need(
                not self.tie_head or self.prime_digits == 1,
                "tie_head needs one embedding row per class; with prime_digits > 1 rows are digits",
            )
        self.check_fits_in_memory()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model: unknown key(s) {unknown}; known keys: {sorted(known)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg


def available_memory() -> int:
    """Bytes of memory available now: MemAvailable, capped by a cgroup limit when one is set."""
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            have = min(have, int(limit))
    except OSError:
        pass
    return have


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of angle p·base^(−2i/d) for positions p < seq_len, shape (seq_len, head_dim/2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x₁, x₂) of the two head-dim halves by the position angle. x: (B, L, H, d),
    cos and sin broadcast to (B, L, H, d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@dataclass
class LayerKV:
    """One layer's keys and values in buffers (each (B, H_kv, capacity, d), after RoPE):
    positions ``< length`` are cached; a forward writes its ``fresh`` ones right after them, in
    place, so a step neither copies the cache nor concatenates to it. With ``scatter`` (B, W),
    the fresh entries replace the cached ones at those positions instead (in a copy)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    capacity: int = 0
    length: int = 0
    fresh: int = 0
    scatter: torch.Tensor | None = None

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys and values the new positions attend to."""
        if self.scatter is not None:
            pk, pv = self.keys[:, :, : self.length], self.values[:, :, : self.length]
            index = self.scatter[:, None, :, None].expand(-1, pk.shape[1], -1, pk.shape[3])
            return pk.scatter(2, index, k), pv.scatter(2, index, v)
        end = self.length + k.shape[2]
        if self.keys is None or self.keys.shape[2] < end:
            self.reserve(k, max(end, self.capacity))
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.fresh = k.shape[2]
        if not self.length:
            return k, v
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reserve(self, like: torch.Tensor, size: int) -> None:
        """Grow the buffers (shaped as ``like`` but ``size`` positions) to hold ``size``."""
        shape = (*like.shape[:2], size, like.shape[3])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if self.length:
            keys[:, :, : self.length] = self.keys[:, :, : self.length]
            values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values


class KVCache:
    """Per-layer keys and values of positions ``0..length−1`` of every row of a batch, in
    buffers of ``capacity`` positions (grown when a forward needs more)."""

    def __init__(self, n_layers: int, capacity: int = 0) -> None:
        self.layers = [LayerKV(capacity=capacity) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def view(
        self, rows: torch.Tensor | None = None, length: int | None = None, room: int = 0
    ) -> KVCache:
        """A cache over ``rows`` (all when None) and the first ``length`` positions (all when
        None) that a forward through it cannot change: it shares the buffers when its fresh
        entries go after every cached position, and otherwise copies the cached positions with
        ``room`` for that many fresh ones."""
        out = KVCache(len(self.layers))
        for mine, theirs in zip(out.layers, self.layers, strict=True):
            if theirs.keys is None:
                continue
            mine.length = theirs.length if length is None else length
            mine.keys, mine.values = theirs.keys, theirs.values
            if rows is not None or mine.length < theirs.length:
                end = mine.length + room
                mine.keys, mine.values = (  # index_select: several times faster than t[rows]
                    t[:, :, :end].clone() if rows is None else t[:, :, :end].index_select(0, rows)
                    for t in (theirs.keys, theirs.values)
                )
        return out

    def commit(self, n: int) -> None:
        """Keep the first ``n`` fresh positions of the last forward in the cache."""
        for layer in self.layers:
            if n > layer.fresh:
                raise ValueError(f"cannot commit {n} positions: the last forward had {layer.fresh}")
            layer.length += n
            layer.fresh = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        causal: bool,
        kv: LayerKV | None = None,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, self.n_heads + 2 * self.n_kv, self.head_dim)
        qk, v = qkv.split([self.n_heads + self.n_kv, self.n_kv], dim=2)
        if rope is not None:  # queries and keys rotated in one go
            qk = apply_rope(qk, *rope)
        q, k = qk.transpose(1, 2).split([self.n_heads, self.n_kv], dim=1)
        v = v.transpose(1, 2)
        if kv is not None:
            k, v = kv.keys_values(k, v)
        if self.n_kv != self.n_heads:
            repeat = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = attend(q, k, v, attn_mask, causal, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, -1))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    causal: bool,
    dropout: float,
) -> torch.Tensor:
    """softmax(q kᵀ / √d, masked where ``attn_mask`` is False) v over (B, H, L, d) heads;
    ``causal`` (without a mask): each position attends to itself and earlier ones.

    ``F.scaled_dot_product_attention`` except when training in bf16/fp16 on a CPU: there its
    fused kernel's backward is 3–5× slower than the explicit product form (a third of the
    reference-shape training step), so there the scores are formed with two batched matmuls.
    The softmax stays in the reduced dtype: PyTorch's CPU kernel accumulates it in fp32, and
    its error is below that of the bf16 inputs."""
    explicit = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
    causal = causal and attn_mask is None
    if not (explicit and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal, dropout_p=dropout
        )
    if causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return F.dropout(scores.softmax(dim=-1), dropout) @ v


class SwiGLU(nn.Module):
    """W₂ (SiLU(W₁x) ⊙ W₃x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden)

    def forward(self, x, rope, attn_mask, causal, kv=None):
        x = x + self.attn(self.norm1(x), rope, attn_mask, causal, kv)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Maps token ids (B, L) — including the mask id — to logits (B, L, vocab_size)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = self.token_embedding(cfg)
        self.position_embeds = nn.ModuleDict(
            {name: nn.Embedding(max(t) + 1, cfg.dim) for name, t in cfg.position_tables.items()}
        )
        for name, table in cfg.position_tables.items():
            self.register_buffer(f"pos_{name}", torch.tensor(table), persistent=False)
        if cfg.rope:
            cos, sin = rope_tables(cfg.seq_len, cfg.dim // cfg.n_heads, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # A tied head reuses the first vocab_size embedding rows (the mask row has no class).
        self.head = None if cfg.tie_head else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    digit_input = False  # MDM-Prime's subclass reads digit states instead of token ids

    @staticmethod
    def token_embedding(cfg: ModelConfig) -> nn.Module:
        """ids (B, L) → (B, L, dim); one row per token plus the mask."""
        return nn.Embedding(cfg.vocab_size + 1, cfg.dim)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    @property
    def kind(self) -> str:
        """The model kind (kinds.py), from the config."""
        return self.cfg.kind

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids (B, L) long → logits (B, L, V). attn_mask: bool (L, L) or (B, 1, L, L), True = may
        attend (default: block-causal when ``block_size`` is set). ``positions`` (L,): the
        position of each input (default 0..L−1). Sequences may be shorter than ``seq_len``."""
        L = ids.shape[1]
        if positions is None:
            if self.cfg.seq_len < L:
                raise ValueError(
                    f"sequence length {L} exceeds the model's seq_len {self.cfg.seq_len}"
                )
            positions = slice(None, L)
        if attn_mask is None and self.cfg.block_size:
            attn_mask = block_causal_mask(L, self.cfg.block_size, ids.device)
        logits = self.encode(ids, positions, attn_mask, self.cfg.causal)
        if self.cfg.shift:  # position 0 has no predecessor: uniform logits (it must be a prompt)
            logits = torch.cat((torch.zeros_like(logits[:, :1]), logits[:, :-1]), dim=1)
        return logits

    def attention_mask(self, length: int, device=None) -> torch.Tensor | None:
        """The (L, L) attention pattern of the model (None: every position sees every one)."""
        if self.cfg.block_size:
            return block_causal_mask(length, self.cfg.block_size, device)
        if self.cfg.causal:
            return torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return None

    def encode(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | slice,
        attn_mask: torch.Tensor | None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits computed at each input position, unshifted. ``positions``: (L,), a slice, or
        (B, L) per row. With ``cache``, the inputs also attend to its keys and values (first in
        ``attn_mask``'s key order), and each layer's ``fresh`` ones are left in it."""
        x = self.embed(ids)
        for name, emb in self.position_embeds.items():
            x = x + emb(getattr(self, f"pos_{name}")[positions])
        x = self.drop(x)
        rope = None
        if self.cfg.rope:
            # (L, 1, d/2) or, per row, (B, L, 1, d/2): the same angle for every head
            rope = (self.rope_cos[positions].unsqueeze(-2), self.rope_sin[positions].unsqueeze(-2))
        layers = [None] * len(self.blocks) if cache is None else cache.layers
        for block, kv in zip(self.blocks, layers, strict=True):
            x = block(x, rope, attn_mask, causal, kv)
        x = self.norm(x)
        if self.head is None:
            return F.linear(x, self.embed.weight[: self.cfg.vocab_size])
        return self.head(x)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json``, ``model.safetensors`` (each atomically) and the manifest of the
        directory into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(directory / CONFIG_NAME, self.cfg.to_dict())
        write_manifest(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> Transformer:
        """Load a network of this class written by :meth:`save_pretrained`, after checking every
        file against the directory's manifest (any kind of model: ``puma_mdm.load_model``)."""
        directory = Path(directory)
        check_manifest(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ModelLoadError(
                    f"{directory} is not a saved model: {path.name} is missing "
                    "(expected a directory written by save_pretrained / puma train)"
                )
        try:
            cfg = ModelConfig.from_dict(json.loads(config_path.read_text()))
        except (ValueError, TypeError, AttributeError) as err:  # ConfigError is a ValueError
            raise ModelLoadError(f"{config_path}: not a valid model config ({err})") from None
        if cls.digit_input != bool(cfg.prime_digits):
            raise ModelLoadError(
                f"{directory} holds a model of kind {cfg.kind!r}, not a {cls.__name__}; load "
                "it with puma_mdm.load_model"
            )
        model = cls(cfg)
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as err:  # safetensors raises its own error types
            raise ModelLoadError(f"{weights_path}: cannot read weights ({err})") from err
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of another shape than config.json says
            detail = str(err).strip().splitlines()[-1].strip()
            raise ModelLoadError(
                f"{weights_path}: weights do not match config.json ({detail})"
            ) from None
        if missing or unexpected:
            raise ModelLoadError(
                f"{weights_path}: weights do not match config.json "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(map_location)


def check_manifest(directory: Path) -> None:
    """Raise :class:`ModelLoadError` naming the first file of ``directory`` that is missing or
    differs from its manifest."""
    problems = corrupt_files(directory)
    if problems:
        raise ModelLoadError(
            f"{problems[0]}; the model directory is damaged: restore or retrain it"
        )
