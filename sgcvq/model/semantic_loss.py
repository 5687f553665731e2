"""The group loss: tokens of class c must lie nearest to the codes of group c, labels or not.

With labels, SGC's search only looks inside the token's group, so nothing in the commitment loss
tells the encoder where the *other* groups' codes are: a token of class c is often nearer to some
code of another group, and a label-free search (all K codes, no segmenter at use time) then picks
that code. The group loss trains the encoder for the label-free search:

    g_ic = min_{k in group c} ||x_i − sg(e_k)||²                       (per-group nearest distance)
    L    = λ · mean_i CE(softmax_c(−g_ic / (τ · s)), s_i)              over labelled tokens i
    s    = sg(mean_i g_{i, s_i})                                       (the batch's own-group distance)

argmax_c of the logits is exactly the group of the label-free nearest code, so L is the
cross-entropy of the label-free group prediction. Dividing by s makes the loss independent of the
feature scale (the encoder cannot win by scaling its features up); τ sets how many quantization
errors of margin the loss asks for. The gradient reaches the encoder only: the codebook is an EMA
of the tokens and follows them. This is the project's reading of the paper's "consistent semantic
learning" (docs/method.md §1.9).

Each g_{:, c} is one grouped `nearest_code` call with every token labelled c: the N x K distance
matrix is never formed, and its sqdist is differentiable with respect to x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import nearest_code

__all__ = ["group_distances", "group_loss", "group_loss_weight_at", "group_loss_weight_on_device"]


def group_distances(x: torch.Tensor, codebook: torch.Tensor, class_offsets: torch.Tensor,
                    num_classes: int) -> torch.Tensor:
    """g [N, C] float32: ||x_i − e||² to the nearest code of each group (gradient to x only).

    x [N, D] float (the quantizer's search space); codebook [K, D] float32; class_offsets [C+1].
    """
    xs = x.float()
    codes = codebook.detach().float()
    cols = []
    for c in range(num_classes):
        labels = torch.full((xs.shape[0],), c, dtype=torch.int64, device=xs.device)
        _, sqdist = nearest_code(xs, codes, labels, class_offsets, check=False)
        cols.append(sqdist)
    return torch.stack(cols, dim=1)


def group_loss(x: torch.Tensor, token_labels: torch.Tensor, codebook: torch.Tensor, class_offsets: torch.Tensor,
               num_classes: int, temperature: float = 1.0, max_tokens: int = 4096,
               margin: float | None = None) -> torch.Tensor:
    """mean CE(softmax(−g / (τ s)), label) over labelled tokens (see the module docstring); a scalar.

    x [N, D] float (gradient flows back to it); token_labels [N] int64 (-1 = no class, left out);
    max_tokens: at most this many labelled tokens (a fixed-stride subset) enter the loss, which
    bounds its cost on large batches. Returns 0 (with a graph to x) when no token is labelled.
    margin: None = the cross-entropy; a number m >= 0 = the hinge
        mean_i relu(g_{i,s_i} − min_{c != s_i} g_ic + m·s) / s,
    which is 0 (no gradient) for every token whose own group is already nearer than any other by
    m quantization errors, so it stops pulling once the label-free search is right.
    """
    if temperature <= 0:
        raise ValueError(f"group_loss: temperature must be > 0, got {temperature}")
    if margin is not None and margin < 0:
        raise ValueError(f"group_loss: margin must be >= 0 or None, got {margin}")
    keep = torch.nonzero(token_labels >= 0).squeeze(1)
    if keep.numel() > max_tokens:
        keep = keep[torch.linspace(0, keep.numel() - 1, max_tokens, device=keep.device).long()]
    if keep.numel() == 0:
        return x.float().sum() * 0.0
    xs, labels = x[keep], token_labels[keep]
    g = group_distances(xs, codebook, class_offsets, num_classes)
    own = g.gather(1, labels[:, None])
    scale = own.mean().detach().clamp(min=1e-12)
    if margin is None:
        return F.cross_entropy(-g / (temperature * scale), labels)
    other = g.scatter(1, labels[:, None], float("inf")).min(dim=1, keepdim=True).values
    return F.relu(own - other + margin * scale).mean() / scale


def group_loss_weight_at(step: int, weight: float, warmup: int = 0, decay_start: int = 0, decay_steps: int = 0,
                         final_weight: float = 0.0) -> float:
    """λ at training step `step` (1 = the first): a linear warm-up from 0 over `warmup` steps, then
    from `decay_start` (0 = never) a linear fall to `final_weight` over `decay_steps` steps (0 = at once)."""
    w = weight
    if warmup > 0:
        w *= min(1.0, step / warmup)
    if decay_start > 0 and step >= decay_start:
        t = 1.0 if decay_steps == 0 else min(1.0, (step - decay_start) / decay_steps)
        w = (1.0 - t) * w + t * final_weight
    return w


def group_loss_weight_on_device(step: torch.Tensor, weight: float, warmup: int = 0, decay_start: int = 0,
                                decay_steps: int = 0, final_weight: float = 0.0) -> torch.Tensor:
    """group_loss_weight_at for a step counter on the device: a float64 0-dim tensor, the same value
    (the same float64 operations), and no host read (the training step never waits for the device)."""
    step = step.to(torch.float64)
    w = torch.full_like(step, weight)
    if warmup > 0:
        w = w * torch.clamp(step / warmup, max=1.0)
    if decay_start > 0:
        t = torch.ones_like(step) if decay_steps == 0 else torch.clamp((step - decay_start) / decay_steps, max=1.0)
        w = torch.where(step >= decay_start, (1.0 - t) * w + t * final_weight, w)
    return w
