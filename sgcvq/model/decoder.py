"""VQGAN-style convolutional decoder: quantized tokens [B, D, h, w] -> images [B, out_channels, H, W]."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttnBlock, ResnetBlock, Upsample, group_norm


class Decoder(nn.Module):
    """Mirror of the encoder: conv_in, middle block, len(channel_mult)-1 upsamplings, norm-SiLU-conv_out.

    Each resolution has num_res_blocks + 1 ResNet blocks, as in taming-transformers.
    `conv_out.weight` is the "last layer" used by the adaptive GAN weight.
    """

    def __init__(self, embed_dim: int, out_channels: int, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, attention: bool, dropout: float = 0.0):
        super().__init__()
        channels = base_channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(embed_dim, channels, 3, padding=1)
        self.mid = nn.Sequential(
            ResnetBlock(channels, channels, dropout),
            AttnBlock(channels) if attention else nn.Identity(),
            ResnetBlock(channels, channels, dropout),
        )
        stages = []
        for level in reversed(range(len(channel_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, base_channels * channel_mult[level], dropout))
                channels = base_channels * channel_mult[level]
            if level != 0:
                blocks.append(Upsample(channels))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
