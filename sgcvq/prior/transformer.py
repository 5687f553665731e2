"""MaskedTokenPrior: a bidirectional transformer over token grids (MaskGIT, Chang et al. 2022).

The sequence is, in order:
  * optionally a layout prefix of h*w class ids (the taming-style conditioned baseline: the label
    map's tokens prepended, never masked; -1 = no class);
  * `frames` token grids of h*w codes each (1 for images; context frames then the target frame for
    next-frame prediction). A masked position holds the id K (`mask_id`).
Every position attends to every other one. The head (flat over K, or factorised class-then-code for
a grouped codebook) gives log-probabilities over the K codes for every code position.

Sized for a CPU by default (d 64, 3 layers, 4 heads: ~0.17 M parameters at 8x8, K = 128); the
same module scales up with `dim`/`layers` on a GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .heads import FactorisedHead, FlatHead, check_offsets

__all__ = ["PriorConfig", "MaskedTokenPrior"]


@dataclass
class PriorConfig:
    """Shape of a prior. head: "flat" or "factorised" (needs the tokenizer's class offsets)."""

    num_codes: int
    height: int
    width: int
    frames: int = 1
    head: str = "flat"
    num_classes: int | None = None  # classes of the factorised head / the layout prefix
    layout_prefix: bool = False
    dim: int = 64
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4
    # 0 by default: on a CPU dropout's random masks cost ~30% of a training step, and the random token
    # masks of the objective already regularise a prior this small.
    dropout: float = 0.0

    def validate(self) -> None:
        for key in ("num_codes", "height", "width", "frames", "dim", "layers", "heads", "mlp_ratio"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PriorConfig.{key} must be an int >= 1, got {value!r}")
        if self.head not in ("flat", "factorised"):
            raise ValueError(f"PriorConfig.head must be 'flat' or 'factorised', got {self.head!r}")
        if self.dim % self.heads:
            raise ValueError(f"PriorConfig.dim = {self.dim} must be divisible by heads = {self.heads}")
        if (self.head == "factorised" or self.layout_prefix) and not self.num_classes:
            raise ValueError("PriorConfig.num_classes is needed by the factorised head and the layout prefix")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PriorConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedTokenPrior(nn.Module):
    """tokens [B, frames * h * w] int64 in [0, K] (K = mask) (+ layout [B, h * w] int64 in [-1, C))
    -> log-probabilities [B, frames * h * w, K] float32."""

    def __init__(self, cfg: PriorConfig, offsets: torch.Tensor | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        K, d, n = cfg.num_codes, cfg.dim, cfg.tokens_per_frame
        self.mask_id = K
        self.code_embed = nn.Embedding(K + 1, d)
        self.pos_embed = nn.Parameter(torch.randn(n, d) * 0.02)  # one grid position, shared by the frames
        self.frame_embed = nn.Parameter(torch.randn(cfg.frames + int(cfg.layout_prefix), d) * 0.02)
        if cfg.layout_prefix:
            self.layout_embed = nn.Embedding(cfg.num_classes + 1, d)  # the last id: no class (-1)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.mlp_ratio * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        if cfg.head == "factorised":
            if offsets is None:
                raise ValueError("MaskedTokenPrior: the factorised head needs the codebook's class offsets "
                                 "(a tokenizer with class groups, model.num_classes)")
            off = check_offsets(offsets, K)
            if off.numel() - 1 != cfg.num_classes:
                raise ValueError(f"MaskedTokenPrior: offsets describe {off.numel() - 1} classes but "
                                 f"num_classes = {cfg.num_classes}")
            self.head = FactorisedHead(d, K, off)
        else:
            self.head = FlatHead(d, K)

    @property
    def seq_len(self) -> int:
        return self.cfg.frames * self.cfg.tokens_per_frame

    def hidden(self, tokens: torch.Tensor, layout: torch.Tensor | None = None) -> torch.Tensor:
        """[B, frames * h * w, d]: the code positions' final hidden states."""
        cfg = self.cfg
        B = tokens.shape[0]
        n = cfg.tokens_per_frame
        x = self.code_embed(tokens).view(B, cfg.frames, n, -1)
        x = x + self.pos_embed + self.frame_embed[-cfg.frames:, None, :]
        x = x.reshape(B, cfg.frames * n, -1)
        if cfg.layout_prefix:
            ids = torch.where(layout < 0, torch.full_like(layout, cfg.num_classes), layout)
            prefix = self.layout_embed(ids) + self.pos_embed + self.frame_embed[0]
            x = torch.cat([prefix, x], dim=1)
        h = self.norm(self.blocks(x))
        return h[:, -cfg.frames * n:] if cfg.layout_prefix else h

    def forward(self, tokens: torch.Tensor, layout: torch.Tensor | None = None) -> torch.Tensor:
        self._check(tokens, layout)
        return self.head(self.hidden(tokens, layout))

    def _check(self, tokens: torch.Tensor, layout: torch.Tensor | None) -> None:
        cfg = self.cfg
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"MaskedTokenPrior: tokens must be [B, {self.seq_len}] ({cfg.frames} frame(s) of "
                             f"{cfg.height}x{cfg.width}), got {list(tokens.shape)}")
        if cfg.layout_prefix:
            if layout is None or tuple(layout.shape) != (tokens.shape[0], cfg.tokens_per_frame):
                raise ValueError(f"MaskedTokenPrior: this prior is layout-conditioned: layout must be "
                                 f"[B, {cfg.tokens_per_frame}] class ids, got "
                                 f"{None if layout is None else list(layout.shape)}")
        elif layout is not None:
            raise ValueError("MaskedTokenPrior: layout given, but this prior was trained without a layout prefix")
