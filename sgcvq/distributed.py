"""torch.distributed helpers for the quantizer (docs/method.md §4).

The EMA statistics of a step (code counts and sums, class counts and sums) are summed across ranks
with ONE all-reduce of one flat float32 buffer; decisions that involve randomness (re-seeding,
k-means seeds) are made on rank 0 and broadcast, so every rank ends the step with bit-identical
buffers. Without an initialised process group every helper is a no-op.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "all_reduce_flat", "broadcast_from_rank0"]


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_flat(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sums float32 tensors across ranks with a single all-reduce; returns new tensors, same shapes.

    The tensors are packed into one contiguous buffer (one collective instead of one per
    tensor: on NCCL/gloo the per-call latency dominates for the small [K] and [C] parts).
    """
    if not is_distributed():
        return tensors
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def broadcast_from_rank0(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's float32 values of `tensors` on every rank, with a single broadcast (new tensors)."""
    if not is_distributed():
        return tensors
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.broadcast(flat, src=0)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out
