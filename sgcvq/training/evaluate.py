"""Evaluation of a trained tokenizer (`sgcvq eval`, and the numbers in every report).

Two ways of tokenizing are measured, and the report says which number comes from which:

* as trained: the SGC model gets the label maps (at use time a segmenter's output) and searches
  only the token's class group; the plain-VQ baseline searches all codes. PSNR, SSIM, codebook use
  and temporal stability are measured this way: they are the tokens a downstream model would see.
* label-free: both models search all K codes with no labels. Token purity and the group mIoU are
  measured this way, since with labels SGC's codes are in the right group by construction (mIoU
  would be 1.0 and say nothing). A high label-free mIoU means the codes carry the semantics
  themselves. `psnr_label_free` is the reconstruction from these label-free tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data import IGNORE_LABEL
from ..metrics import TokenizerMetrics, psnr, pixel_to_token_labels
from .batch_stream import resolve_loader_settings
from .build import build_eval_dataset, build_video_dataset, dataset_class_names

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """Metrics plus what the report draws: a few originals and reconstructions, code counts and
    the code-by-class confusion (label-free), the codebook and its class offsets."""

    metrics: dict
    originals: torch.Tensor  # [n, 3, H, W] in [-1, 1]
    recons: torch.Tensor  # [n, 3, H, W]
    counts: torch.Tensor  # [K] int64 (as trained)
    confusion: torch.Tensor  # [K, C] int64 (label-free)
    codebook: torch.Tensor  # [K, D]
    class_offsets: torch.Tensor | None  # [C+1] or None for the plain-VQ baseline
    class_names: list[str]


@torch.no_grad()
def evaluate(model, cfg: Config, device: torch.device, max_images: int | None = None, root: str | None = None,
             batch_size: int | None = None, video_clips: int | None = None, keep: int = 8) -> EvalResult:
    """Evaluate `model` on held-out data (cfg.data; `root` overrides the folder) and video clips."""
    model.eval()
    guided = cfg.model.num_classes is not None
    dataset = build_eval_dataset(cfg.data, root)
    class_names = dataset_class_names(dataset)
    num_classes = cfg.model.num_classes or len(class_names)
    offsets = model.quantizer.class_offsets.detach().cpu() if guided else None
    K = cfg.model.codebook_size
    factor = model.downsample_factor
    bs = batch_size or cfg.data.batch_size
    n_total = len(dataset) if max_images is None else min(max_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n_total))
    settings = resolve_loader_settings(cfg.data.num_workers, cfg.data.pin_memory, cfg.data.prefetch_factor,
                                       torch.device(device), main_process_only=cfg.data.segmenter is not None)
    loader = DataLoader(subset, batch_size=bs, shuffle=False, num_workers=settings.num_workers,
                        pin_memory=settings.pin_memory)

    as_trained = TokenizerMetrics(K, offsets, num_classes)
    label_free = TokenizerMetrics(K, offsets, num_classes)
    free_psnr, seen = 0.0, 0
    originals, recons = [], []
    for batch in loader:
        images = batch["image"].to(device)
        pixel_labels = batch["label"].to(device)
        out = model(images, labels=pixel_labels if guided else None)
        as_trained.update(images, out.recon, out.indices)
        token_labels = pixel_to_token_labels(pixel_labels, factor, num_classes, IGNORE_LABEL)
        free_idx = model.encode(images)
        free_recon = model.decode_indices(free_idx)
        label_free.update(images, free_recon, free_idx, token_labels)
        free_psnr += psnr(free_recon.float().clamp(-1, 1), images.float()).clamp(max=100).sum().item()
        seen += images.shape[0]
        if sum(o.shape[0] for o in originals) < keep:
            originals.append(images.cpu())
            recons.append(out.recon.float().clamp(-1, 1).cpu())

    clips = build_video_dataset(cfg.data, video_clips if video_clips is not None else max(n_total // 8, 4))
    if clips is not None and len(clips) > 0:
        vloader = DataLoader(clips, batch_size=max(bs // cfg.data.video_frames, 1), shuffle=False)
        for batch in vloader:
            frames = batch["frames"].to(device)  # [B, T, 3, H, W]
            labels = batch["labels"].to(device)  # [B, T, H, W]
            B, T = frames.shape[:2]
            idx = model.encode(frames.flatten(0, 1), labels=labels.flatten(0, 1) if guided else None)
            idx = idx.view(B, T, *idx.shape[-2:])
            tok = pixel_to_token_labels(labels, factor, num_classes, IGNORE_LABEL)
            as_trained.update_video(idx.cpu(), tok.cpu())

    metrics = as_trained.summary()
    free = label_free.summary()
    for key in ("token_purity", "group_miou", "per_class_iou"):
        if key in free:
            metrics[key] = free[key]
    metrics["psnr_label_free"] = free_psnr / max(seen, 1)
    metrics["active_code_fraction_label_free"] = free["active_code_fraction"]
    metrics["eval_skipped_files"] = len(getattr(dataset, "skipped", []) or [])
    return EvalResult(
        metrics=metrics,
        originals=torch.cat(originals)[:keep] if originals else torch.empty(0, 3, 1, 1),
        recons=torch.cat(recons)[:keep] if recons else torch.empty(0, 3, 1, 1),
        counts=as_trained.counts.clone(),
        confusion=label_free.confusion.clone(),
        codebook=model.quantizer.codebook.detach().float().cpu(),
        class_offsets=offsets,
        class_names=(class_names + [f"class {c}" for c in range(len(class_names), num_classes)])[:num_classes],
    )
