"""The feature pyramid between encoder and quantizer.

FPN-style top-down fusion of two encoder stages (Lin et al. 2017): 1x1 lateral convs bring both
stages to a common width, the coarse one is upsampled to the token grid and added to the fine one.
Each level is then projected to its share of the embedding (level_dims) and the levels are
concatenated along channels, so the quantizer sees one vector per token whose slices are the
levels; the quantizer's level_weights turn its distance into sum_l w_l ||x^l - e^l||^2
(docs/method.md §1.4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResnetBlock, group_norm


def split_embed_dim(embed_dim: int, num_levels: int) -> tuple[int, ...]:
    """Equal split of `embed_dim` over the levels; the remainder goes to the fine level (level 0)."""
    base = embed_dim // num_levels
    if base == 0:
        raise ValueError(f"embed_dim={embed_dim} is smaller than the number of pyramid levels ({num_levels})")
    return (embed_dim - base * (num_levels - 1),) + (base,) * (num_levels - 1)


class FeaturePyramid(nn.Module):
    """(fine [B, C, h, w], coarse [B, C, h/2, w/2]) -> tokens [B, embed_dim, h, w] = concat(fine level, coarse level).

    Level 0 ("fine detail") is the fused map lateral(fine) + up(lateral(coarse)) refined by a ResNet
    block; level 1 ("coarse semantic") is the upsampled coarse map alone, so it is constant over
    each 2x2 block of tokens and shared by neighbouring tokens of the same region.
    """

    def __init__(self, in_channels: int, width: int, level_dims: tuple[int, int]):
        super().__init__()
        if len(level_dims) != 2:
            raise ValueError(f"FeaturePyramid has 2 levels (fine, coarse); got level_dims={level_dims}")
        self.level_dims = tuple(level_dims)
        self.lateral_fine = nn.Conv2d(in_channels, width, 1)
        self.lateral_coarse = nn.Conv2d(in_channels, width, 1)
        self.smooth_fine = ResnetBlock(width, width)
        self.norm_fine = group_norm(width)
        self.norm_coarse = group_norm(width)
        self.proj_fine = nn.Conv2d(width, level_dims[0], 1)
        self.proj_coarse = nn.Conv2d(width, level_dims[1], 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        top_down = F.interpolate(self.lateral_coarse(coarse), size=fine.shape[-2:], mode="nearest")
        fused = self.smooth_fine(self.lateral_fine(fine) + top_down)
        level_fine = self.proj_fine(F.silu(self.norm_fine(fused)))
        level_coarse = self.proj_coarse(F.silu(self.norm_coarse(top_down)))
        return torch.cat([level_fine, level_coarse], dim=1)

