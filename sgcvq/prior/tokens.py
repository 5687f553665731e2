"""A trained tokenizer as the prior sees it: its codebook size, token grid, class groups, and
batched encode / decode of image tensors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import CLASS_NAMES

__all__ = ["Tokenizer", "load_prior_tokenizer"]


@dataclass
class Tokenizer:
    """A loaded tokenizer run: model (eval), its Config, where it came from, and its layout."""

    model: torch.nn.Module
    cfg: object
    path: str
    model_checkpoint: str = ""  # the checkpoint folder the weights came from

    @property
    def kind(self) -> str:
        return self.model.quantizer_kind  # "sgc" | "ema" | "vqgan" | "cvq"

    @property
    def num_codes(self) -> int:
        return int(self.cfg.model.codebook_size)

    @property
    def factor(self) -> int:
        return int(self.model.downsample_factor)

    @property
    def resolution(self) -> int:
        return int(self.cfg.model.resolution)

    @property
    def grid(self) -> tuple[int, int]:
        return self.resolution // self.factor, self.resolution // self.factor

    @property
    def num_classes(self) -> int:
        """The data's classes (the group count for SGC; the synthetic scenes' 9 classes otherwise)."""
        return int(self.cfg.model.num_classes or len(CLASS_NAMES))

    @property
    def offsets(self) -> torch.Tensor | None:
        """[C+1] class offsets of a grouped codebook, None without groups."""
        if self.cfg.model.num_classes is None:
            return None
        return self.model.quantizer.class_offsets.detach().cpu().long()

    def require_groups(self, what: str) -> torch.Tensor:
        off = self.offsets
        if off is None:
            raise ValueError(f"{what} needs a tokenizer with a class-grouped codebook (SGC, model.num_classes set); "
                             f"{self.path} is a '{self.kind}' tokenizer without group layout")
        return off

    @torch.no_grad()
    def encode(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> token grids [B, h, w] int64. labels [B, H, W] are used
        only by a grouped tokenizer (each token searches its class's group: tokens as used)."""
        use = labels if self.offsets is not None else None
        out = []
        for i in range(0, images.shape[0], batch_size):
            lab = use[i:i + batch_size] if use is not None else None
            out.append(self.model.encode(images[i:i + batch_size], labels=lab))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, grids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """token grids [B, h, w] int64 -> images [B, 3, H, W] clamped to [-1, 1]."""
        if grids.numel() and (int(grids.min()) < 0 or int(grids.max()) >= self.num_codes):
            raise ValueError(f"decode: token ids must be in [0, {self.num_codes}), got "
                             f"[{int(grids.min())}, {int(grids.max())}]")
        return torch.cat([self.model.decode_indices(grids[i:i + batch_size]).clamp(-1, 1)
                          for i in range(0, grids.shape[0], batch_size)])


def load_prior_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
    """Load a tokenizer run folder / checkpoint (sgcvq.tokenizer_io.load_tokenizer) for the prior."""
    from ..tokenizer_io import load_tokenizer

    model, cfg, state = load_tokenizer(path, device)
    return Tokenizer(model, cfg, str(path), state["path"])
