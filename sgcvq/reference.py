"""Pure-torch reference implementations: the ops' specification in code.

Every backend is tested against these. They favour obviousness over speed (float64 distances,
chunked so memory stays bounded), and they are the fallback backend where no compiled one exists.
"""
from __future__ import annotations

import torch

__all__ = ["nearest_code_reference", "cluster_stats_reference", "ema_update_reference"]

_MAX_CHUNK_ELEMENTS = 1 << 24


def nearest_code_reference(
    x: torch.Tensor,
    codebook: torch.Tensor,
    labels: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    mode: str = "exact",
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """index [N] int64, sqdist [N] float32: argmin_k ||x_i - e_k||^2 over the token's group.

    x [N, D], codebook [K, D]; labels [N] in [-1, C) with offsets [C+1] restrict token i to codes
    [offsets[labels[i]], offsets[labels[i]+1]); label -1 searches all codes. Distances in float64;
    ties go to the lowest index (torch.argmin returns the first minimum). `chunk` caps the tokens
    handled at once; fewer are taken when K * D is large, so memory stays bounded.
    """
    del mode  # every mode has the same exact answer
    N, K = x.shape[0], codebook.shape[0]
    index = torch.empty(N, dtype=torch.int64, device=x.device)
    sqdist = torch.empty(N, dtype=torch.float32, device=x.device)
    e = codebook.to(torch.float64)
    if labels is not None:
        labels = labels.to(torch.int64)
        offsets = offsets.to(torch.int64)
        lo = torch.where(labels < 0, 0, offsets[labels.clamp(min=0)])
        hi = torch.where(labels < 0, K, offsets[labels.clamp(min=0) + 1])
    ar = torch.arange(K, device=x.device)
    # NOTE: the [rows, K, D] float64 difference tensor is the memory peak, so the rows per chunk
    # shrink with K * D (at most _MAX_CHUNK_ELEMENTS elements, 128 MB) instead of a fixed count.
    chunk = max(1, min(chunk, _MAX_CHUNK_ELEMENTS // max(1, K * x.shape[1])))
    for start in range(0, N, chunk):
        xs = x[start : start + chunk].to(torch.float64)
        d = ((xs[:, None, :] - e[None, :, :]) ** 2).sum(-1)  # [n, K]
        if labels is not None:
            outside = (ar[None, :] < lo[start : start + chunk, None]) | (ar[None, :] >= hi[start : start + chunk, None])
            d = d.masked_fill(outside, float("inf"))
        i = d.argmin(1)
        index[start : start + chunk] = i
        sqdist[start : start + chunk] = d.gather(1, i[:, None])[:, 0].to(torch.float32)
    return index, sqdist


def cluster_stats_reference(index: torch.Tensor, x: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """counts [K] float32 and sums [K, D] float32 of the rows of x [N, D] grouped by index [N]."""
    counts = torch.bincount(index, minlength=K).to(torch.float32)
    sums = torch.zeros(K, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, index, x.to(torch.float64))
    return counts, sums.to(torch.float32)


def ema_update_reference(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    codebook: torch.Tensor,
    counts: torch.Tensor,
    sums: torch.Tensor,
    decay: float,
    eps: float,
) -> None:
    """In place: the EMA of counts and sums, then codebook = embed_sum / Laplace-smoothed counts.

    The same arithmetic as vector-quantize-pytorch's EMA VQ (DESIGN.md §1.6).
    """
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.numel() * eps) * total
    codebook.copy_(embed_sum / smoothed[:, None])
