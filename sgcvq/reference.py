"""Pure-torch reference implementations: the ops' specification in code.

Every backend is tested against these. They favour obviousness over speed (float64 distances,
chunked so memory stays bounded), and they are the fallback backend where no compiled one exists.
"""
from __future__ import annotations

import torch

__all__ = ["nearest_code_reference", "cluster_stats_reference", "ema_update_reference", "ema_vq_step_reference"]

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

    This is sgcvq's own EMA, the standard one of VQ-VAE-2 (it is vector-quantize-pytorch 1.32's
    arithmetic; 1.33+ changed theirs, which only `sgcvq.compat.VectorQuantize` follows):
    N <- γN + (1-γ)n, M <- γM + (1-γ)m, Ñ = (N + ε) / (ΣN + Kε) · ΣN, e = M / Ñ.
    """
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.numel() * eps) * total
    codebook.copy_(embed_sum / smoothed[:, None])


def ema_vq_step_reference(
    x: torch.Tensor,
    codebook: torch.Tensor,
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    decay: float,
    eps: float,
    commitment_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step of the standard EMA VQ, the definition FastSemanticQuantizer keeps with
    guidance, k-means and re-seeding off: x [..., D] -> (index [...] int64, quantized [..., D]
    float32, commitment loss) from the codebook before the step; then, in place, the EMA of the
    batch's counts and sums and the Laplace-smoothed codebook (ema_update_reference).
    The start state of a fresh quantizer is N = 1, M = E (DESIGN.md §1.6 reading of VQ-VAE-2)."""
    D = codebook.shape[1]
    flat = x.reshape(-1, D).float()
    index, _ = nearest_code_reference(flat, codebook)
    quantized = codebook[index].clone()
    loss = commitment_weight * (flat - quantized).pow(2).mean()
    counts, sums = cluster_stats_reference(index, flat, codebook.shape[0])
    ema_update_reference(cluster_size, embed_sum, codebook, counts, sums, decay, eps)
    return index.view(x.shape[:-1]), quantized.view(x.shape), loss
