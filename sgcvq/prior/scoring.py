"""Scores of decoded images, read through the judge: mIoU against a requested layout, a Fréchet
distance between judge features (a realism score in the spirit of FID, on the judge's features: not
FID), per-row class histograms, and the edit scores (IoU of the painted class inside the region,
PSNR outside it).
"""
from __future__ import annotations

import torch

from ..metrics import psnr

__all__ = ["confusion_matrix", "miou", "frechet_distance", "row_histograms", "row_histogram_distance",
           "edit_scores", "psnr"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] int64, rows = target class, columns = predicted class; target values outside [0, C) ignored."""
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred {list(pred.shape)} and target {list(target.shape)} differ")
    t, p = target.reshape(-1).long().cpu(), pred.reshape(-1).long().cpu()
    keep = (t >= 0) & (t < num_classes)
    return torch.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).view(num_classes, num_classes)


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in `target` (a dataset-level confusion, not per image)."""
    conf = confusion_matrix(pred, target, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    return float((inter[present] / union[present]).mean()) if bool(present.any()) else float("nan")


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features a [n, d] and b [m, d] (float64):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"frechet_distance: expected [n, d] and [m, d] with n, m >= 2, got {list(a.shape)}, "
                         f"{list(b.shape)}")
    a, b = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(root_a @ s_b @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * torch.trace(cross))


def row_histograms(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[H, C]: for each image row, the share of each class over all images' pixels in that row."""
    B, H, W = labels.shape
    onehot = torch.nn.functional.one_hot(labels.long().clamp(0, num_classes - 1), num_classes).double()
    counts = onehot.sum((0, 2))  # [H, C]
    return counts / counts.sum(1, keepdim=True)


def row_histogram_distance(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Mean over rows of the total-variation distance between the two sets' row histograms (0 = same
    class layout statistics, 1 = disjoint)."""
    return float(0.5 * (row_histograms(a, num_classes) - row_histograms(b, num_classes)).abs().sum(1).mean())


def edit_scores(pred_labels: torch.Tensor, region: torch.Tensor, painted_class: int, edited: torch.Tensor,
                before: torch.Tensor, margin: int = 4) -> dict[str, float]:
    """An edit's two scores, averaged over the batch.

    pred_labels [B, H, W]: the judge on the edited images; region [B, H, W] bool: the painted pixels;
    edited / before [B, 3, H, W]: the decoded images after and before the edit.
    iou_inside: IoU of (judge says painted_class) with the region, both taken within the region's
    bounding box grown by `margin` pixels (the class elsewhere in the scene does not count).
    psnr_outside: PSNR of the edited against the unedited decoding over the pixels outside the region.
    """
    ious, psnrs = [], []
    for b in range(region.shape[0]):
        r = region[b]
        ys, xs = r.nonzero(as_tuple=True)
        if ys.numel() == 0:
            raise ValueError(f"edit_scores: region {b} is empty")
        H, W = r.shape
        window = torch.zeros_like(r)
        window[max(int(ys.min()) - margin, 0):min(int(ys.max()) + margin + 1, H),
               max(int(xs.min()) - margin, 0):min(int(xs.max()) + margin + 1, W)] = True
        hit = (pred_labels[b] == painted_class) & window
        ious.append(float((hit & r).sum()) / max(float((hit | r).sum()), 1.0))
        outside = ~r
        mse = (edited[b] - before[b]).double().pow(2)[:, outside].mean()
        psnrs.append(float(10 * torch.log10(4.0 / mse.clamp(min=1e-12))))
    return {"iou_inside": sum(ious) / len(ious), "psnr_outside": sum(psnrs) / len(psnrs)}
