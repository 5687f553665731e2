"""The quantizers the SGC model is compared with, behind the model's quantizer interface.

`ModelConfig.quantizer` picks one (same encoder, pyramid and decoder around each):

* "sgc":   FastSemanticQuantizer with class groups (EMA codebook, in-class re-seeding).
* "ema":   FastSemanticQuantizer without groups: EMA VQ with k-means start and dead-code re-seeding.
* "vqgan": taming-transformers' VectorQuantizer2 (sgcvq.compat): codebook learned by gradient,
           loss ||sg(z_q) - z||² + β ||z_q - sg(z)||² (taming's default legacy form), no EMA, no
           re-seeding, init uniform(-1/K, 1/K). The baseline the paper compares against.
* "cvq":   a CVQ-VAE-style quantizer (Zheng & Vedaldi, "Online Clustered Codebook", ICCV 2023):
           the VQGAN codebook plus the running average usage of every code and anchor
           re-initialisation of rarely used codes towards batch features; no semantics.

Every kind offers what the model, the trainer and the evaluation use:
    forward(x [B, ..., D], labels=None) -> (quantized [B, ..., D], indices [B, ...] int64, loss scalar)
    codebook [K, D], get_codes_from_indices(indices) -> [*indices.shape, D], metrics() -> dict.
"""
from __future__ import annotations

import torch
from torch import nn

from ..distributed import all_reduce_flat, broadcast_from_rank0
from ..ema_codebook import CodeUsage
from ..ops import cluster_stats, nearest_code
from ..quantizer import FastSemanticQuantizer

__all__ = ["QUANTIZER_KINDS", "TamingVQ", "ClusteredVQ", "build_quantizer", "resolve_quantizer_kind"]

QUANTIZER_KINDS = ("sgc", "ema", "vqgan", "cvq")




