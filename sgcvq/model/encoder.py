"""VQGAN-style convolutional encoder that returns the two pyramid stages.

Stage layout for channel_mult (m_0, ..., m_{L-1}): L resolutions, L-1 stride-2 downsamplings, so
the token grid is H / 2^(L-1). After the token-resolution stage comes VQGAN's middle block
(ResNet, attention, ResNet), then one extra "coarse" stage: one more downsampling and a ResNet
block (plus attention) at half the token resolution, where the receptive field is large enough
to carry scene-level semantics. The pyramid (pyramid.py) fuses the two.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import AttnBlock, Downsample, ResnetBlock


class Encoder(nn.Module):
    """images [B, in_channels, H, W] -> (fine [B, C, H/f, W/f], coarse [B, C, H/2f, W/2f]), C = base * m_{L-1}."""

    def __init__(self, in_channels: int, base_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 attention: bool, dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels * channel_mult[0], 3, padding=1)
        stages = []
        channels = base_channels * channel_mult[0]
        for level, mult in enumerate(channel_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(channels, base_channels * mult, dropout))
                channels = base_channels * mult
            if level != len(channel_mult) - 1:
                blocks.append(Downsample(channels))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.mid = nn.Sequential(
            ResnetBlock(channels, channels, dropout),
            AttnBlock(channels) if attention else nn.Identity(),
            ResnetBlock(channels, channels, dropout),
        )
        self.coarse = nn.Sequential(
            Downsample(channels),
            ResnetBlock(channels, channels, dropout),
            AttnBlock(channels) if attention else nn.Identity(),
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.mid(self.stages(self.conv_in(x)))
        return fine, self.coarse(fine)
