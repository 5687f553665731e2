"""The prior's output heads: log-probabilities over the K codes of every position.

* FlatHead: one softmax over the K codes.
* FactorisedHead: for a grouped codebook (class c owns codes [offsets[c], offsets[c+1])), first the
  class, then the code inside that class's group:
      log p(k) = log p(class(k)) + log p(k | class(k)),
  so the code length of a token splits into semantic bits (-log2 p(class)) and texture bits
  (-log2 p(k | class)). Both heads return a proper distribution over K, so they are trained and
  sampled the same way; `split_bits` reads the split off either one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FlatHead", "FactorisedHead", "code_classes_from_offsets", "split_bits", "check_offsets"]

LN2 = math.log(2.0)


def check_offsets(offsets: torch.Tensor, num_codes: int, name: str = "offsets") -> torch.Tensor:
    """offsets [C+1] int: non-decreasing, offsets[0] = 0, offsets[-1] = num_codes. Returns int64 on the CPU."""
    if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1 or offsets.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor [C+1] of code offsets, got "
                         f"{list(offsets.shape) if isinstance(offsets, torch.Tensor) else type(offsets).__name__}")
    off = offsets.detach().to("cpu", torch.int64)
    if int(off[0]) != 0 or int(off[-1]) != num_codes or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"{name} must rise from 0 to K = {num_codes} (class c owns codes [off[c], off[c+1])), "
                         f"got {off.tolist()}")
    return off


def code_classes_from_offsets(offsets: torch.Tensor) -> torch.Tensor:
    """[K] int64: the class whose group holds each code."""
    off = offsets.to(torch.int64)
    sizes = off[1:] - off[:-1]
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=off.device), sizes)


class FlatHead(nn.Module):
    """hidden [..., d] -> log-probabilities [..., K] (one softmax over the codebook)."""

    def __init__(self, dim: int, num_codes: int):
        super().__init__()
        self.num_codes = num_codes
        self.proj = nn.Linear(dim, num_codes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.proj(hidden).float(), dim=-1)


class FactorisedHead(nn.Module):
    """hidden [..., d] -> log-probabilities [..., K] = log p(class) + log p(code | class).

    offsets [C+1]: the grouped codebook's layout. A class without codes gets no probability.
    """

    def __init__(self, dim: int, num_codes: int, offsets: torch.Tensor):
        super().__init__()
        off = check_offsets(offsets, num_codes)
        self.num_codes = num_codes
        self.num_classes = off.numel() - 1
        self.register_buffer("offsets", off)
        self.register_buffer("code_class", code_classes_from_offsets(off))
        self.register_buffer("empty_class", (off[1:] == off[:-1]))
        self.class_proj = nn.Linear(dim, self.num_classes)
        self.code_proj = nn.Linear(dim, num_codes)

    def class_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., C]: log p(class)."""
        logits = self.class_proj(hidden).float()
        logits = logits.masked_fill(self.empty_class, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def code_log_probs_in_class(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., K]: log p(code | the code's class), a softmax inside each group."""
        logits = self.code_proj(hidden).float()
        flat = logits.reshape(-1, self.num_codes)
        cls = self.code_class.expand_as(flat)
        C = self.num_classes
        # Per-group logsumexp: the group maximum (scatter amax), then the sum of exponentials.
        top = flat.new_full((flat.shape[0], C), float("-inf")).scatter_reduce(1, cls, flat, "amax")
        shifted = flat - top.gather(1, cls)
        total = flat.new_zeros((flat.shape[0], C)).scatter_add(1, cls, shifted.exp())
        return (shifted - total.log().gather(1, cls)).view_as(logits)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.class_log_probs(hidden)[..., self.code_class] + self.code_log_probs_in_class(hidden)


def split_bits(log_probs: torch.Tensor, target: torch.Tensor, code_class: torch.Tensor,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(semantic bits, texture bits) of `target` under `log_probs`, per token.

    log_probs [..., K] (any head); target [...] int64 codes; code_class [K] int64 in [0, C).
    semantic = -log2 sum_{k in class(target)} p(k); texture = -log2 p(target) - semantic
    = -log2 p(target | its class). For FactorisedHead the semantic part is exactly -log2 p(class).
    """
    K = log_probs.shape[-1]
    flat = log_probs.reshape(-1, K).float()
    cls = code_class.to(flat.device).expand_as(flat)
    # log sum_{k in c} p(k) for every class c: a per-class logsumexp of the log-probabilities
    top = flat.new_full((flat.shape[0], num_classes), float("-inf")).scatter_reduce(1, cls, flat, "amax")
    safe_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    mass = flat.new_zeros((flat.shape[0], num_classes)).scatter_add(1, cls, (flat - safe_top.gather(1, cls)).exp())
    class_lp = safe_top + mass.log()
    t = target.reshape(-1, 1).to(flat.device)
    total = -flat.gather(1, t)[:, 0]
    semantic = -class_lp.gather(1, code_class.to(flat.device)[t])[:, 0]
    return (semantic / LN2).view(target.shape), ((total - semantic) / LN2).view(target.shape)
