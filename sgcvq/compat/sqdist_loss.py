"""The VQ losses mse(sg(q), x) and mse(q, sg(x)) from the search's distances, with fused gradients.

Both peers compute `((q - x) ** 2).mean()` over an [N, D] difference they materialise, once per
term. The search (`sgcvq.nearest_code`) already returned sqdist_i = ||x_i − e_{k_i}||², so the
value is a sum over N numbers; the backward is one pass over x for the token gradient and
`sgcvq.cluster_stats` (counts n_k, sums Σ x_i) for the codebook gradient.
"""
from __future__ import annotations

import torch

from ..ops import cluster_stats

__all__ = ["sqdist_loss"]


def sqdist_loss(tokens: torch.Tensor, codebook: torch.Tensor, index: torch.Tensor, sqdist: torch.Tensor,
                value_weight: float, x_weight: float, codebook_weight: float, numel: int,
                codes_at_search: torch.Tensor | None = None) -> torch.Tensor:
    """value_weight · Σ sqdist / numel, differentiable like x_weight · mse(sg(q), x) + codebook_weight · mse(q, sg(x)).

    tokens [N, D] (any float dtype, may require grad), codebook [K, D] (may require grad),
    index [N] int64 and sqdist [N] float32 from nearest_code(tokens, codebook); numel is the
    element count of the mean (N · D, or more when several heads share one loss). float32 scalar.
    codes_at_search: [K, D], the codebook's values at the search when the codebook is changed in
    place before backward (an EMA step); the gradients are taken at these values. None: codebook.
    """
    snapshot = codebook.detach() if codes_at_search is None else codes_at_search
    return _SqdistLoss.apply(tokens, codebook, index, sqdist, float(value_weight), float(x_weight),
                             float(codebook_weight), max(int(numel), 1), snapshot)


class _SqdistLoss(torch.autograd.Function):
    """Backward, with e_i = codebook[index_i]:
        d/dx_i = 2 x_weight / numel · (x_i − e_i)
        d/de_k = 2 codebook_weight / numel · (n_k e_k − Σ_{i: index_i = k} x_i)
    """

    @staticmethod
    def forward(ctx, tokens, codebook, index, sqdist, value_weight, x_weight, codebook_weight, numel, snapshot):
        ctx.save_for_backward(tokens, snapshot, index)
        ctx.factors = (2.0 * x_weight / numel, 2.0 * codebook_weight / numel)
        return sqdist.sum() * (value_weight / numel)

    @staticmethod
    def backward(ctx, grad):
        tokens, codebook, index = ctx.saved_tensors
        f_x, f_e = ctx.factors
        g = grad.float()
        grad_tokens = grad_codebook = None
        if ctx.needs_input_grad[0] and f_x != 0:
            codes = codebook.detach().float()[index]
            grad_tokens = ((tokens.detach().float() - codes) * (g * f_x)).to(tokens.dtype)
        if ctx.needs_input_grad[1] and f_e != 0:
            counts, sums = cluster_stats(index, tokens.detach().float().contiguous(), codebook.shape[0], check=False)
            grad_codebook = ((counts[:, None] * codebook.detach().float() - sums) * (g * f_e)).to(codebook.dtype)
        return grad_tokens, grad_codebook, None, None, None, None, None, None, None
