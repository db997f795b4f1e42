"""Hugging Face interoperability (the optional ``puma-mdm[hf]`` extra).

adapter.py any ``transformers`` language model as the denoiser of ``puma train`` ·
trainer_integration.py PUMA inside ``transformers.Trainer`` · tokenizer.py a saved HF tokenizer
for the text tasks · export.py our Transformer as a plain ``transformers`` model (``puma
export``, whose command line is cli/export.py).

Importing this package never imports ``transformers``; the modules that need it call
:func:`require` first, so a missing extra is one clear error instead of a traceback."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from puma_mdm.errors import PumaError

EXTRA = "pip install 'puma-mdm[hf]'"
HF_RECORD = "puma_hf.json"  # beside the files of a Hugging Face model trained by puma


class MissingExtraError(PumaError):
    """A Hugging Face feature was asked for without the ``hf`` extra installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``transformers``) or say which extra ``feature`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{feature} needs the Hugging Face extra ({module} is not installed): {EXTRA}"
        ) from None


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No ``transformers`` progress bars (loading / writing weights) inside the block."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
