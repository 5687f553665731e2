"""Mixed precision: which autocast dtype a run uses, and the grad scaler fp16 needs."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["resolve_amp", "autocast_context", "make_grad_scaler"]

AMP_CHOICES = ("auto", "fp32", "bf16", "fp16")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `amp` on `device`, or None for plain fp32.

    auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU (CPU bf16 autocast is
    available as amp=bf16; it is slower than fp32 on CPUs without AMX/avx512-bf16).
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "fp32":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device (use bf16 on the CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler for fp16 (bf16 and fp32 have fp32's range and need none); None otherwise."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None
