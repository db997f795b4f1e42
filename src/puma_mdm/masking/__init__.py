"""Forward processes: how clean sequences become the noisy inputs the model trains on."""

from puma_mdm.masking.base import Batch, ForwardProcess
from puma_mdm.masking.block import BlockMasking, BlockPool, block_logits
from puma_mdm.masking.progressive import KSchedule, ProgressivePool
from puma_mdm.masking.random import RandomMasking, mask_continuous, mask_count
from puma_mdm.masking.stream import ExampleStream

__all__ = [
    "Batch",
    "BlockMasking",
    "BlockPool",
    "ExampleStream",
    "ForwardProcess",
    "KSchedule",
    "ProgressivePool",
    "RandomMasking",
    "block_logits",
    "mask_continuous",
    "mask_count",
]