def _flat_tokens(x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or x.shape[-1] != dim:
        raise ValueError(f"{name}: x is {list(x.shape)} but expected [B, ..., D] with D = dim = {dim}")
    return x.reshape(-1, dim)


def _no_labels(labels, name: str) -> None:
    if labels is not None:
        raise ValueError(f"{name}: labels were given, but this quantizer has no class groups (model.quantizer="
                         "'sgc' uses them)")


class TamingVQ(CodeUsage):
    """taming-transformers' VQGAN quantizer (sgcvq.compat.VectorQuantizer2) behind the model's interface.

    x [B, ..., D] channel-last -> (quantized, indices [B, ...], loss). The codebook is the
    Parameter `vq.embedding.weight`, trained by the optimizer through the codebook loss term.
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, metrics_window: int = 100):
        super().__init__()
        from ..compat import VectorQuantizer2

        if beta < 0:
            raise ValueError(f"TamingVQ: beta must be >= 0, got {beta}")
        self.dim = dim
        self.vq = VectorQuantizer2(codebook_size, dim, beta)
        self._init_usage(codebook_size, metrics_window)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.embedding.weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        _no_labels(labels, "TamingVQ")
        tokens = _flat_tokens(x, self.dim, "TamingVQ")
        token_shape = tuple(x.shape[:-1])
        # taming takes feature maps [B, C, H, W]: the tokens as an [M, D, 1, 1] map are the same search
        z = tokens[:, :, None, None]
        z_q, loss, info = self.vq(z)
        index = info[2].reshape(-1).long()
        if self.training:
            self._record(torch.bincount(index, minlength=self.codebook_size).float())
        return z_q.reshape(*token_shape, self.dim), index.view(token_shape), loss

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook[indices.long()]


class ClusteredVQ(CodeUsage):
    """CVQ-VAE's online clustered codebook on the project's ops (no contrastive term, no semantics).

    The codebook is learned by gradient (loss β · ||sg(z_q) − z||² + ||z_q − sg(z)||², CVQ-VAE's
    form, init uniform(-1/K, 1/K)). In training, after the search:
        p_k ← γ p_k + (1 − γ) n_k / N                      (running average usage)
        α_k = exp(−p_k · K · 10 / (1 − γ) − 1e-3)          (≈ 1 for an unused code, ≈ 0 for a used one)
        e_k ← (1 − α_k) e_k + α_k · a_k
    where the anchor a_k is the batch feature closest to e_k (CVQ-VAE's anchor="closest"; found
    with `nearest_code` with the roles of tokens and codes swapped). Distances are squared L2
    (CVQ-VAE's default is cosine; the other quantizers here use L2, so the comparison does too).
    With several processes the anchors and usage come from rank 0 / the summed counts.
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 metrics_window: int = 100):
        super().__init__()
        if beta < 0:
            raise ValueError(f"ClusteredVQ: beta must be >= 0, got {beta}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ClusteredVQ: decay must be in [0, 1), got {decay}")
        self.dim = dim
        self.beta = float(beta)
        self.decay = float(decay)
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("embed_prob", torch.zeros(codebook_size))
        self.register_buffer("codes_reinit", torch.zeros((), dtype=torch.int64))
        self._init_usage(codebook_size, metrics_window)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        _no_labels(labels, "ClusteredVQ")
        tokens = _flat_tokens(x, self.dim, "ClusteredVQ")
        token_shape = tuple(x.shape[:-1])
        xs = tokens.detach().float()
        weight = self.embedding.weight
        index, _ = nearest_code(xs, weight.detach().float(), check=False)
        z_q = weight[index].to(tokens.dtype)  # gradient into the codebook
        loss = self.beta * (z_q.detach() - tokens).pow(2).mean() + (z_q - tokens.detach()).pow(2).mean()
        quantized = tokens + (z_q - tokens).detach()
        if self.training:
            self._reinit(xs, index)
        return quantized.view(*token_shape, self.dim), index.view(token_shape), loss

    @torch.no_grad()
    def _reinit(self, xs: torch.Tensor, index: torch.Tensor) -> None:
        K = self.codebook_size
        counts, _ = cluster_stats(index, xs, K, check=False)
        n = xs.new_full((1,), float(xs.shape[0]))
        counts, n = all_reduce_flat([counts, n])
        self._record(counts)
        self.embed_prob.mul_(self.decay).add_(counts / n.clamp(min=1), alpha=1.0 - self.decay)
        weight = self.embedding.weight.data
        # anchor = the closest batch feature of each code: the nearest "code" of every code among the tokens
        closest, _ = nearest_code(weight.float(), xs, check=False)
        anchors = xs[closest]
        alpha = torch.exp(-(self.embed_prob * K * 10.0) / (1.0 - self.decay) - 1e-3)
        alpha, anchors = broadcast_from_rank0([alpha, anchors])
        weight.copy_(weight * (1.0 - alpha[:, None]) + anchors.to(weight.dtype) * alpha[:, None])
        self.codes_reinit.add_((alpha > 0.5).sum())

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook[indices.long()]

    def metrics(self) -> dict:
        out = super().metrics()
        out["codes_reinit"] = int(self.codes_reinit)
        return out


def resolve_quantizer_kind(kind: str, num_classes: int | None) -> str:
    """'auto' -> 'sgc' with classes, 'ema' without; checks the kind against num_classes."""
    if kind == "auto":
        return "sgc" if num_classes is not None else "ema"
    if kind not in QUANTIZER_KINDS:
        raise ValueError(f"ModelConfig.quantizer={kind!r} must be 'auto' or one of {QUANTIZER_KINDS}")
    if kind == "sgc" and num_classes is None:
        raise ValueError("ModelConfig.quantizer='sgc' needs model.num_classes (the class groups)")
    if kind != "sgc" and num_classes is not None:
        raise ValueError(f"ModelConfig.quantizer={kind!r} has no class groups: set model.num_classes=null "
                         "(the label-free metrics still use the data's classes)")
    return kind


def build_quantizer(cfg, level_dims: tuple[int, ...]) -> nn.Module:
    """The quantizer named by cfg.quantizer (a ModelConfig), for tokens of cfg.embed_dim channels."""
    kind = resolve_quantizer_kind(cfg.quantizer, cfg.num_classes)
    if kind in ("sgc", "ema"):
        return FastSemanticQuantizer(
            cfg.embed_dim, cfg.codebook_size, num_classes=cfg.num_classes,
            group_sizes=cfg.group_sizes if isinstance(cfg.group_sizes, str) else list(cfg.group_sizes),
            class_frequencies=None if cfg.class_frequencies is None else list(cfg.class_frequencies),
            min_codes_per_class=cfg.min_codes_per_class,
            decay=cfg.decay, eps=cfg.eps, commitment_weight=cfg.commitment_weight,
            threshold_dead=cfg.threshold_dead, max_idle_steps=cfg.max_idle_steps,
            reseed_split=cfg.reseed_split, rebalance_every=cfg.rebalance_every, rebalance_rate=cfg.rebalance_rate,
            kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters,
            level_weights=list(cfg.level_weights), semantic_loss_weight=cfg.semantic_loss_weight,
            channel_last=True, level_dims=list(level_dims),
            # The model checks the pixel labels itself before pooling them (token_labels).
            check_labels=False,
        )
    if kind == "vqgan":
        return TamingVQ(cfg.embed_dim, cfg.codebook_size, beta=cfg.commitment_weight)
    return ClusteredVQ(cfg.embed_dim, cfg.codebook_size, beta=cfg.commitment_weight, decay=cfg.decay)
