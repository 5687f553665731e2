"""The generator and discriminator steps as modules, so DDP wraps exactly one forward per step.

DDP needs one forward of the wrapped module per backward. The discriminator loss calls the
discriminator twice (real and fake), so the discriminator is wrapped together with its loss; the
generator is wrapped with its loss for the same reason (the adaptive GAN weight differentiates
through the decoder's last layer inside the loss).
"""
from __future__ import annotations

import contextlib

from torch import nn

__all__ = ["GeneratorStep", "DiscriminatorStep", "frozen"]


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters of `module` do not require grad inside the block (the disc during the G step:
    gradients flow through it to the generator, none accumulate into it)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class GeneratorStep(nn.Module):
    """model forward + generator loss. Returns (model output, loss, logs)."""

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model = model
        # The loss is not a submodule: its frozen LPIPS weights must not be part of DDP's buckets.
        self.__dict__["loss"] = loss

    def forward(self, images, labels, global_step: int, disc: nn.Module):
        out = self.model(images, labels=labels)
        g_loss, logs = self.loss.generator_loss(images, out, self.model.last_layer, global_step, disc)
        return out, g_loss, logs


class DiscriminatorStep(nn.Module):
    """discriminator loss on real images and detached reconstructions. Returns (loss, logs)."""

    def __init__(self, disc: nn.Module, loss: nn.Module):
        super().__init__()
        self.disc = disc
        self.__dict__["loss"] = loss

    def forward(self, images, recon, global_step: int):
        return self.loss.discriminator_loss(images, recon, self.disc, global_step)
