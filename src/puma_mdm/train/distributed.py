"""Training across processes (``torchrun``), and the few collectives it needs.

Launched by ``torchrun``, each process reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from
the environment and joins the process group (gloo on CPU, NCCL on GPU ``cuda:LOCAL_RANK``).
``training.parallel`` picks how the model is spread over the processes:

* ``ddp``: every rank holds the whole model, optimiser and EMA; DistributedDataParallel
  all-reduces the gradients.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, one unit per Transformer block
  plus the root) shards parameters, gradients, optimiser state and EMA over the ranks: each
  holds ``1/world_size`` of them, all-gathers a block's parameters for its forward and
  backward, and reduce-scatters the gradients. Mixed precision: parameters are gathered in
  the autocast dtype, gradients reduced in fp32, the sharded master weights stay fp32.

Launched alone, it is rank 0 of a world of one and every method below is a no-op or the
identity (``fsdp`` included), so the trainer has a single code path.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from puma_mdm.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Distributed:
    """This process's place in the launch: ``rank`` of ``world_size``, on ``device``."""

    def __init__(
        self, rank: int, world_size: int, device: torch.device, parallel: str = "ddp"
    ) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.parallel = parallel

    @property
    def sharded(self) -> bool:
        """Whether parameters, gradients and optimiser state are sharded (FSDP)."""
        return self.enabled and self.parallel == "fsdp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @classmethod
    def setup(cls, device_name: str, parallel: str = "ddp") -> Distributed:
        """Join the process group described by torchrun's environment variables, if any.

        Under torchrun, ``training.device`` ``auto``/``cuda`` means ``cuda:LOCAL_RANK`` (NCCL)
        and ``cpu`` means the CPU (gloo)."""
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if world_size == 1:
            return cls(0, 1, resolve_device(device_name), parallel)
        if device_name not in ("auto", "cuda", "cpu"):
            raise ConfigError(
                f"training.device={device_name}: under torchrun use auto, cuda or cpu "
                "(each process takes the GPU cuda:LOCAL_RANK)"
            )
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(rank, world_size, device, parallel)

    def shard(self, model: torch.nn.Module, param_dtype: torch.dtype | None) -> None:
        """FSDP2, in place: one unit per Transformer block, then the root (embeddings, final
        norm, head). Call before building the optimiser: the parameters become DTensors."""
        if not self.sharded:
            return
        # imported here: torch.distributed's FSDP/DTensor stack costs seconds of start-up
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run forward/backward through: a DDP replica, or ``model`` itself
        (alone, or already sharded by :meth:`shard`)."""
        if not self.enabled or self.sharded:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    @contextmanager
    def accumulating(self, net: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
        """A micro-batch's forward/backward; with ``skip_sync`` its gradients stay local
        (accumulated) instead of being reduced over the ranks."""
        if not (self.enabled and skip_sync):
            yield
        elif self.sharded:
            net.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                net.set_requires_gradient_sync(True)
        else:
            with net.no_sync():
                yield

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.enabled:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on rank 0 (an empty list on the other ranks)."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out or []

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. to build a data cache), then the others."""
        if self.enabled and not self.is_main:
            dist.barrier()
        yield
        if self.enabled and self.is_main:
            dist.barrier()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (a collective: every rank calls it), else itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shutdown() -> None:
    """Leave the process group (at the end of ``puma train``), after collecting unreachable
    objects: a DDP reducer or FSDP state (and the gloo work it holds) freed later, during
    interpreter shutdown and after its group is gone, aborts the process."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
