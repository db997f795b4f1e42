"""puma-mdm: train and sample masked diffusion models, with PUMA (progressive unmasking).

The public API is what this module exports (``__all__``); everything else is internal and may
change. The math behind each name is in docs/algorithms.md.

>>> from puma_mdm import ModelConfig, Transformer, RandomMasking, mdm_loss, sample
"""

from puma_mdm.errors import CheckpointError, ConfigError, ModelLoadError, PumaError
from puma_mdm.evaluate import evaluate, likelihood_report, nll_bound
from puma_mdm.kinds import KINDS, ModelKind, build_model, kind_of, load_model, sample
from puma_mdm.losses import mdm_loss
from puma_mdm.masking import (
    Batch,
    BlockMasking,
    BlockPool,
    ExampleStream,
    ForwardProcess,
    KSchedule,
    ProgressivePool,
    RandomMasking,
)
from puma_mdm.masking.mixed import MixedBatch
from puma_mdm.model import ModelConfig, Transformer
from puma_mdm.pretrained import load_trained
from puma_mdm.prime.model import PrimeTransformer
from puma_mdm.sampling import POLICIES, SampleResult
from puma_mdm.tasks import TASKS, Examples, Task, build_task, register_task
from puma_mdm.train.config import Config, load_config
from puma_mdm.train.trainer import Trainer

__all__ = [
    "KINDS",
    "POLICIES",
    "TASKS",
    "Batch",
    "BlockMasking",
    "BlockPool",
    "CheckpointError",
    "Config",
    "ConfigError",
    "ExampleStream",
    "Examples",
    "ForwardProcess",
    "KSchedule",
    "MixedBatch",
    "ModelConfig",
    "ModelKind",
    "ModelLoadError",
    "PrimeTransformer",
    "ProgressivePool",
    "PumaError",
    "RandomMasking",
    "SampleResult",
    "Task",
    "Trainer",
    "Transformer",
    "build_model",
    "build_task",
    "evaluate",
    "kind_of",
    "likelihood_report",
    "load_config",
    "load_model",
    "load_trained",
    "mdm_loss",
    "nll_bound",
    "register_task",
    "sample",
]
