"""cluster_stats on the GPU in Triton: per-cluster counts and sums of the tokens.

Two kernels:

* `_cluster_stats_fwd_kernel` (default): a scatter. A program owns BLOCK_N tokens x BLOCK_D
  features, reads them once, and adds them into sums[index] with relaxed float atomics (the
  order of additions, hence the last bits, may change from run to run).
* deterministic=True: the tokens are sorted by index (stable, so each segment keeps token
  order); `_cluster_stats_sorted_kernel` sums pieces of <= 1024 tokens of one code chunk by chunk,
  `_cluster_stats_combine_kernel` adds each code's pieces in order. Every addition happens in a
  fixed order: bit-identical results run to run, and a code holding most tokens is still spread
  over many programs. Extra memory: the sort and (N / 1024 + K) x D float32 partial sums.

Counts are integer-exact in both: an int32 scatter, converted to float32 at the end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["cluster_stats"]

_PIECE = 1024  # tokens per piece of a segment (deterministic path); tests shrink it


@triton.jit(do_not_specialize=["N"])  # sizes vary per call: one compile per D
def _cluster_stats_fwd_kernel(
    index_ptr,  # [N] int64
    x_ptr,  # [N, D] float32/bfloat16/float16
    counts_ptr,  # [K] int32, zero-initialised
    sums_ptr,  # [K, D] float32, zero-initialised
    N,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = rd < D
    code = tl.load(index_ptr + rn, mask=nmask, other=0)
    mask = nmask[:, None] & dmask[None, :]
    # NOTE: float32 accumulation for every input dtype.
    xt = tl.load(x_ptr + rn.to(tl.int64)[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
    # Relaxed atomics: only the final sums matter, no ordering with other memory is needed.
    tl.atomic_add(sums_ptr + code[:, None] * D + rd[None, :], xt, mask=mask, sem="relaxed")
    if pid_d == 0:
        tl.atomic_add(counts_ptr + code, tl.full([BLOCK_N], 1, tl.int32), mask=nmask, sem="relaxed")


@triton.jit(do_not_specialize=["K"])  # sizes vary per call: one compile per D
def _cluster_stats_sorted_kernel(
    order_ptr,  # [N] int64 token rows sorted by index (stable)
    seg_start_ptr,  # [K] int64 first sorted position of each code
    counts_ptr,  # [K] int32 tokens per code
    piece_end_ptr,  # [K] int64 inclusive cumsum of the pieces per code
    piece_code_ptr,  # [n_pieces_max] int64 code of each piece (K: past the real pieces)
    x_ptr,  # [N, D]
    partial_ptr,  # [n_pieces_max, D] float32 out: one sum per piece
    K,
    D,
    PIECE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Pass 1: program (piece p, feature block) sums the piece's <= PIECE tokens chunk by chunk.
    p = tl.program_id(0)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = rd < D
    k = tl.load(piece_code_ptr + p)
    kc = tl.minimum(k, K - 1)
    first_piece = tl.load(piece_end_ptr + kc) - (tl.load(counts_ptr + kc) + PIECE - 1) // PIECE
    seg_end = tl.load(seg_start_ptr + kc) + tl.load(counts_ptr + kc)
    start = tl.load(seg_start_ptr + kc) + (p - first_piece) * PIECE
    end = tl.minimum(start + PIECE, seg_end)
    end = tl.where(k >= K, start, end)  # surplus programs: empty loop
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for t in range(start, end, BLOCK_N):
        pos = t + tl.arange(0, BLOCK_N)
        pmask = pos < end
        rows = tl.load(order_ptr + pos, mask=pmask, other=0)
        xt = tl.load(x_ptr + rows[:, None] * D + rd[None, :], mask=pmask[:, None] & dmask[None, :], other=0.0)
        acc += tl.sum(xt.to(tl.float32), 0)
    tl.store(partial_ptr + p.to(tl.int64) * D + rd, acc, mask=dmask)


@triton.jit
def _cluster_stats_combine_kernel(
    partial_ptr,  # [n_pieces_max, D] float32
    piece_end_ptr,  # [K] int64
    counts_ptr,  # [K] int32
    sums_ptr,  # [K, D] float32 out (every element written)
    D,
    PIECE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Pass 2: program (code k, feature block) adds its pieces in order: a fixed order overall.
    k = tl.program_id(0)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = rd < D
    end = tl.load(piece_end_ptr + k)
    begin = end - (tl.load(counts_ptr + k) + PIECE - 1) // PIECE
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for q in range(begin, end):
        acc += tl.load(partial_ptr + q * D + rd, mask=dmask, other=0.0)
    tl.store(sums_ptr + k.to(tl.int64) * D + rd, acc, mask=dmask)


def cluster_stats(
    index: torch.Tensor, x: torch.Tensor, K: int, deterministic: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster counts [K] float32 and sums [K, D] float32 (float32 accumulation).

    index: [N] int64 in [0, K) (validated by `sgcvq.cluster_stats`); x: [N, D] float32 /
    bfloat16 / float16. deterministic=True gives bit-identical sums run to run (sorted segments);
    the default uses float atomics.
    """
    N, D = x.shape
    device = x.device
    counts = torch.zeros(K, dtype=torch.int32, device=device)
    if N == 0:
        return counts.to(torch.float32), torch.zeros(K, D, dtype=torch.float32, device=device)
    x = x.contiguous()
    index = index.contiguous()
    BLOCK_D = min(128, triton.next_power_of_2(D))
    if not deterministic:
        sums = torch.zeros(K, D, dtype=torch.float32, device=device)
        BLOCK_N = 64
        grid = (triton.cdiv(N, BLOCK_N), triton.cdiv(D, BLOCK_D))
        _cluster_stats_fwd_kernel[grid](index, x, counts, sums, N, D, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, num_warps=8)
        return counts.to(torch.float32), sums
    # Integer atomics are exact, so the counts are deterministic as they are.
    counts.scatter_add_(0, index, torch.ones(N, dtype=torch.int32, device=device))
    order = torch.argsort(index, stable=True)  # segments by code, token order inside each
    seg_start = torch.cumsum(counts, 0) - counts  # int64
    # Segments are cut into pieces of <= PIECE tokens so that a code holding most tokens is
    # still reduced by many programs; pieces are then added per code in order. No host sync:
    # the piece grid is the upper bound cdiv(N, PIECE) + K, surplus pieces map to code K.
    PIECE = _PIECE
    pieces = (counts + PIECE - 1) // PIECE
    piece_end = torch.cumsum(pieces, 0)  # int64
    n_pieces_max = triton.cdiv(N, PIECE) + K
    piece_code = torch.searchsorted(piece_end, torch.arange(n_pieces_max, device=device), right=True)
    partial = torch.empty(n_pieces_max, D, dtype=torch.float32, device=device)
    _cluster_stats_sorted_kernel[(n_pieces_max, triton.cdiv(D, BLOCK_D))](
        order, seg_start, counts, piece_end, piece_code, x, partial, K, D,
        PIECE=PIECE, BLOCK_N=32, BLOCK_D=BLOCK_D, num_warps=4)
    sums = torch.empty(K, D, dtype=torch.float32, device=device)
    _cluster_stats_combine_kernel[(K, triton.cdiv(D, BLOCK_D))](
        partial, piece_end, counts, sums, D, PIECE=PIECE, BLOCK_D=BLOCK_D, num_warps=4)
    return counts.to(torch.float32), sums
