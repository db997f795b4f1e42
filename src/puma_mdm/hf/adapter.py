"""Any Hugging Face language model as the denoiser: a module mapping ids (B, L) to logits
(B, L, V), which is all the forward processes, losses, PUMA pool and samplers ask for.

A task's tokens are ids ``0..V−1`` (the same ids as the model's vocabulary, e.g. when the task
uses the model's tokenizer) and puma's mask id is ``V``. The wrapper :class:`HFDenoiser` turns
``V`` into the model's own mask token at the input, keeps the first ``V`` output classes, and sets
the mask token's class to −∞ when it lies inside them (a masked diffusion model never predicts
[MASK]; PUMA's confidences and the samplers then ignore it too).

Loading (:func:`load_hf_model`) reads only a local directory, checks what can go wrong (not an HF
model, custom code without ``trust_remote_code``, no language-modelling head, no mask token,
a tokenizer that does not fit) and makes decoder-only models attend both ways: their config gets
``is_causal = False`` (honoured by well-behaved decoders since transformers 5), and a probe
forward confirms that position 0 sees position 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from puma_mdm.errors import ModelLoadError
from puma_mdm.files import write_json
from puma_mdm.hf import HF_RECORD, quiet_progress, require
from puma_mdm.hf.tokenizer import TOKENIZER_FILE, check_vocabulary, load_tokenizer
from puma_mdm.manifest import write_manifest
from puma_mdm.modes import evaluating

ADD_MASK_HINT = (
    "add one: tokenizer.add_special_tokens({'mask_token': '<|mask|>'}); "
    "model.resize_token_embeddings(len(tokenizer)); save both into the directory "
    "(or set model.hf_mask_token_id=ID)"
)


class HFModelError(ModelLoadError):
    """A Hugging Face model directory that puma cannot train or sample."""


@dataclass
class HFModelSpec:
    """How puma sees a wrapped HF model: ``vocab_size`` task classes (puma's mask id is
    ``vocab_size``), sequences of ``seq_len``, and the model's own ``mask_token_id``."""

    vocab_size: int
    seq_len: int
    mask_token_id: int
    trust_remote_code: bool = False

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)


