"""Drop-in adapters for code written against other quantizers.

`TamingVectorQuantizer` has the interface of taming-transformers' `VectorQuantizer`
(taming/modules/vqvae/quantize.py), so `taming.models.vqgan.VQModel` and the transformer stage
(`Net2NetTransformer`, which calls `get_codebook_entry`) run with it unchanged:

    model.quantize = TamingVectorQuantizer(n_e=1024, e_dim=256, beta=0.25)

Shapes, exactly as taming's:
    forward(z [B, C, H, W]) -> (z_q [B, C, H, W], loss [], (perplexity [], None, indices [B*H*W, 1] int64))
    get_codebook_entry(indices [B*H*W] (or [B*H*W, 1]), shape=(B, H, W, C)) -> [B, C, H, W]
                       (shape=None -> [B*H*W, C])
Token order in `indices` is row-major over (B, H, W), as in taming.

Differences, on purpose: the codebook is learned by EMA (no gradient, so the loss is only
β · commitment where taming adds a codebook term ||sg(z) − z_q||²), and `min_encodings` (taming's
N × n_e one-hot) is None: it is never materialised.
"""
from __future__ import annotations

import torch
from torch import nn

from .quantizer import FastSemanticQuantizer

__all__ = ["TamingVectorQuantizer"]


class TamingVectorQuantizer(nn.Module):
    """taming-transformers' VectorQuantizer(n_e, e_dim, beta) on FastSemanticQuantizer.

    Extra keyword arguments go to FastSemanticQuantizer (e.g. num_classes=19, decay=0.99,
    threshold_dead=..., kmeans_init=True); forward also takes optional `labels` (token labels
    [B, H, W] or pixel maps [B, H*f, W*f]).
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, **kwargs):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.quantizer = FastSemanticQuantizer(
            dim=e_dim, codebook_size=n_e, commitment_weight=beta, channel_last=False, **kwargs
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None):
        """z [B, C, H, W] -> (z_q [B, C, H, W], loss, (perplexity, None, indices [B*H*W, 1]))."""
        if z.dim() != 4:
            raise ValueError(f"TamingVectorQuantizer: z must be [B, C, H, W], got {list(z.shape)}")
        z_q, indices, loss = self.quantizer(z, labels)
        flat = indices.reshape(-1)
        # perplexity of this batch's code usage, on the device like taming's (no one-hot: a
        # scatter-add into n_e bins)
        counts = torch.zeros(self.n_e, dtype=torch.float32, device=z.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        e_mean = counts / max(flat.numel(), 1)
        perplexity = torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10)))
        return z_q.contiguous(), loss, (perplexity, None, flat.unsqueeze(1))

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """Codes of indices [N] or [N, 1]; shape (B, H, W, C) -> [B, C, H, W], None -> [N, C]."""
        z_q = self.quantizer.get_codes_from_indices(indices.reshape(-1))
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q
