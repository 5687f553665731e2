"""The prior's jobs on one tokenizer: build and train a prior for a task, sample under a layout
(restricted, conditioned, or not at all), edit a painted region, and the class tables they use."""
from __future__ import annotations

import time

import torch

from ..data.classes import ROAD, VEHICLE
from .layout import allowed_codes, class_codes_from_counts, class_codes_from_offsets, code_class_counts
from .sampling import decode
from .store import TASKS, PriorBundle
from .tokens import Tokenizer
from .training import PriorTrainConfig, train_prior
from .transformer import MaskedTokenPrior, PriorConfig

__all__ = ["prior_config_for", "class_tables", "fit_prior", "sample_grids", "edit_grids", "paint_box"]


def prior_config_for(tok: Tokenizer, task: str, head: str = "auto", dim: int = 64, layers: int = 3,
                     heads: int = 4) -> PriorConfig:
    """The prior shape for `task` on `tok`. head "auto": factorised for a grouped codebook, else flat."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if head == "auto":
        head = "factorised" if tok.offsets is not None else "flat"
    if head == "factorised":
        tok.require_groups("the factorised head (class first, then the code in its group)")
    elif head != "flat":
        raise ValueError(f"head must be 'auto', 'flat' or 'factorised', got {head!r}")
    h, w = tok.grid
    return PriorConfig(num_codes=tok.num_codes, height=h, width=w, frames=3 if task == "video" else 1, head=head,
                       num_classes=tok.num_classes, layout_prefix=task == "layout", dim=dim, layers=layers,
                       heads=heads)


def class_tables(tok: Tokenizer, grids: torch.Tensor, token_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class_codes [C, K] bool, counts [K, C]) from training tokens and their classes: a grouped
    codebook's groups, or each code's majority class."""
    counts = code_class_counts(grids, token_labels, tok.num_codes, tok.num_classes)
    if tok.offsets is not None:
        return class_codes_from_offsets(tok.offsets, tok.num_codes), counts
    return class_codes_from_counts(counts), counts


def fit_prior(tok: Tokenizer, task: str, sequences: torch.Tensor, class_codes: torch.Tensor, counts: torch.Tensor,
              train: PriorTrainConfig, layout: torch.Tensor | None = None, head: str = "auto", dim: int = 64,
              layers: int = 3, log=print, log_every: int = 0) -> PriorBundle:
    """Train a prior for `task` on token sequences [M, frames * h * w] of `tok`."""
    torch.manual_seed(train.seed)
    prior = MaskedTokenPrior(prior_config_for(tok, task, head, dim, layers), tok.offsets)
    start = time.perf_counter()
    losses = train_prior(prior, sequences, train, layout=layout, log_every=log_every, log=log)
    tail = losses[-max(len(losses) // 10, 1):]
    info = {"train": {**train.__dict__}, "train_wall_s": time.perf_counter() - start,
            "final_loss_nats": sum(tail) / len(tail), "parameters": sum(p.numel() for p in prior.parameters()),
            "training_sequences": int(sequences.shape[0])}
    return PriorBundle(prior, task, tok.path, tok.kind, class_codes, counts, info)


def sample_grids(bundle: PriorBundle, count: int, layout: torch.Tensor | None = None, restrict: bool = True,
                 steps: int = 8, temperature: float = 1.0, generator: torch.Generator | None = None,
                 batch_size: int = 256) -> torch.Tensor:
    """count token grids [count, h * w] from an image or layout prior.

    layout [count, h * w] class ids (-1 none): with restrict, each position draws only its class's
    codes (bundle.class_codes); a layout-conditioned prior gets the layout as its prefix instead
    (and is not restricted). layout None: unconditional samples.
    """
    prior = bundle.prior
    if prior.cfg.frames != 1:
        raise ValueError("sample_grids: a next-frame prior samples with predict_frames")
    n = prior.cfg.tokens_per_frame
    conditioned = prior.cfg.layout_prefix
    if conditioned and layout is None:
        raise ValueError("sample_grids: this prior is layout-conditioned: give a layout")
    out = []
    for start in range(0, count, batch_size):
        b = min(batch_size, count - start)
        seq = torch.full((b, n), prior.mask_id, dtype=torch.long)
        lay = layout[start:start + b] if layout is not None else None
        allowed = allowed_codes(lay, bundle.class_codes) if (lay is not None and restrict and not conditioned) else None
        out.append(decode(prior, seq, allowed=allowed, layout=lay if conditioned else None, steps=steps,
                          temperature=temperature, generator=generator))
    return torch.cat(out)


def edit_grids(bundle: PriorBundle, grids: torch.Tensor, region: torch.Tensor, new_layout: torch.Tensor,
               steps: int = 8, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Re-mask the tokens of region [B, n] bool and resample them under new_layout [B, n] (only the
    region's positions are restricted; every other token stays as it was)."""
    prior = bundle.prior
    if region.shape != grids.shape or new_layout.shape != grids.shape:
        raise ValueError(f"edit_grids: grids {list(grids.shape)}, region {list(region.shape)} and layout "
                         f"{list(new_layout.shape)} must all be [B, h * w]")
    seq = torch.where(region, torch.full_like(grids, prior.mask_id), grids)
    allowed = allowed_codes(new_layout, bundle.class_codes)
    return decode(prior, seq, allowed=allowed, steps=steps, temperature=temperature, generator=generator)


def paint_box(labels: torch.Tensor, factor: int, box: tuple[int, int] = (2, 3), on: int = ROAD,
              paint: int = VEHICLE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paint a box of box[0] x box[1] tokens of class `paint` where every pixel is of class `on`.

    labels [B, H, W]. Per scene, the lowest such box, nearest the centre column. Returns
    (new labels [B, H, W], region pixels [B, H, W] bool, region tokens [B, h, w] bool, found [B] bool);
    scenes without room for the box are left unchanged (found False).
    """
    B, H, W = labels.shape
    h, w = H // factor, W // factor
    bh, bw = box
    full_on = (labels == on).float().view(B, h, factor, w, factor).mean((2, 4)) == 1.0  # [B, h, w]
    new, region_px = labels.clone(), torch.zeros_like(labels, dtype=torch.bool)
    region_tok = torch.zeros(B, h, w, dtype=torch.bool)
    found = torch.zeros(B, dtype=torch.bool)
    for b in range(B):
        best = None
        for i in range(h - bh, -1, -1):  # lowest rows first (near the camera, the road is widest)
            for j in sorted(range(w - bw + 1), key=lambda j: abs(j + bw / 2 - w / 2)):
                if bool(full_on[b, i:i + bh, j:j + bw].all()):
                    best = (i, j)
                    break
            if best:
                break
        if best is None:
            continue
        i, j = best
        region_tok[b, i:i + bh, j:j + bw] = True
        region_px[b, i * factor:(i + bh) * factor, j * factor:(j + bw) * factor] = True
        new[b][region_px[b]] = paint
        found[b] = True
    return new, region_px, region_tok, found
