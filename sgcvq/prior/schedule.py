"""MaskGIT's cosine mask schedule: how many tokens stay masked after each decoding step, and the
masking ratio drawn for a training sequence.

gamma(r) = cos(pi/2 * r) for r in [0, 1]: gamma(0) = 1 (everything masked), gamma(1) = 0. Decoding
with S steps keeps floor(gamma((s+1)/S) * n) of n positions masked after step s (at least one fewer
than before, so S steps always finish), most of them revealed late, when the context is richest.
"""
from __future__ import annotations

import math

import torch

__all__ = ["cosine_gamma", "masked_after_steps", "sample_mask"]


def cosine_gamma(r: torch.Tensor | float) -> torch.Tensor | float:
    """Fraction of tokens masked at progress r in [0, 1] (1 at r = 0, 0 at r = 1)."""
    if isinstance(r, torch.Tensor):
        return torch.cos(r.clamp(0.0, 1.0) * (math.pi / 2))
    return math.cos(min(max(float(r), 0.0), 1.0) * math.pi / 2)


def masked_after_steps(n: int, steps: int) -> list[int]:
    """How many of n masked positions are still masked after each of `steps` decoding steps.

    Non-increasing, ends at 0, and every step reveals at least one token (so a decode of n tokens
    takes exactly min(steps, n) non-empty steps). steps >= 1, n >= 0.
    """
    if steps < 1:
        raise ValueError(f"masked_after_steps: steps must be >= 1, got {steps}")
    if n < 0:
        raise ValueError(f"masked_after_steps: n must be >= 0, got {n}")
    left, out = n, []
    for s in range(steps):
        target = int(math.floor(cosine_gamma((s + 1) / steps) * n))
        target = min(target, max(left - 1, 0))  # reveal at least one token per step
        out.append(target)
        left = target
    return out


def sample_mask(batch: int, n: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", maskable: torch.Tensor | None = None) -> torch.Tensor:
    """Training masks [batch, n] bool: per row a ratio gamma(r), r ~ U(0, 1), of its maskable
    positions masked (at least one), chosen uniformly at random.

    maskable: [batch, n] or [n] bool, the positions that may be masked (default all); rows without a
    maskable position get no mask.
    """
    if maskable is None:
        maskable = torch.ones(batch, n, dtype=torch.bool, device=device)
    maskable = maskable.expand(batch, n).to(device)
    r = torch.rand(batch, generator=generator, device="cpu").to(device)
    count = maskable.sum(1)
    k = torch.ceil(cosine_gamma(r) * count).clamp(min=1).minimum(count)  # [batch]
    scores = torch.rand(batch, n, generator=generator, device="cpu").to(device)
    scores = torch.where(maskable, scores, torch.full_like(scores, 2.0))  # non-maskable sort last
    rank = scores.argsort(1).argsort(1)
    return rank < k[:, None]
