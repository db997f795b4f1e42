"""Tiny randomly initialised Hugging Face models, built in-process and saved to a directory (no
hub, no download), for the tests of puma_mdm.hf. Importing this module skips the importing test
module when transformers is not installed."""

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may touch the network
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="puma-hf-modules-"))
transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

transformers.utils.logging.disable_progress_bar()  # keep the CLI's stderr to its one line

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
SMALL |= {"intermediate_size": 64, "max_position_embeddings": 32}


def bert(vocab=11, mask=10, **extra):
    """BertForMaskedLM; ``mask`` becomes ``config.mask_token_id`` (None: no mask token)."""
    cfg = transformers.BertConfig(vocab_size=vocab, **(SMALL | extra))
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    if mask is not None:
        cfg.mask_token_id = mask
    return transformers.BertForMaskedLM(cfg)


def qwen2(vocab=11, mask=10, **extra):
    """A Qwen2-shaped decoder (grouped KV heads); puma makes it attend both ways."""
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, num_key_value_heads=1, mask_token_id=mask, **(SMALL | extra)
    )
    return transformers.Qwen2ForCausalLM(cfg)


def modernbert(vocab=11, mask=10, **extra):
    specials = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    specials |= {"cls_token_id": 1, "sep_token_id": 2}
    cfg = transformers.ModernBertConfig(
        vocab_size=vocab, mask_token_id=mask, **(SMALL | specials | extra)
    )
    return transformers.ModernBertForMaskedLM(cfg)


BUILDERS = {"bert": bert, "qwen2": qwen2, "modernbert": modernbert}


def save(model, directory: Path) -> Path:
    """``model.save_pretrained(directory)`` with a fixed seed for reproducible weights."""
    model.save_pretrained(directory)
    return directory


def build(name: str, directory: Path, seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    return save(BUILDERS[name](**kwargs), directory)


def edit_config(directory: Path, drop=(), **changes) -> None:
    """Rewrite ``config.json``: keys in ``drop`` removed, ``changes`` set."""
    path = directory / "config.json"
    data = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
    path.write_text(json.dumps(data | changes))


def byte_bpe(texts, specials=("<eos>", "<mask>"), vocab_size=300):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def save_tokenizer(tok, directory: Path, **special_tokens) -> Path:
    """Save ``tok`` as a transformers fast tokenizer (tokenizer.json + tokenizer_config.json)."""
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)
    fast.save_pretrained(directory)
    return directory
