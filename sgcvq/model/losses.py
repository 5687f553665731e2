"""The VQGAN objective: L1 (+ LPIPS) reconstruction, hinge GAN with the adaptive weight, quantizer loss.

generator:      l1_weight * |x - x̂| + perceptual_weight * LPIPS(x, x̂)            (the "nll")
                + d_weight * disc_factor * (-mean D(x̂))                          (hinge generator loss)
                + quant_loss                                                      (commitment + semantic)
discriminator:  disc_factor * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x̂)))
with disc_factor = 1 from `disc_start` on (0 before), and VQGAN's adaptive weight
d_weight = disc_weight * ||∇_last nll|| / (||∇_last g|| + 1e-4), clamped to [0, 1e4], where
`last` is the decoder's final conv weight (Esser et al. 2021, eq. 7).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lpips import LPIPS


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: 0.5 * (mean relu(1 - real) + mean relu(1 + fake)), a scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """VQGAN's balance between reconstruction and GAN gradients at the decoder's last layer (a detached scalar).

    Returns 0 where gradients cannot be taken (no autograd graph, e.g. evaluation under no_grad).
    """
    if not (torch.is_grad_enabled() and nll.requires_grad and g_loss.requires_grad):
        return torch.zeros((), device=nll.device)
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


class VQGANLoss(nn.Module):
    """Losses for one step; holds the (frozen) LPIPS network when perceptual_weight > 0.

    disc_start: the global step from which the GAN terms count (before it they are 0 and the
        discriminator is not even run in the generator loss).
    lpips_weights: path to the local LPIPS weights (or $SGCVQ_LPIPS_WEIGHTS); only read when
        perceptual_weight > 0, and then required (a clear error says how to get them).
    """

    def __init__(self, disc_start: int = 0, disc_weight: float = 0.5, perceptual_weight: float = 0.0,
                 lpips_weights: str | None = None, l1_weight: float = 1.0):
        super().__init__()
        for name, value in (("disc_weight", disc_weight), ("perceptual_weight", perceptual_weight),
                            ("l1_weight", l1_weight)):
            if value < 0:
                raise ValueError(f"VQGANLoss: {name} must be >= 0, got {value}")
        self.disc_start = int(disc_start)
        self.disc_weight = float(disc_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.l1_weight = float(l1_weight)
        self.lpips = LPIPS.from_file(lpips_weights) if perceptual_weight > 0 else None

    def disc_factor(self, global_step: int) -> float:
        return 1.0 if global_step >= self.disc_start else 0.0

    def reconstruction_loss(self, images: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The "nll": l1_weight * mean|x - x̂| + perceptual_weight * mean LPIPS(x, x̂); images, recon [B, 3, H, W]."""
        l1 = (images.float() - recon.float()).abs().mean()
        logs = {"l1": l1.detach()}
        nll = self.l1_weight * l1
        if self.lpips is not None:
            perceptual = self.lpips(images.contiguous(), recon.contiguous()).mean()
            logs["lpips"] = perceptual.detach()
            nll = nll + self.perceptual_weight * perceptual
        return nll, logs

    def generator_loss(self, images: torch.Tensor, out, last_layer: torch.Tensor, global_step: int,
                       disc: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total generator loss (scalar) and logs {l1, [lpips], nll, quant, g, d_weight, disc_factor, total}.

        images [B, 3, H, W] in [-1, 1]; out: the model's output (uses out.recon, out.quant_loss).
        """
        nll, logs = self.reconstruction_loss(images, out.recon)
        factor = self.disc_factor(global_step)
        if factor > 0:
            g_loss = -disc(out.recon.contiguous()).float().mean()
            d_weight = adaptive_weight(nll, g_loss, last_layer, self.disc_weight)
        else:
            g_loss = torch.zeros((), device=images.device)
            d_weight = torch.zeros((), device=images.device)
        quant = out.quant_loss.float()
        total = nll + d_weight * factor * g_loss + quant
        logs.update(nll=nll.detach(), quant=quant.detach(), g=g_loss.detach(), d_weight=d_weight.detach(),
                    disc_factor=torch.tensor(factor, device=images.device), total=total.detach())
        return total, logs

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor, disc: nn.Module,
                           global_step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss for the discriminator (scalar, 0 before disc_start) and logs {d, logits_real, logits_fake}.

        recon must already be detached (the generator gets no gradient from this loss).
        """
        logits_real = disc(images.contiguous().detach()).float()
        logits_fake = disc(recon.contiguous().detach()).float()
        factor = self.disc_factor(global_step)
        d_loss = factor * hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d": d_loss.detach(), "logits_real": logits_real.mean().detach(),
                        "logits_fake": logits_fake.mean().detach()}
