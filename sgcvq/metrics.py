"""Tokenizer metrics, pure torch: reconstruction (PSNR, SSIM), codebook use (active fraction,
perplexity, per-class usage) and token semantics (purity, group mIoU, temporal stability).

Shapes: images [B, C, H, W] float; token grids `indices` [B, h, w] int64 in [0, K); token labels
[B, h, w] int64 with -1 = ignore; `class_offsets` [C+1] int (class c owns codes
[off[c], off[c+1])).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "psnr",
    "ssim",
    "code_counts",
    "active_code_fraction",
    "perplexity",
    "per_class_usage",
    "code_class_confusion",
    "token_purity",
    "group_class_of_codes",
    "group_iou",
    "temporal_stability",
    "TokenizerMetrics",
    "pixel_to_token_labels",
]


# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB, [B]. data_range=2.0 for images in [-1, 1].

    Computed in float64 so that near-identical images do not lose digits; identical images give inf.
    """
    if pred.shape != target.shape:
        raise ValueError(f"psnr: pred is {list(pred.shape)} but target is {list(target.shape)}")
    diff = pred.double() - target.double()
    mse = diff.pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    value_range: tuple[float, float] = (-1.0, 1.0),
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM, [B] (Wang et al. 2004: 11x11 gaussian window, sigma 1.5, K1 0.01, K2 0.03).

    value_range: the (black, white) values of the images. SSIM is not shift-invariant (its luminance
    term compares means to 0), so images are shifted to [0, hi - lo] first, as for 8-bit images.
    Statistics are taken over 'valid' windows only (no padding), per channel, then averaged. Images
    smaller than the window use a window as large as the smaller side (odd).
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim: expected two [B,C,H,W] tensors of one shape, got {list(pred.shape)} "
                         f"and {list(target.shape)}")
    size = min(window_size, pred.shape[-1], pred.shape[-2])
    size = size if size % 2 == 1 else size - 1
    lo, hi = value_range
    data_range = hi - lo
    x, y = pred.double() - lo, target.double() - lo
    channels = x.shape[1]
    win = _gaussian_window(size, sigma, channels, x.device, x.dtype)

    def blur(t):
        return F.conv2d(t, win, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


# --------------------------------------------------------------------------------------------
# Codebook use
# --------------------------------------------------------------------------------------------
def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How many tokens chose each code: [K] int64."""
    return torch.bincount(indices.reshape(-1).long(), minlength=codebook_size)[:codebook_size]


def active_code_fraction(counts: torch.Tensor) -> float:
    """Fraction of codes used at least once."""
    return (counts > 0).float().mean().item()


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution: K when all codes are used equally, 1 for one code."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def per_class_usage(counts: torch.Tensor, class_offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per class group c: `active` = fraction of its codes used, `tokens` = share of all tokens
    that went to its codes. Both [C] float."""
    off = class_offsets.long().tolist()
    active, tokens = [], []
    total = max(int(counts.sum()), 1)
    for c in range(len(off) - 1):
        group = counts[off[c]: off[c + 1]]
        active.append((group > 0).float().mean().item() if group.numel() else 0.0)
        tokens.append(group.sum().item() / total)
    return {"active": torch.tensor(active), "tokens": torch.tensor(tokens)}


# --------------------------------------------------------------------------------------------
# Token semantics
# --------------------------------------------------------------------------------------------
def code_class_confusion(
    indices: torch.Tensor, token_labels: torch.Tensor, codebook_size: int, num_classes: int
) -> torch.Tensor:
    """[K, C] int64: how many tokens of class c chose code k (ignore tokens, label < 0, are left out)."""
    idx = indices.reshape(-1).long()
    lab = token_labels.reshape(-1).long()
    keep = (lab >= 0) & (lab < num_classes)
    flat = idx[keep] * num_classes + lab[keep]
    return torch.bincount(flat, minlength=codebook_size * num_classes).view(codebook_size, num_classes)


def token_purity(confusion: torch.Tensor) -> float:
    """Fraction of labelled tokens whose code's majority class equals the token's own class."""
    total = confusion.sum()
    if total == 0:
        return float("nan")
    return (confusion.max(dim=1).values.sum().double() / total).item()


def group_class_of_codes(class_offsets: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """[K] int64: the class whose group each code belongs to."""
    off = class_offsets.long().cpu()
    codes = torch.arange(codebook_size)
    return torch.bucketize(codes, off[1:], right=True)


def group_iou(confusion: torch.Tensor, class_offsets: torch.Tensor) -> torch.Tensor:
    """Per-class IoU [C] of token segmentation read off the code groups (NaN where a class is absent
    from both prediction and labels).

    A token's predicted class is the class group its code belongs to; IoU_c = |pred=c & label=c| /
    |pred=c or label=c| over labelled tokens.
    """
    K, C = confusion.shape
    pred_class = group_class_of_codes(class_offsets, K).to(confusion.device)
    # [C_pred, C_true]: sum the confusion rows of each group.
    seg = torch.zeros(C, C, dtype=torch.float64, device=confusion.device)
    seg.index_add_(0, pred_class, confusion.double())
    inter = seg.diagonal()
    union = seg.sum(0) + seg.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def temporal_stability(indices: torch.Tensor, token_labels: torch.Tensor | None = None) -> float:
    """Fraction of token positions that keep the same code between consecutive video frames.

    indices: [B, T, h, w]. With `token_labels` [B, T, h, w], only positions whose (non-ignore) class
    is the same in both frames count: the content at that position is then the same kind of thing,
    so a stable tokenizer should keep its code (or at least its group). Without labels, every
    position counts.
    """
    if indices.dim() != 4 or indices.shape[1] < 2:
        raise ValueError(f"temporal_stability: indices must be [B, T>=2, h, w], got {list(indices.shape)}")
    same = indices[:, 1:] == indices[:, :-1]
    if token_labels is not None:
        keep = (token_labels[:, 1:] == token_labels[:, :-1]) & (token_labels[:, 1:] >= 0)
        same = same[keep]
    if same.numel() == 0:
        return float("nan")
    return same.float().mean().item()


class TokenizerMetrics:
    """Accumulates every metric over evaluation batches, then `summary()` gives one flat dict."""

    def __init__(self, codebook_size: int, class_offsets: torch.Tensor | None, num_classes: int):
        self.K = codebook_size
        self.C = num_classes
        self.class_offsets = class_offsets.cpu() if class_offsets is not None else None
        self.counts = torch.zeros(codebook_size, dtype=torch.int64)
        self.confusion = torch.zeros(codebook_size, num_classes, dtype=torch.int64)
        self.psnr_sum = 0.0
        self.ssim_sum = 0.0
        self.images = 0
        self.stable = 0.0
        self.stable_n = 0

    @torch.no_grad()
    def update(self, images, recon, indices, token_labels=None) -> None:
        """images, recon [B,3,H,W] in [-1,1]; indices [B,h,w]; token_labels [B,h,w] (-1 ignore)."""
        recon = recon.float().clamp(-1, 1)
        self.psnr_sum += psnr(recon, images.float()).clamp(max=100.0).sum().item()
        self.ssim_sum += ssim(recon, images.float()).sum().item()
        self.images += images.shape[0]
        self.counts += code_counts(indices.cpu(), self.K)
        if token_labels is not None:
            self.confusion += code_class_confusion(indices.cpu(), token_labels.cpu(), self.K, self.C)

    @torch.no_grad()
    def update_video(self, indices: torch.Tensor, token_labels: torch.Tensor | None = None) -> None:
        """indices, token_labels [B, T, h, w]: accumulates temporal stability (see temporal_stability)."""
        same = indices[:, 1:] == indices[:, :-1]
        if token_labels is not None:
            keep = (token_labels[:, 1:] == token_labels[:, :-1]) & (token_labels[:, 1:] >= 0)
            same = same[keep]
        self.stable += same.sum().item()
        self.stable_n += same.numel()

    def summary(self) -> dict[str, float]:
        """Flat dict of scalar metrics plus `per_class_*` lists (for the report)."""
        out = {
            "psnr": self.psnr_sum / max(self.images, 1),
            "ssim": self.ssim_sum / max(self.images, 1),
            "active_code_fraction": active_code_fraction(self.counts),
            "perplexity": perplexity(self.counts),
            "images": self.images,
        }
        if self.confusion.sum() > 0:
            out["token_purity"] = token_purity(self.confusion)
            offsets = self.class_offsets
            if offsets is not None:
                iou = group_iou(self.confusion, offsets)
                out["group_miou"] = torch.nanmean(iou).item()
                out["per_class_iou"] = iou.tolist()
        if self.stable_n:
            out["temporal_stability"] = self.stable / self.stable_n
        if self.class_offsets is not None:
            usage = per_class_usage(self.counts, self.class_offsets)
            out["per_class_active"] = usage["active"].tolist()
            out["per_class_tokens"] = usage["tokens"].tolist()
        return out


def pixel_to_token_labels(labels: torch.Tensor, factor: int, num_classes: int, ignore: int = 255) -> torch.Tensor:
    """Majority class of each factor x factor cell, ignore pixels excluded; -1 where a cell has none.

    labels: [..., H, W] int64 -> [..., H/factor, W/factor] int64. Ties go to the lower class (argmax
    returns the first maximum). Used for models without semantic guidance, whose forward pass
    returns no token labels, so that purity is measured the same way for both.
    """
    lead = labels.shape[:-2]
    flat = labels.reshape(-1, *labels.shape[-2:]).long()
    valid = (flat >= 0) & (flat < num_classes) & (flat != ignore)
    onehot = F.one_hot(torch.where(valid, flat, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    votes = F.avg_pool2d(onehot, factor) * factor * factor
    tok = votes.argmax(1)
    tok = torch.where(votes.sum(1) > 0, tok, torch.full_like(tok, -1))
    return tok.reshape(*lead, *tok.shape[-2:])
