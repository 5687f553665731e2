"""The prior's figures: one grid of small images per figure, a labelled row per source (requested
label maps, real scenes, each tokenizer's samples, edits before and after, predicted frames)."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["CLASS_COLORS", "colorize", "save_grid"]

# Cityscapes' palette for the synthetic scenes' classes (road, sidewalk, building, pole, vegetation,
# terrain, sky, person, vehicle).
CLASS_COLORS = torch.tensor([(128, 64, 128), (244, 35, 232), (70, 70, 70), (153, 153, 153), (107, 142, 35),
                             (152, 251, 152), (70, 130, 180), (220, 20, 60), (0, 0, 142)], dtype=torch.float32) / 255


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """[H, W] class ids -> [3, H, W] in [-1, 1] (unknown ids grey)."""
    lab = labels.long().cpu()
    colors = torch.cat([CLASS_COLORS, torch.full((1, 3), 0.5)])
    idx = torch.where((lab >= 0) & (lab < len(CLASS_COLORS)), lab, torch.full_like(lab, len(CLASS_COLORS)))
    return colors[idx].permute(2, 0, 1) * 2 - 1


def save_grid(rows: list[tuple[str, list[torch.Tensor]]], path: str | Path, title: str | None = None,
              cell: float = 0.9) -> Path:
    """rows: (label, images) with images [3, H, W] in [-1, 1] or [H, W] label maps (coloured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.6 + cell * ncols, cell * len(rows) + (0.3 if title else 0)),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(imgs):
                img = imgs[c]
                img = colorize(img) if img.dim() == 2 else img
                ax.imshow(((img.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(),
                          interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
