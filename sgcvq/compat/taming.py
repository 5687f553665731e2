"""taming-transformers' quantizers (taming/modules/vqvae/quantize.py), argument for argument.

    from sgcvq.compat import VectorQuantizer2 as VectorQuantizer   # in taming/models/vqgan.py

`VectorQuantizer2(n_e, e_dim, beta, remap=None, unknown_index="random", sane_index_shape=False,
legacy=True)` behaves like taming's: the codebook is `self.embedding` (an nn.Embedding initialised
uniform(-1/n_e, 1/n_e)) learned by gradient, and

    forward(z [B, C, H, W]) -> (z_q [B, C, H, W], loss [], (None, None, indices))

with indices [B*H*W] int64 ([B*H*W, 1] with remap, [B, H, W] with sane_index_shape) and the loss
of taming's formula, sg = stop-gradient, mse = mean over every element:

    legacy=True  (taming's default): mse(sg(z_q), z) + beta * mse(z_q, sg(z))
    legacy=False:                    beta * mse(sg(z_q), z) + mse(z_q, sg(z))

z_q is straight-through (z + sg(z_q - z)). State dict: `embedding.weight` (plus `used` with
remap), so taming checkpoints load with `quantize.embedding.weight` where it belongs.

What differs is the cost: the search is `sgcvq.nearest_code` (no B*H*W x n_e distance matrix),
the loss value comes from the search's distances, and its backward is one fused pass for z plus
`sgcvq.cluster_stats` for the codebook gradient (no scatter of [N, e_dim] rows).

The opt-in `ema=True` (or `num_classes=C`) swaps the gradient-learned codebook for sgcvq's
FastSemanticQuantizer (EMA codebook, dead-code re-seeding, with `num_classes` the semantic
codebook and a `labels=` keyword in forward). Then the loss is the commitment term alone, with the
weight taming's formula gives it (1.0 with legacy=True, beta with legacy=False), `embedding` is a
frozen nn.Embedding view of the EMA codebook, and a taming checkpoint's `embedding.weight` loads
into the EMA codebook (the EMA statistics start fresh on it).

`VectorQuantizer(n_e, e_dim, beta)` is taming's first version: the legacy loss, indices [B*H*W, 1],
and info = (perplexity, min_encodings [B*H*W, n_e] one-hot, indices) as taming returns them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..ops import nearest_code
from ..quantizer import FastSemanticQuantizer
from .sqdist_loss import sqdist_loss

__all__ = ["VectorQuantizer2", "VectorQuantizer", "TamingVectorQuantizer"]


class VectorQuantizer2(nn.Module):
    """taming's VectorQuantizer2 on sgcvq's fused search (see the module docstring).

    Args (taming's): n_e codes of size e_dim; beta; remap: path of a .npy with the used code
    indices (indices are then positions in that list); unknown_index: "random", "extra" or an
    int, for codes outside `used`; sane_index_shape: indices [B, H, W]; legacy: the loss form.
    Args (sgcvq, keyword only): ema: learn the codebook by EMA (FastSemanticQuantizer);
    num_classes: the semantic codebook (implies ema); further keywords go to
    FastSemanticQuantizer (decay, threshold_dead, kmeans_init, group_sizes, ...).
    """

    def __init__(self, n_e, e_dim, beta, remap=None, unknown_index="random", sane_index_shape=False,
                 legacy=True, *, ema: bool = False, num_classes: int | None = None, **sgcvq_kwargs):
        super().__init__()
        name = type(self).__name__
        for arg, value in (("n_e", n_e), ("e_dim", e_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be an int >= 1, got {value!r}")
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy
        self.ema = bool(ema) or num_classes is not None
        if sgcvq_kwargs and not self.ema:
            raise TypeError(
                f"{name}: unexpected keyword arguments {sorted(sgcvq_kwargs)} (taming's arguments are n_e, e_dim, "
                "beta, remap, unknown_index, sane_index_shape, legacy; sgcvq's options need ema=True)"
            )
        if self.ema:
            # the commitment term keeps the weight taming's loss gives it; the codebook term is the EMA's job
            self.quantizer = FastSemanticQuantizer(
                dim=e_dim, codebook_size=n_e, num_classes=num_classes, channel_last=False,
                commitment_weight=1.0 if legacy else float(beta), **sgcvq_kwargs,
            )
            self.register_load_state_dict_pre_hook(_taming_checkpoint_into_ema)
        else:
            self.embedding = nn.Embedding(n_e, e_dim)
            self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

        self.remap = remap
        if remap is not None:
            self.register_buffer("used", torch.tensor(np.load(remap)))
            if self.used.dim() != 1 or self.used.dtype.is_floating_point:
                raise ValueError(f"{name}: remap file {remap!r} must hold a 1-D integer array, got "
                                 f"{self.used.dtype} {list(self.used.shape)}")
            self.re_embed = self.used.shape[0]
            if unknown_index == "extra":
                unknown_index = self.re_embed
                self.re_embed = self.re_embed + 1
            elif unknown_index != "random" and (isinstance(unknown_index, bool) or not isinstance(unknown_index, int)):
                raise ValueError(f"{name}: unknown_index must be 'random', 'extra' or an int, got {unknown_index!r}")
            self.unknown_index = unknown_index
        else:
            self.re_embed = n_e
        self.sane_index_shape = sane_index_shape

    def __getattr__(self, name):
        if name == "embedding" and self.__dict__.get("ema", False):
            # a view of the EMA codebook (shares its storage): taming code that reads
            # quantize.embedding.weight sees the live codes
            return nn.Embedding.from_pretrained(self.quantizer.codebook, freeze=True)
        return super().__getattr__(name)

    # -- remap (taming's rules) ----------------------------------------------------------------
    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Code indices [B, ...] -> positions in `used` (first match); codes not in `used` get
        unknown_index, or with "random" a uniform draw in [0, re_embed) (CPU generator, as taming)."""
        if inds.dim() < 2:
            raise ValueError(f"{type(self).__name__}.remap_to_used: indices need a batch axis, got {list(inds.shape)}")
        used = self.used.to(device=inds.device, dtype=torch.int64)
        # position of each code's first occurrence in `used`; len(used) = not used
        sentinel = used.shape[0]
        first = torch.full((self.n_e,), sentinel, dtype=torch.int64, device=inds.device)
        valid = (used >= 0) & (used < self.n_e)
        positions = torch.arange(sentinel, device=inds.device)
        first.scatter_reduce_(0, used[valid], positions[valid], reduce="amin")
        new = first[inds.to(torch.int64)]
        unknown = new == sentinel
        if self.unknown_index == "random":
            n = int(unknown.sum())
            new[unknown] = torch.randint(0, self.re_embed, size=(n,)).to(device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in `used` [B, ...] -> code indices; the "extra" position maps to code used[0]."""
        if inds.dim() < 2:
            raise ValueError(f"{type(self).__name__}.unmap_to_all: indices need a batch axis, got {list(inds.shape)}")
        used = self.used.to(inds.device)
        inds = inds.to(torch.int64)
        if self.re_embed > used.shape[0]:  # the extra token reads as position 0
            inds = torch.where(inds >= used.shape[0], torch.zeros_like(inds), inds)
        return used[inds].to(torch.int64)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, temp=None, rescale_logits=False, return_logits=False, *,
                labels: torch.Tensor | None = None):
        """z [B, C, H, W] -> (z_q [B, C, H, W], loss [], (None, None, indices)); see the module doc.

        temp, rescale_logits, return_logits exist for the Gumbel quantizer's interface and must
        keep their defaults (as in taming). labels: token or pixel labels (num_classes only).
        """
        name = type(self).__name__
        if temp is not None and temp != 1.0:
            raise ValueError(f"{name}: temp must be None or 1.0 (only for interface compatibility with Gumbel)")
        if rescale_logits:
            raise ValueError(f"{name}: rescale_logits must be False (only for interface compatibility with Gumbel)")
        if return_logits:
            raise ValueError(f"{name}: return_logits must be False (only for interface compatibility with Gumbel)")
        if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[1] != self.e_dim:
            shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name}: z must be [B, C, H, W] with C = e_dim = {self.e_dim}, got {shape}")
        if labels is not None and not self.ema:
            raise ValueError(f"{name}: labels need the semantic codebook: pass num_classes=C")
        B, _, H, W = z.shape
        if self.ema:
            z_q, index, loss = self.quantizer(z, labels)
            z_q = z_q.contiguous()
            index = index.reshape(-1)
        else:
            z_q, index, loss = self._quantize(z)
        return z_q, loss, (None, None, self._shape_indices(index, B, H, W))

    def _quantize(self, z: torch.Tensor):
        B, C, H, W = z.shape
        weight = self.embedding.weight
        tokens = z.permute(0, 2, 3, 1).reshape(-1, C)  # taming's row-major (B, H, W) token order
        with torch.no_grad():
            index, sqdist = nearest_code(tokens.detach().float(), weight.detach().float(), check=False)
        w_commit, w_codebook = (1.0, float(self.beta)) if self.legacy else (float(self.beta), 1.0)
        loss = sqdist_loss(tokens, weight, index, sqdist, w_commit + w_codebook, w_commit, w_codebook, tokens.numel())
        with torch.no_grad():
            codes = weight.detach()[index].view(B, H, W, C).permute(0, 3, 1, 2)
            delta = codes.to(z.dtype) - z.detach()
        # straight-through, taming's z + sg(z_q - z): the same rounding as taming's forward value
        z_q = (z + delta).contiguous()
        return z_q, index, loss.to(z.dtype)

    def _shape_indices(self, index: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
        if self.remap is not None:
            index = self.remap_to_used(index.reshape(B, -1)).reshape(-1, 1)
        if self.sane_index_shape:
            index = index.reshape(B, H, W)
        return index

    def get_codebook_entry(self, indices: torch.Tensor, shape):
        """Codes of flat indices [B*H*W]; shape (B, H, W, C) -> [B, C, H, W], None -> [B*H*W, C].
        With remap the indices are positions in `used` and shape is required (its B)."""
        if self.remap is not None:
            if shape is None:
                raise ValueError(f"{type(self).__name__}.get_codebook_entry: shape is required with remap")
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q

    def extra_repr(self) -> str:
        s = f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}"
        if self.remap is not None:
            s += f", remap={self.remap!r}, re_embed={self.re_embed}, unknown_index={self.unknown_index!r}"
        return s + (", ema=True" if self.ema else "")


class VectorQuantizer(VectorQuantizer2):
    """taming's first VectorQuantizer(n_e, e_dim, beta): legacy loss, info = (perplexity,
    min_encodings [N, n_e] one-hot in z's dtype, indices [N, 1]). The one-hot is built because
    taming returns it; VectorQuantizer2 never builds it."""

    def __init__(self, n_e, e_dim, beta, **sgcvq_kwargs):
        super().__init__(n_e, e_dim, beta, legacy=True, **sgcvq_kwargs)

    def forward(self, z: torch.Tensor, *, labels: torch.Tensor | None = None):
        z_q, loss, (_, _, index) = super().forward(z, labels=labels)
        index = index.reshape(-1, 1)
        min_encodings = torch.zeros(index.shape[0], self.n_e, dtype=z.dtype, device=z.device)
        min_encodings.scatter_(1, index, 1)
        counts = torch.bincount(index.reshape(-1), minlength=self.n_e).to(z.dtype)
        e_mean = counts / max(index.shape[0], 1)
        perplexity = torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10)))
        return z_q, loss, (perplexity, min_encodings, index)

    def get_codebook_entry(self, indices: torch.Tensor, shape):
        return super().get_codebook_entry(indices.reshape(-1), shape)


class TamingVectorQuantizer(VectorQuantizer2):
    """sgcvq 0.1's name: VectorQuantizer2 with the EMA codebook on (ema=True, beta=0.25 default,
    legacy=False so the loss is beta * commitment as before). Prefer VectorQuantizer2."""

    def __init__(self, n_e, e_dim, beta=0.25, **sgcvq_kwargs):
        sgcvq_kwargs.setdefault("legacy", False)
        super().__init__(n_e, e_dim, beta, ema=True, **sgcvq_kwargs)


def _taming_checkpoint_into_ema(module, state_dict, prefix, local_metadata, strict, missing_keys,
                                unexpected_keys, error_msgs):
    """A taming checkpoint (`embedding.weight`) loading into the EMA mode: the codes go into the EMA
    codebook and the EMA statistics start fresh on them (N = 1, M = E); other state keeps its value."""
    key = prefix + "embedding.weight"
    if key not in state_dict or prefix + "quantizer.codebook" in state_dict:
        return
    codes = state_dict.pop(key).float()
    q = module.quantizer
    for name, value in q.state_dict().items():
        state_dict.setdefault(prefix + "quantizer." + name, value.clone())
    state_dict[prefix + "quantizer.codebook"] = codes
    state_dict[prefix + "quantizer.embed_sum"] = codes.clone()
    state_dict[prefix + "quantizer.cluster_size"] = torch.ones(codes.shape[0])
