"""Our Transformer as a plain ``transformers`` model: ``puma export --model DIR --to hf OUT``.

The network (pre-norm RMSNorm blocks, rotary attention without causal mask, optional grouped KV
heads, SwiGLU, final RMSNorm, linear head) is exactly EuroBERT's, which ``transformers`` ships
natively (no remote code), so OUT loads with ``AutoModelForMaskedLM.from_pretrained(OUT)``: a
``config.json`` and ``model.safetensors`` (no pickle), read without network.

Mapping: the fused ``qkv`` and ``gate_up`` matrices are split into ``q/k/v_proj`` and
``gate/up_proj``; the vocabulary becomes ``V + 1`` with the mask token at id ``V``
(``config.mask_token_id``), as in our embedding. Our head has no class for the mask, so the
exported head gets a zero row for it and a bias of ``MASK_LOGIT`` there (``mlp_bias`` turns on
biases, all zero elsewhere), so the mask is never predicted and ``logits[..., :V]`` equal ours.

Refused (no EuroBERT equivalent): learned position tables (Sudoku's row/column/box), models
without RoPE, causal (ARM) models and MDM-Prime models. A Hugging Face model trained with
``model.hf_path`` is written as itself. After writing, OUT is loaded back with ``transformers``
and its logits are compared with ours on random input.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from puma_mdm.errors import PumaError
from puma_mdm.hf import quiet_progress, require
from puma_mdm.kinds import kind_of, load_model
from puma_mdm.model import Transformer
from puma_mdm.pretrained import TASK_FILE, resolve_model_dir

MASK_LOGIT = -1e4  # the mask class's logit in an exported model: probability exp(-1e4) = 0
COPIED = (TASK_FILE, "tokenizer.json")  # kept beside the weights when present
TOLERANCE = 1e-4  # max |Δlogit| accepted between the exported model and ours (float32)


class ExportError(PumaError):
    """A model that cannot be written in the requested format."""


def check_exportable(model: Transformer) -> None:
    cfg = model.cfg
    refused = {
        "learned position tables (train with model.task_positions=false)": cfg.position_tables,
        "no rotary position embedding (train with model.rope=true)": not cfg.rope,
        "causal attention (an ARM, not a masked diffusion model)": cfg.causal,
        "MDM-Prime digits (model.prime.digits > 0)": cfg.prime_digits,
    }
    reasons = [reason for reason, present in refused.items() if present]
    if reasons:
        raise ExportError(
            f"cannot export to Hugging Face: the model has {'; '.join(reasons)} — EuroBERT, the "
            "transformers architecture it maps onto, has no equivalent"
        )


def eurobert_config(model: Transformer):
    transformers = require("transformers", "puma export --to hf")
    if not hasattr(transformers, "EuroBertConfig"):
        raise ExportError(
            f"transformers {transformers.__version__} has no built-in EuroBERT; upgrade it "
            "(pip install -U 'transformers>=5.5')"
        )
    cfg = model.cfg
    return transformers.EuroBertConfig(
        vocab_size=cfg.vocab_size + 1,
        hidden_size=cfg.dim,
        intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.dim // cfg.n_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        tie_word_embeddings=cfg.tie_head,
        mlp_bias=True,
        attention_bias=False,
        mask_token_id=cfg.mask_id,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        architectures=["EuroBertForMaskedLM"],
    )


def eurobert_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under EuroBertForMaskedLM's names."""
    cfg, sd = model.cfg, model.state_dict()
    head_dim = cfg.dim // cfg.n_heads
    q, kv = cfg.n_heads * head_dim, cfg.kv_heads * head_dim
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[ours + "attn.qkv.weight"].split([q, kv, kv])
        gate, up = sd[ours + "mlp.gate_up.weight"].chunk(2)
        out |= {
            theirs + "input_layernorm.weight": sd[ours + "norm1.weight"],
            theirs + "post_attention_layernorm.weight": sd[ours + "norm2.weight"],
            theirs + "self_attn.q_proj.weight": wq,
            theirs + "self_attn.k_proj.weight": wk,
            theirs + "self_attn.v_proj.weight": wv,
            theirs + "self_attn.o_proj.weight": sd[ours + "attn.out.weight"],
            theirs + "mlp.gate_proj.weight": gate,
            theirs + "mlp.up_proj.weight": up,
            theirs + "mlp.down_proj.weight": sd[ours + "mlp.down.weight"],
            theirs + "mlp.gate_proj.bias": torch.zeros(cfg.hidden),
            theirs + "mlp.up_proj.bias": torch.zeros(cfg.hidden),
            theirs + "mlp.down_proj.bias": torch.zeros(cfg.dim),
        }
    head = sd["embed.weight"]  # tied: the mask row's logit is then masked by the bias alone
    if not cfg.tie_head:
        head = torch.cat([sd["head.weight"], torch.zeros(1, cfg.dim)])
    bias = torch.zeros(cfg.vocab_size + 1)
    bias[cfg.mask_id] = MASK_LOGIT
    return out | {"lm_head.weight": head, "lm_head.bias": bias}


@torch.no_grad()
def max_logit_gap(model: Transformer, out: Path) -> float:
    """Largest |Δlogit| over the real classes between ``model`` and the model saved in ``out``
    (loaded with plain transformers), on random input with some positions masked."""
    transformers = require("transformers", "puma export --to hf")
    with quiet_progress():
        exported = transformers.AutoModelForMaskedLM.from_pretrained(out, local_files_only=True)
    exported.eval()
    model.eval()
    V = model.cfg.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V + 1, (2, min(model.cfg.seq_len, 64)), generator=generator)
    theirs = exported(input_ids=ids).logits[..., :V]
    return float((model(ids) - theirs).abs().max())


def export_hf(model_dir: str | Path, out: str | Path, trust_remote_code: bool = False) -> dict:
    """Write the model in ``model_dir`` (a model or run directory) to ``out`` in Hugging Face
    format; return a summary (architecture, max |Δlogit| of the round trip)."""
    transformers = require("transformers", "puma export --to hf")
    source, out = resolve_model_dir(model_dir), Path(out)
    model = load_model(source, trust_remote_code=trust_remote_code)
    native = kind_of(model).hf_network(model)
    if native is not None:
        with quiet_progress():
            native.save_pretrained(out)
        return {"out": str(out), "architecture": type(native).__name__, "max_logit_gap": 0.0}
    check_exportable(model)
    with quiet_progress():
        hf = transformers.EuroBertForMaskedLM(eurobert_config(model))
        missing, unexpected = hf.load_state_dict(eurobert_state(model), strict=False)
        if missing or unexpected:  # a transformers release that renamed EuroBERT's weights
            raise ExportError(
                f"EuroBERT in transformers {transformers.__version__} does not match the "
                f"mapping (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        hf.save_pretrained(out)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    gap = max_logit_gap(model, out)
    if not gap <= TOLERANCE:
        raise ExportError(
            f"the exported model's logits differ from ours by {gap:.3g} (> {TOLERANCE}); "
            f"{out} is not a faithful copy — please report this with your transformers version"
        )
    return {"out": str(out), "architecture": "EuroBertForMaskedLM", "max_logit_gap": gap}
