"""Synthetic scenes and clips as tensors, painted once per comparison, and the seeds they come from.

Seeds: the tokenizers train on data.seed (0 in the demo) and are evaluated on data.seed +
EVAL_SEED_OFFSET (scenes) and + 2 * EVAL_SEED_OFFSET (clips). The prior trains on the tokenizer's
training scenes; its next-frame model on clips of PRIOR_CLIP_SEED; it is scored on the held-out
scenes and clips. The judge has its own seed (judge.JUDGE_SEED).
"""
from __future__ import annotations

import torch

from ..data import SyntheticStreetScenes

__all__ = ["scene_tensors", "clip_tensors", "PRIOR_CLIP_SEED", "held_out_seeds"]

PRIOR_CLIP_SEED = 3_000_009


def held_out_seeds(data_seed: int) -> tuple[int, int]:
    """(held-out scene seed, held-out clip seed) of a tokenizer trained on data_seed."""
    from ..training.build import EVAL_SEED_OFFSET

    return data_seed + EVAL_SEED_OFFSET, data_seed + 2 * EVAL_SEED_OFFSET


def scene_tensors(count: int, resolution: int, seed: int, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [count, 3, R, R] float32 in [-1, 1], labels [count, R, R] int64)."""
    ds = SyntheticStreetScenes(count, resolution, seed, cache=cache)
    items = [ds[i] for i in range(count)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def clip_tensors(count: int, frames: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames [count, T, 3, R, R] in [-1, 1], labels [count, T, R, R] int64): moving-camera clips."""
    ds = SyntheticStreetScenes(count, resolution, seed, video=True, num_frames=frames)
    items = [ds[i] for i in range(count)]
    return torch.stack([it["frames"] for it in items]), torch.stack([it["labels"] for it in items])
