"""Per-group k-means initialisation of the codebook (docs/method.md §1.10), on the project's own ops.

Lloyd steps where the assignment is `sgcvq.nearest_code` (grouped by the token labels, so each
class's tokens only move its own codes) and the update is `sgcvq.cluster_stats`. Under
torch.distributed the seeds come from rank 0 and the statistics of every iteration are summed
with one flat all-reduce, so every rank gets the same codebook.
"""
from __future__ import annotations

import torch

from .distributed import broadcast_from_rank0
from .ema_codebook import lloyd_steps
from .semantic import sample_class_tokens

__all__ = ["kmeans_per_group"]


@torch.no_grad()
def kmeans_per_group(
    x: torch.Tensor,
    token_labels: torch.Tensor | None,
    offsets: torch.Tensor | None,
    code_class: torch.Tensor,
    fallback: torch.Tensor,
    iters: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the tokens of each class into that class's codes.

    Args:
        x: [N, D] float32 tokens (in the search space).
        token_labels: [N] int64 in [-1, C), or None for plain VQ (one group of K codes).
            Tokens labelled -1 take no part: they belong to no group.
        offsets: [C+1] int64 class groups (None with token_labels None).
        code_class: [K] int64 class of every code.
        fallback: [K, D] float32 start value of codes whose class has no token in the batch
            (on every rank); such codes keep it.
        iters: Lloyd iterations.

    Returns:
        codebook [K, D] float32 and counts [K] float32 (tokens per code at the last assignment,
        summed over ranks). An empty cluster keeps its previous centre (its seed at worst).
    """
    K = code_class.shape[0]
    group_offsets = offsets if offsets is not None else torch.tensor([0, K], device=x.device)
    if token_labels is not None:
        keep = token_labels >= 0  # one host sync, once per training run
        x, token_labels = x[keep], token_labels[keep]
    seeds, has_token = sample_class_tokens(x, token_labels, code_class, group_offsets, generator)
    codebook = torch.where(has_token[:, None], seeds, fallback)
    (codebook,) = broadcast_from_rank0([codebook])
    # every rank runs every iteration: the all-reduce inside must match up
    return lloyd_steps(x, codebook, iters, labels=token_labels, offsets=offsets)
