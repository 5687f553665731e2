"""Pure-torch reference implementations: the ops' specification in code.

Every backend is tested against these. They favour obviousness over speed (float64 distances,
chunked so memory stays bounded), and they are the fallback backend where no compiled one exists.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "nearest_code_reference",
    "nearest_code_oracle",
    "exact_index_required",
    "cluster_stats_reference",
    "ema_update_reference",
    "ema_vq_step_reference",
    "sum_error",
    "accumulation_error",
    "float32_certificate",
    "centred_margin",
]

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


def nearest_code_oracle(
    x: torch.Tensor,
    codebook: torch.Tensor,
    labels: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exactness oracle: (index [N] int64, best [N] float64, runner_up [N] float64).

    index is the float64 argmin over the token's group (ties to the lowest index), best its float64
    squared distance and runner_up the second smallest (inf when the group has one code). Every
    backend must return exactly this index wherever `exact_index_required` holds; elsewhere (codes
    closer than float32 can tell apart) it returns the float32 argmin, which may differ.
    """
    K = codebook.shape[0]
    d = ((x.double()[:, None, :] - codebook.double()[None, :, :]) ** 2).sum(-1)  # [N, K]
    if labels is not None:
        k = torch.arange(K, device=x.device)
        lab, off = labels.long(), offsets.long()
        lo = torch.where(lab < 0, 0, off[lab.clamp(min=0)])
        hi = torch.where(lab < 0, K, off[lab.clamp(min=0) + 1])
        d = d.masked_fill((k[None] < lo[:, None]) | (k[None] >= hi[:, None]), float("inf"))
    two = d.topk(min(2, K), dim=1, largest=False).values
    runner_up = two[:, 1] if K > 1 else torch.full_like(two[:, 0], float("inf"))
    return d.argmin(1), two[:, 0], runner_up


def exact_index_required(best: torch.Tensor, runner_up: torch.Tensor, D: int) -> torch.Tensor:
    """[N] bool: the float32 argmin is provably the float64 one.

    The direct float32 distance of D terms is within a factor (1 +- g) of the exact one, g =
    `sum_error(D)` (docs/numerics.md), so a runner-up with d_2 - d_1 > g (d_1 + d_2) can never
    win in float32: there the index must equal `nearest_code_oracle`'s, on every backend and path.
    """
    return (runner_up - best) > sum_error(D) * (best + runner_up)


# --------------------------------------------------------------------------------------------
# The certificate's bounds, in float64 (csrc/include/sgcvq/certificate.h; docs/numerics.md).
# The compiled bounds and the Triton kernel's copy are tested against these.
# --------------------------------------------------------------------------------------------
_U = 2.0**-24  # float32 unit roundoff


def sum_error(D: int) -> float:
    """g = (2D + 8) u: relative error of a float32 sum of D non-negative terms (any order)."""
    return (2 * D + 8) * _U


def accumulation_error(D: int) -> float:
    """(2D + 16) u: a tensor-core accumulation over D products, each step charged a full ulp."""
    return (2 * D + 16) * _U


def float32_certificate(D: int, max_norm2: float, xx: float, thr: float, best: float, rounds_to_bf16: bool = False) -> dict:
    """The CPU float32 certificate for one token: {'g', 'max_e2', 'delta', 'floor', 'holds'}.

    a_k = fl||e_k||^2 + sum_d (-2 x_d) e_kd (any order) is within delta of its exact value; every
    code whose a_k >= thr then has a float32 distance >= floor, and the best re-scored distance is
    certified when it is below floor. max_norm2 = max_k fl||e_k||^2, xx = fl||x||^2.
    """
    g = sum_error(D)
    g_dot = 2.0**-7 + 2.0**-16 if rounds_to_bf16 else 0.0
    max_e2 = max_norm2 * (1.001 + 2 * g)
    delta = 2 * g * max_e2 + (g + g_dot) * 2 * math.sqrt(xx * (1 + g)) * math.sqrt(max_e2)
    floor = (xx * (1 - g) + thr - delta) * (1 - g)
    holds = math.isfinite(thr) and math.isfinite(xx) and floor > best
    return {"g": g, "max_e2": max_e2, "delta": delta, "floor": floor, "holds": holds}


def centred_margin(xx: float, r2: float, max_e2: float, max_err: float, D: int, dot_g: float | None = None) -> float:
    """The margin E of the GPU searches' certificate (Hopper kernel, Triton), in float64.

    x' = fl(x - mu), e'_k = fl(e_k - mu) centred rows; c(.) the candidate rounding; s_k =
    fl||e'_k||^2 - 2 c(x').c(e'_k); f_k the direct float32 distance. xx = fl||x'||^2, r2 =
    fl||x' - c(x')||^2, max_e2 >= max ||e'_k||^2, max_err >= max ||e'_k - c(e'_k)||; g =
    `accumulation_error(D)`, dot_g the dot's accumulation and product error (default g: exact
    products, one pass). Then |(s_k + xx) - f_k| <= E for every code:
      2 x'.e' - 2 c(x').c(e')  <= 2 r me + ||2 c(x')|| max_err   (Cauchy-Schwarz on the residuals)
      dot accumulation          <= dot_g ||2 c(x')|| (me + max_err)
      fl||x'||^2, fl||e'||^2     <= g (xn^2 + me^2)
      f_k vs ||x - e_k||^2        <= g (xn + me)^2, centring 4u (xn + me)^2, score arithmetic 8u (xn + me)^2
    plus flushed subnormals, and 1% slack on the whole.
    """
    g = accumulation_error(D)
    if dot_g is None:
        dot_g = g
    xn = math.sqrt(xx * (1 + g)) * 1.0001
    r = math.sqrt(r2 * (1 + g)) * 1.0001
    me = math.sqrt(max_e2)
    ah = 2 * (xn + r)
    big = (xn + me) ** 2
    dot = 2 * r * me + ah * max_err + dot_g * ah * (me + max_err)
    return (g * (xn * xn + max_e2) + dot + (g * 1.01 + 12 * _U) * big + (D + 8) * 2.0**-100) * 1.01


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
    The start state of a fresh quantizer is N = 1, M = E (docs/method.md §1.6 reading of VQ-VAE-2)."""
    D = codebook.shape[1]
    flat = x.reshape(-1, D).float()
    index, _ = nearest_code_reference(flat, codebook)
    quantized = codebook[index].clone()
    loss = commitment_weight * (flat - quantized).pow(2).mean()
    counts, sums = cluster_stats_reference(index, flat, codebook.shape[0])
    ema_update_reference(cluster_size, embed_sum, codebook, counts, sums, decay, eps)
    return index.view(x.shape[:-1]), quantized.view(x.shape), loss
