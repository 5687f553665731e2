"""Bits per token of held-out token grids under a masked prior.

A masked prior defines a proper distribution through any fixed order of revealing the positions:
p(x) = prod_i p(x_{o_i} | x_{o_1..o_{i-1}}). With one random order per grid (the any-order
autoregressive reading of MaskGIT), -log2 p(x) / n is a valid code length in bits per token. Its
semantic part is -log2 p(class of the token | the revealed ones), its texture part the rest
(heads.split_bits): per tokenizer only; never compare across tokenizers, whose codebooks differ.
"""
from __future__ import annotations

import torch

from .heads import split_bits
from .transformer import MaskedTokenPrior

__all__ = ["bits_per_token"]


@torch.no_grad()
def bits_per_token(prior: MaskedTokenPrior, grids: torch.Tensor, code_class: torch.Tensor | None = None,
                   num_classes: int | None = None, seed: int = 0, layout: torch.Tensor | None = None,
                   batch_size: int = 256) -> dict[str, float]:
    """grids [M, h * w] int64 -> {"bits": mean bits per token, and with code_class [K] (each code's class):
    "semantic_bits", "texture_bits"}."""
    prior.eval()
    M, n = grids.shape
    if n != prior.seq_len:
        raise ValueError(f"bits_per_token: grids must be [M, {prior.seq_len}], got {list(grids.shape)}")
    gen = torch.Generator().manual_seed(seed)
    total = semantic = 0.0
    for start in range(0, M, batch_size):
        x = grids[start:start + batch_size].long()
        b = x.shape[0]
        order = torch.rand(b, n, generator=gen).argsort(1).to(x.device)
        lay = layout[start:start + batch_size] if layout is not None else None
        seq = torch.full_like(x, prior.mask_id)
        rows = torch.arange(b, device=x.device)
        for i in range(n):
            pos = order[:, i]
            logp = prior(seq, lay)[rows, pos]  # [b, K]
            tgt = x[rows, pos]
            total -= float(logp.gather(1, tgt[:, None]).sum()) / 0.6931471805599453
            if code_class is not None:
                sem, _ = split_bits(logp, tgt, code_class, num_classes)
                semantic += float(sem.sum())
            seq[rows, pos] = tgt
    count = M * n
    out = {"bits": total / count}
    if code_class is not None:
        out["semantic_bits"] = semantic / count
        out["texture_bits"] = (total - semantic) / count
    return out
