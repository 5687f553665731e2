"""Next-frame prediction (the paper's Figure 5 analogue): a prior over (two context frames, next
frame) fills the next frame's tokens; rolling it forward gives horizons 1..H. One context frame
works too: the older slot is left masked, as in training (drop_context)."""
from __future__ import annotations

import torch

from .sampling import decode
from .transformer import MaskedTokenPrior

__all__ = ["predict_frames", "clip_windows"]


def clip_windows(clips: torch.Tensor, frames: int) -> torch.Tensor:
    """clips [B, T, n] token grids -> every run of `frames` consecutive grids, [B * (T - frames + 1), frames * n]."""
    B, T, n = clips.shape
    if T < frames:
        raise ValueError(f"clip_windows: clips have {T} frames, fewer than the {frames} a window needs")
    wins = clips.unfold(1, frames, 1)  # [B, T - frames + 1, n, frames]
    return wins.permute(0, 1, 3, 2).reshape(-1, frames * n)


@torch.no_grad()
def predict_frames(prior: MaskedTokenPrior, context: torch.Tensor, horizon: int, steps: int = 8,
                   temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """context [B, c, n] token grids (c = 1 .. prior frames - 1, oldest first) -> predictions [B, horizon, n].

    Each predicted frame becomes the newest context frame of the next step.
    """
    frames, n = prior.cfg.frames, prior.cfg.tokens_per_frame
    if frames < 2:
        raise ValueError("predict_frames: this prior has one frame per sequence; train it with task 'video'")
    if context.dim() != 3 or context.shape[-1] != n or not 1 <= context.shape[1] <= frames - 1:
        raise ValueError(f"predict_frames: context must be [B, 1..{frames - 1}, {n}] token grids, got "
                         f"{list(context.shape)}")
    if horizon < 1:
        raise ValueError(f"predict_frames: horizon must be >= 1, got {horizon}")
    B = context.shape[0]
    mask = torch.full((B, 1, n), prior.mask_id, dtype=torch.long, device=context.device)
    known = context.long()
    out = []
    for _ in range(horizon):
        ctx = known[:, -(frames - 1):]
        pad = mask.expand(B, frames - 1 - ctx.shape[1], n)
        seq = torch.cat([pad, ctx, mask], dim=1).reshape(B, frames * n)
        nxt = decode(prior, seq, steps=steps, temperature=temperature, generator=generator)[:, -n:]
        out.append(nxt)
        known = torch.cat([known, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)
