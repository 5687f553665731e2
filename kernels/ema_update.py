"""ema_update on the GPU in Triton: the EMA codebook update of docs/method.md §1.6, fused.

Two launches instead of torch's ~8 elementwise passes:

* `_ema_counts_kernel` (one program): cluster_size <- decay * cluster_size + (1 - decay) * counts,
  and total = sum(cluster_size), reduced in a fixed order (deterministic, no float atomics).
* `_ema_update_fwd_kernel` (K x D tiles): embed_sum <- decay * embed_sum + (1 - decay) * sums and
  codebook = embed_sum / smoothed, smoothed_k = (cluster_size_k + eps) / (total + K eps) * total
  (Laplace smoothing), reading embed_sum and sums once and writing embed_sum and codebook once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["ema_update"]


@triton.jit(do_not_specialize=["K"])  # K varies per codebook: one compile in all
def _ema_counts_kernel(
    cluster_size_ptr,  # [K] float32 in/out
    counts_ptr,  # [K] float32
    total_ptr,  # [1] float32 out
    K,
    decay,
    BLOCK: tl.constexpr,
):
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        rk = k0 + tl.arange(0, BLOCK)
        m = rk < K
        cs = tl.load(cluster_size_ptr + rk, mask=m, other=0.0)
        cnt = tl.load(counts_ptr + rk, mask=m, other=0.0)
        cs = cs * decay + cnt * (1.0 - decay)
        tl.store(cluster_size_ptr + rk, cs, mask=m)
        total += cs
    tl.store(total_ptr, tl.sum(total, 0))


@triton.jit(do_not_specialize=["K"])  # sizes vary per call: one compile per D
def _ema_update_fwd_kernel(
    cluster_size_ptr,  # [K] float32 (already updated)
    total_ptr,  # [1] float32
    embed_sum_ptr,  # [K, D] float32 in/out
    sums_ptr,  # [K, D] float32
    codebook_ptr,  # [K, D] float32 out
    K,
    D,
    decay,
    eps,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    kmask = rk < K
    mask = kmask[:, None] & (rd[None, :] < D)
    total = tl.load(total_ptr)
    cs = tl.load(cluster_size_ptr + rk, mask=kmask, other=1.0)
    smoothed = (cs + eps) / (total + K * eps) * total
    offs = rk.to(tl.int64)[:, None] * D + rd[None, :]
    es = tl.load(embed_sum_ptr + offs, mask=mask, other=0.0)
    sm = tl.load(sums_ptr + offs, mask=mask, other=0.0)
    es = es * decay + sm * (1.0 - decay)
    tl.store(embed_sum_ptr + offs, es, mask=mask)
    tl.store(codebook_ptr + offs, es / smoothed[:, None], mask=mask)


def _contiguous_target(t: torch.Tensor) -> torch.Tensor:
    # The kernels write in place; a non-contiguous buffer gets a contiguous copy written back.
    return t if t.is_contiguous() else t.contiguous()


def ema_update(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    codebook: torch.Tensor,
    counts: torch.Tensor,
    sums: torch.Tensor,
    decay: float,
    eps: float,
) -> None:
    """In place EMA update (Triton) on float32 buffers; inputs validated by `sgcvq.ema_update`.

    cluster_size [K], embed_sum [K, D], codebook [K, D] are updated from this step's counts [K]
    and sums [K, D]: the same arithmetic as `sgcvq.ema_update_reference`.
    """
    K, D = embed_sum.shape
    if K == 0:
        return None
    cs, es, cb = (_contiguous_target(t) for t in (cluster_size, embed_sum, codebook))
    counts = counts.contiguous()
    sums = sums.contiguous()
    total = torch.empty(1, dtype=torch.float32, device=embed_sum.device)
    decay = float(decay)
    _ema_counts_kernel[(1,)](cs, counts, total, K, decay, BLOCK=1024, num_warps=4)
    if D > 0:
        BLOCK_D = min(128, triton.next_power_of_2(D))
        BLOCK_K = max(1, 4096 // BLOCK_D)
        grid = (triton.cdiv(K, BLOCK_K), triton.cdiv(D, BLOCK_D))
        _ema_update_fwd_kernel[grid](cs, total, es, sums, cb, K, D, decay, float(eps),
                                     BLOCK_K=BLOCK_K, BLOCK_D=BLOCK_D, num_warps=8)
    for target, written in ((cluster_size, cs), (embed_sum, es), (codebook, cb)):
        if target is not written:
            target.copy_(written)
    return None
