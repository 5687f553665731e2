"""PatchGAN discriminator (pix2pix's NLayerDiscriminator, as used by taming-transformers' VQGAN)."""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """images [B, C, H, W] in [-1, 1] -> patch logits [B, 1, H', W'] (one real/fake score per receptive field).

    `disc_layers` stride-2 conv + BatchNorm + LeakyReLU(0.2) blocks with channels
    disc_channels * min(2^n, 8), then a stride-1 block and a 1-channel conv. With 3 layers and a
    64x64 input the output is 6x6 patches, each seeing a 70x70 receptive field.
    Reads cfg.in_channels, cfg.disc_channels, cfg.disc_layers from a ModelConfig.
    """

    def __init__(self, cfg):
        super().__init__()
        channels, layers = cfg.disc_channels, cfg.disc_layers
        if channels < 1 or layers < 1:
            raise ValueError(f"PatchDiscriminator: disc_channels={channels} and disc_layers={layers} must be >= 1")
        seq: list[nn.Module] = [nn.Conv2d(cfg.in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1  # the last block keeps the resolution (pix2pix)
            seq += [
                # No bias: BatchNorm follows.
                nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*seq)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def _init_weights(module: nn.Module) -> None:
    # DCGAN/pix2pix initialisation, which taming keeps: the hinge loss is tuned for it.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
