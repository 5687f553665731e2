"""Layout control without conditional training: which codes each class may use, label-map checks,
and the per-position allowed-code masks the sampler applies.

A tokenizer with class groups (SGC) gives each class its group (`class_codes_from_offsets`). A
codebook without groups (plain VQ, VQGAN, CVQ-VAE) gets the same mechanism from data: each code
goes to the class that most of its training tokens belong to (`class_codes_from_counts`), so the
comparison measures what a semantic codebook buys, not a different sampler.
"""
from __future__ import annotations

import torch

from ..metrics import pixel_to_token_labels

__all__ = ["class_codes_from_offsets", "class_codes_from_counts", "code_class_counts", "allowed_codes",
           "check_label_map", "token_layout", "class_code_frequencies"]


def class_codes_from_offsets(offsets: torch.Tensor, num_codes: int) -> torch.Tensor:
    """[C, K] bool: class c may use the codes of its group [offsets[c], offsets[c+1])."""
    from .heads import check_offsets, code_classes_from_offsets

    off = check_offsets(offsets, num_codes)
    owner = code_classes_from_offsets(off)
    return owner[None, :] == torch.arange(off.numel() - 1)[:, None]


def code_class_counts(indices: torch.Tensor, token_labels: torch.Tensor, num_codes: int,
                      num_classes: int) -> torch.Tensor:
    """[K, C] int64: how many tokens of each class took each code (labels -1 are not counted)."""
    idx = indices.reshape(-1).long().cpu()
    lab = token_labels.reshape(-1).long().cpu()
    if idx.shape != lab.shape:
        raise ValueError(f"code_class_counts: indices {list(indices.shape)} and token_labels "
                         f"{list(token_labels.shape)} must have one element per token")
    keep = lab >= 0
    flat = idx[keep] * num_classes + lab[keep]
    return torch.bincount(flat, minlength=num_codes * num_classes).view(num_codes, num_classes)


def class_codes_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """[C, K] bool from counts [K, C]: each used code belongs to the majority class of its tokens
    (ties to the lower class); a class that is the majority of no code gets the one code holding
    the largest share of its tokens (so every class can be drawn; that code then serves two classes).
    Codes no training token took belong to no class."""
    K, C = counts.shape
    table = torch.zeros(C, K, dtype=torch.bool)
    used = counts.sum(1) > 0
    owner = counts.argmax(1)
    table[owner[used], torch.arange(K)[used]] = True
    for c in range(C):
        if not bool(table[c].any()) and int(counts[:, c].sum()) > 0:
            share = counts[:, c].double() / counts.sum(1).clamp(min=1).double()
            table[c, int(share.argmax())] = True
    return table


def class_code_frequencies(counts: torch.Tensor, class_codes: torch.Tensor) -> torch.Tensor:
    """[C, K] float: p(code | class) from counts [K, C], restricted to the class's allowed codes
    (add-one smoothing inside them, so every allowed code can be drawn). The context-free sampler
    draws each position from its class's row."""
    freq = (counts.T.double() + 1.0) * class_codes.double()
    return (freq / freq.sum(1, keepdim=True).clamp(min=1e-12)).float()


def check_label_map(labels: torch.Tensor, size: tuple[int, int], num_classes: int, name: str = "label map") -> None:
    """labels [B, H, W] (or [H, W]) int: the tokenizer's image size, values in [0, C) or 255 (ignore)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor of class ids, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.dim() not in (2, 3) or tuple(labels.shape[-2:]) != tuple(size):
        raise ValueError(f"{name}: shape {list(labels.shape)} does not match the tokenizer's images: expected "
                         f"[{size[0]}, {size[1]}] (or [B, {size[0]}, {size[1]}])")
    bad = (labels < 0) | ((labels >= num_classes) & (labels != 255))
    if bool(bad.any()):
        raise ValueError(f"{name}: unknown classes {torch.unique(labels[bad])[:8].tolist()}; the tokenizer knows "
                         f"classes 0..{num_classes - 1} (and 255 = ignore)")


def token_layout(labels: torch.Tensor, factor: int, num_classes: int) -> torch.Tensor:
    """Pixel label maps [B, H, W] -> token classes [B, H/f, W/f] int64 (majority vote; -1 = no class)."""
    return pixel_to_token_labels(labels, factor, num_classes)


def allowed_codes(layout: torch.Tensor, class_codes: torch.Tensor) -> torch.Tensor:
    """[B, n, K] bool: the codes each position may take. layout [B, n] int64 in [-1, C); -1 allows all."""
    C, K = class_codes.shape
    table = torch.cat([class_codes, torch.ones(1, K, dtype=torch.bool)]).to(layout.device)
    return table[torch.where(layout < 0, torch.full_like(layout, C), layout)]