def exclude_mask(logits: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """``logits`` with the mask token's class set to −∞ (when it is one of the classes)."""
    if mask_token_id >= logits.shape[-1]:
        return logits
    index = torch.tensor([mask_token_id], device=logits.device)
    return logits.index_fill(-1, index, float("-inf"))


class HFDenoiser(nn.Module):
    """A Hugging Face model seen through puma's ids: ``forward(ids) → logits (B, L, V)``."""

    kind = "hf"  # trained and sampled as a plain bidirectional MDM (kinds.py)

    def __init__(self, hf_model: nn.Module, spec: HFModelSpec) -> None:
        super().__init__()
        self.hf, self.cfg = hf_model, spec

    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        V, token = self.cfg.vocab_size, self.cfg.mask_token_id
        if token != V:
            ids = ids.masked_fill(ids == V, token)
        logits = self.hf(input_ids=ids).logits[..., :V]
        return exclude_mask(logits, token)

    def check_examples(self, x0: torch.Tensor) -> None:
        """The model's mask token must not occur in the data as an ordinary token."""
        hits = (x0 == self.cfg.mask_token_id).nonzero()
        if len(hits):
            row, col = hits[0].tolist()
            raise HFModelError(
                f"token {self.cfg.mask_token_id} is the model's mask token but the data uses it "
                f"(example {row}, position {col}); remove it from the data or give the model a "
                "mask token of its own (model.hf_mask_token_id)"
            )

    def save_pretrained(self, directory: str | Path) -> None:
        """The HF model's own files (``save_pretrained``) plus :data:`HF_RECORD`."""
        directory = Path(directory)
        with quiet_progress():
            self.hf.save_pretrained(directory)
        write_json(directory / HF_RECORD, self.cfg.to_dict())
        write_manifest(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        map_location: str | torch.device = "cpu",
        trust_remote_code: bool = False,
    ) -> HFDenoiser:
        """Load what :meth:`save_pretrained` wrote. Code shipped in the directory runs only with
        the caller's ``trust_remote_code``: the ``trust_remote_code`` recorded in
        :data:`HF_RECORD` is a file in the directory, so it is never obeyed."""
        directory = Path(directory)
        try:
            record = json.loads((directory / HF_RECORD).read_text())
            record["trust_remote_code"] = trust_remote_code
            spec = HFModelSpec(**record)
        except (ValueError, TypeError) as err:
            raise HFModelError(f"{directory / HF_RECORD}: not a valid record ({err})") from None
        model, _, _ = load_hf_model(directory, trust_remote_code, spec.mask_token_id)
        return cls(model, spec).to(map_location)


def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise HFModelError(f"{path}: no such directory (expected a Hugging Face model directory)")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise HFModelError(
            f"{path} is not a Hugging Face model directory: no config.json (expected what "
            "model.save_pretrained(DIR) writes)"
        )
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise HFModelError(f"{config_path}: not valid JSON ({err})") from None
    if "model_type" not in raw:
        hint = (
            "it holds a puma model: train it without model.hf_path, or convert it with "
            "`puma export --to hf`"
            if "n_layers" in raw
            else "expected what model.save_pretrained(DIR) writes"
        )
        raise HFModelError(f"{path} is not a Hugging Face model directory (no model_type): {hint}")
    return raw


def _auto_class(transformers, raw: dict, remote: bool):
    """The Auto class that builds a model with a language-modelling head for this config."""
    from transformers.models.auto import modeling_auto

    candidates = [
        ("AutoModelForMaskedLM", modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
        ("AutoModelForCausalLM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        ("AutoModel", {}),  # custom code (e.g. Dream) may put its LM head on the base class
    ]
    auto_map = raw.get("auto_map", {})
    for name, native in candidates:
        if (remote and name in auto_map) or (not remote and raw["model_type"] in native):
            return getattr(transformers, name)
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _mask_token_id(path: Path, config, explicit: int | None, embeddings: int) -> int:
    """Explicit id ← the model config's ``mask_token_id`` ← the tokenizer saved beside it."""
    from_config = getattr(config, "mask_token_id", None)
    tokenizer = load_tokenizer(path) if (path / TOKENIZER_FILE).is_file() else None
    chosen = explicit if explicit is not None else from_config
    if tokenizer is not None:
        check_vocabulary(tokenizer, embeddings, chosen, str(path))
        chosen = chosen if chosen is not None else tokenizer.mask_id
    if chosen is None:
        where = "its config and its tokenizer name" if tokenizer else "its config names"
        raise HFModelError(f"model {path} has no mask token ({where} none); {ADD_MASK_HINT}")
    if not 0 <= chosen < embeddings:
        raise HFModelError(
            f"mask token id {chosen} is outside model {path}'s {embeddings} embedding rows; "
            f"{ADD_MASK_HINT}"
        )
    return chosen


@torch.no_grad()
def probe(model: nn.Module, name: str) -> int:
    """Number of output classes; refuse models without logits or that attend causally
    (two one-row forwards that differ only in the last token)."""
    with evaluating(model):
        device = next(model.parameters()).device
        outputs = [model(input_ids=torch.tensor([[0, last]], device=device)) for last in (0, 1)]
    if not all(hasattr(out, "logits") for out in outputs):
        raise HFModelError(
            f"model {name} returns no logits: use a model with a language-modelling head "
            "(…ForMaskedLM or …ForCausalLM), not a bare encoder"
        )
    first, second = (out.logits[0, 0].float() for out in outputs)
    if torch.allclose(first, second, rtol=0.0, atol=1e-7):
        raise HFModelError(
            f"model {name} attends causally (position 0 ignores position 1), which a masked "
            "diffusion model cannot use: load it with is_causal=False in its config (decoders "
            "honour it since transformers 5) or use a bidirectional model (…ForMaskedLM)"
        )
    return outputs[0].logits.shape[-1]


def load_hf_model(
    path: str | Path, trust_remote_code: bool = False, mask_token_id: int | None = None
) -> tuple[nn.Module, int, int]:
    """Load the HF language model in directory ``path`` (float32, training mode, nothing
    downloaded); return it, its mask token id and its number of output classes."""
    transformers = require("transformers", "model.hf_path (a Hugging Face model)")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    raw = _read_config(path)
    native = raw["model_type"] in CONFIG_MAPPING
    remote = "auto_map" in raw and (trust_remote_code or not native)
    if remote and not trust_remote_code:
        raise HFModelError(
            f"model {path} (model_type {raw['model_type']!r}) needs the code shipped in its "
            "directory (auto_map in config.json): if you trust that code, pass --trust-remote-code "
            "(puma eval, sample, solve, export) or set model.trust_remote_code=true (puma train)"
        )
    if not remote and not native:
        raise HFModelError(
            f"model {path}: model_type {raw['model_type']!r} is unknown to transformers "
            f"{transformers.__version__}; upgrade transformers"
        )
    auto = _auto_class(transformers, raw, remote)
    if auto is None:
        raise HFModelError(
            f"model {path} (model_type {raw['model_type']!r}) has no language-modelling head "
            "in transformers; save a …ForMaskedLM or …ForCausalLM model"
        )
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    try:
        config = transformers.AutoConfig.from_pretrained(path, **kwargs)
        if auto is transformers.AutoModelForCausalLM:
            config.is_causal = False  # a masked diffusion model attends both ways
        with quiet_progress():
            model = auto.from_pretrained(path, config=config, dtype=torch.float32, **kwargs)
    except Exception as err:  # transformers and safetensors raise many types
        raise HFModelError(f"cannot load model {path}: {_first_line(err)}") from None
    n_classes = probe(model, str(path))
    embeddings = model.get_input_embeddings().num_embeddings
    mask = _mask_token_id(path, config, mask_token_id, embeddings)
    return model.train(), mask, n_classes


def build_hf_denoiser(section, task) -> HFDenoiser:
    """The denoiser of a ``puma train`` run whose ``model.hf_path`` is set (``section`` is the
    config's model section); the other shape keys of the section do not apply (the config
    refuses combining it with MDM-Prime, blocks or ARM training)."""
    model, mask, n_classes = load_hf_model(
        section.hf_path, section.trust_remote_code, section.hf_mask_token_id
    )
    path = section.hf_path
    if task.vocab_size > n_classes:
        raise HFModelError(
            f"task {task.name!r} has {task.vocab_size} tokens but model {path} predicts only "
            f"{n_classes} classes; use a model whose vocabulary covers the task's tokenizer"
        )
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and task.seq_len > limit:
        raise HFModelError(
            f"task {task.name!r} has sequences of {task.seq_len} tokens but model {path} takes "
            f"at most {limit} (max_position_embeddings)"
        )
    spec = HFModelSpec(task.vocab_size, task.seq_len, mask, section.trust_remote_code)
    return HFDenoiser(model, spec)
