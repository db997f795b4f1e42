"""Which precision a device runs fast: bf16 autocast pays only where the hardware computes bf16
natively (CUDA devices that support it; CPUs with AVX-512-BF16 or AMX). On other CPUs (AVX2
only, e.g. many AMD EPYC hosts) bf16 matrix products are emulated and an order of magnitude
slower than fp32 (docs/calibrations.md §6), so ``auto`` means fp32 there."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast_dtype(name: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for precision ``name`` on ``device`` (``None``: no autocast, fp32);
    ``auto`` is bf16 where :func:`native_bf16`, else fp32."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {PRECISIONS}")
    if name == "fp32" or (name == "auto" and not native_bf16(device)):
        return None
    return torch.float16 if name == "fp16" else torch.bfloat16
