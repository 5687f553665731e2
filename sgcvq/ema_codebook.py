"""The EMA codebook, written once: usage bookkeeping, the EMA statistics, the two normalisation
rules, the dead-code policies and the Lloyd steps of k-means initialisation.

Three quantizers compose these pieces, each adding only its own rules and keeping its own buffer
names (so checkpoints keep their keys):

* `FastSemanticQuantizer` (sgcvq/quantizer.py): the Laplace rule (fused in the `ema_update` op),
  dead = count under a threshold or idle too long, re-seeding inside the class, per-group k-means;
* `sgcvq.compat.VectorQuantize`: vector-quantize-pytorch 1.34.1's rule (`vqp_1_34`), dead = count
  under a ratio of the mean count, the peer's k-means seeds;
* the baselines of sgcvq/model/quantizers.py (VQGAN, CVQ-VAE): the usage counters only (their
  codebooks are learned by gradient).

Shapes: K codes of D channels; several codebooks (heads) are a leading dimension the functions
broadcast over where noted.
"""
from __future__ import annotations

import torch
from torch import nn

from .distributed import all_reduce_flat
from .ops import cluster_stats, nearest_code

__all__ = ["CodeUsage", "ema_statistics_", "codebook_from_statistics", "EMA_RULES", "dead_codes", "lloyd_steps"]


class CodeUsage(nn.Module):
    """Code-usage counters (`steps`, `code_last_used`, `last_counts` buffers) and the usage metrics
    every quantizer reports. A subclass calls `_init_usage(K, window)` and `_record(counts)` once
    per training step."""

    def _init_usage(self, codebook_size: int, metrics_window: int) -> None:
        if isinstance(metrics_window, bool) or not isinstance(metrics_window, int) or metrics_window < 1:
            raise ValueError(f"{type(self).__name__}: metrics_window must be an int >= 1, got {metrics_window!r}")
        self.codebook_size = codebook_size
        self.metrics_window = metrics_window
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("code_last_used", torch.zeros(codebook_size, dtype=torch.int64))
        self.register_buffer("last_counts", torch.zeros(codebook_size))

    @torch.no_grad()
    def _record(self, counts: torch.Tensor) -> None:
        """counts [K] float32: tokens per code in this training step (summed over ranks)."""
        self.steps.add_(1)
        self.code_last_used.copy_(torch.where(counts > 0, self.steps, self.code_last_used))
        self.last_counts.copy_(counts)

    @torch.no_grad()
    def _active_codes(self) -> torch.Tensor:
        """[K] bool: codes assigned a token in the last metrics_window training steps."""
        return (self.code_last_used > 0) & (self.steps - self.code_last_used < self.metrics_window)

    @torch.no_grad()
    def metrics(self) -> dict:
        """steps; active_fraction / active_codes (codes with a token in the last metrics_window
        training steps); perplexity (exp entropy of the last step's counts). One host sync."""
        steps = int(self.steps)
        active = self._active_codes()
        p = self.last_counts / self.last_counts.sum().clamp(min=1e-12)
        entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
        return {
            "steps": steps,
            "active_fraction": float(active.float().mean()),
            "active_codes": int(active.sum()),
            "perplexity": float(torch.exp(entropy)) if steps > 0 else 0.0,
        }


@torch.no_grad()
def ema_statistics_(cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor,
                    sums: torch.Tensor, decay: float) -> None:
    """In place: N <- γN + (1-γ)n, M <- γM + (1-γ)m (lerp, as vector-quantize-pytorch computes it).
    cluster_size [..., K], embed_sum [..., K, D], counts [..., K], sums [..., K, D]."""
    cluster_size.lerp_(counts, 1.0 - decay)
    embed_sum.lerp_(sums, 1.0 - decay)


def _laplace(cluster_size, embed_sum, embed, eps):
    # Ñ = (N + ε) / (ΣN + Kε) · ΣN, e = M / Ñ  (VQ-VAE-2; vector-quantize-pytorch 1.32)
    total = cluster_size.sum(-1, keepdim=True)
    smoothed = (cluster_size + eps) / (total + cluster_size.shape[-1] * eps) * total
    return embed_sum / smoothed[..., None]


def _vqp_1_34(cluster_size, embed_sum, embed, eps):
    # e = (M + ε·e) / (N + ε): an empty code stays where it is (vector-quantize-pytorch 1.33+)
    return (embed_sum + embed * eps) / (cluster_size + eps)[..., None]


EMA_RULES = {"laplace": _laplace, "vqp_1_34": _vqp_1_34}


def codebook_from_statistics(rule: str, cluster_size: torch.Tensor, embed_sum: torch.Tensor,
                             embed: torch.Tensor, eps: float) -> torch.Tensor:
    """The codebook [..., K, D] from the EMA statistics under `rule` ("laplace": ours, also fused
    in the `ema_update` op; "vqp_1_34": the drop-in's). `embed` is the codebook before the update."""
    return EMA_RULES[rule](cluster_size, embed_sum, embed, eps)


@torch.no_grad()
def dead_codes(cluster_size: torch.Tensor, *, threshold: float | None = None,
               ratio_of_mean: float | None = None, idle_steps: torch.Tensor | None = None,
               max_idle_steps: int = 0) -> torch.Tensor:
    """[..., K] bool: the codes to re-seed.

    threshold: an EMA count under it (tokens per step; FastSemanticQuantizer's `threshold_dead`);
    ratio_of_mean: an EMA count under this fraction of the mean count of its codebook
    (vector-quantize-pytorch 1.34.1's `dead_code_threshold_ratio`);
    idle_steps [..., K] with max_idle_steps > 0: also dead after that many steps without a token or
    a re-seed (an abandoned popular code's count takes ~log(N/threshold)/(1-γ) steps to decay).
    """
    if (threshold is None) == (ratio_of_mean is None):
        raise ValueError("dead_codes: pass exactly one of threshold and ratio_of_mean")
    if threshold is not None:
        dead = cluster_size < threshold
    else:
        dead = cluster_size < cluster_size.mean(-1, keepdim=True) * ratio_of_mean
    if max_idle_steps > 0 and idle_steps is not None:
        dead = dead | (idle_steps >= max_idle_steps)
    return dead


@torch.no_grad()
def lloyd_steps(x: torch.Tensor, codebook: torch.Tensor, iters: int, *, labels: torch.Tensor | None = None,
                offsets: torch.Tensor | None = None, normalize: bool = False, search_mode: str = "exact",
                distributed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (Lloyd) iterations from `codebook`: assign with `nearest_code` (grouped by labels /
    offsets when given, so a class's tokens only move its codes), update with `cluster_stats`.

    x [N, D] float32, codebook [K, D] float32 (the seeds). normalize: unit-norm centres (cosine
    codebooks). distributed: sum each iteration's statistics over ranks with one all-reduce (every
    rank must then run every iteration). Returns the codebook [K, D] and the counts [K] of the last
    assignment; an empty cluster keeps its previous centre.
    """
    K = codebook.shape[0]
    counts = torch.zeros(K, dtype=torch.float32, device=x.device)
    for _ in range(iters):
        index, _ = nearest_code(x, codebook, labels, offsets if labels is not None else None, mode=search_mode,
                                check=False)
        counts, sums = cluster_stats(index, x, K, check=False)
        if distributed:
            counts, sums = all_reduce_flat([counts, sums])
        means = sums / counts.clamp(min=1.0)[:, None]
        if normalize:
            means = torch.nn.functional.normalize(means, p=2, dim=-1, eps=1e-6)
        codebook = torch.where(counts[:, None] > 0, means, codebook)
    return codebook, counts
