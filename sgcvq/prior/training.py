"""Training a MaskedTokenPrior: MaskGIT's objective, the negative log-likelihood of the masked
tokens of the last frame given everything else (cosine-schedule mask ratios).

For next-frame priors (frames > 1) only the last frame is masked; the oldest context frame is
replaced by mask ids in a share of the sequences (`drop_context`), so one prior predicts from one
or two frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedule import sample_mask
from .transformer import MaskedTokenPrior

__all__ = ["PriorTrainConfig", "train_prior", "masked_nll"]


@dataclass
class PriorTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    drop_context: float = 0.25  # share of video sequences trained with one context frame

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"PriorTrainConfig: steps and batch_size must be >= 1, got {self.steps}, "
                             f"{self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"PriorTrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.drop_context <= 1.0:
            raise ValueError(f"PriorTrainConfig.drop_context must be in [0, 1], got {self.drop_context}")


def masked_nll(log_probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood (nats) of target [B, L] at mask [B, L] under log_probs [B, L, K]."""
    nll = -log_probs.gather(-1, target[..., None])[..., 0]
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def _lr_at(step: int, cfg: PriorTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _check_data(prior: MaskedTokenPrior, grids: torch.Tensor, layout: torch.Tensor | None) -> None:
    K, L = prior.cfg.num_codes, prior.seq_len
    if grids.dim() != 2 or grids.shape[1] != L or grids.shape[0] < 1:
        raise ValueError(f"train_prior: grids must be [M, {L}] token sequences, got {list(grids.shape)}")
    if int(grids.min()) < 0 or int(grids.max()) >= K:
        raise ValueError(f"train_prior: token ids must be in [0, {K}) (the prior's K), got "
                         f"[{int(grids.min())}, {int(grids.max())}]: was the prior built for another codebook?")
    if prior.cfg.layout_prefix and (layout is None or layout.shape != (grids.shape[0], prior.cfg.tokens_per_frame)):
        raise ValueError(f"train_prior: a layout-conditioned prior needs layout [M, {prior.cfg.tokens_per_frame}]")


def train_prior(prior: MaskedTokenPrior, grids: torch.Tensor, cfg: PriorTrainConfig | None = None,
                layout: torch.Tensor | None = None, log_every: int = 0, log=print) -> list[float]:
    """Train `prior` in place on token sequences grids [M, frames * h * w] int64 (layout [M, h * w]
    for a layout-conditioned prior). Returns the loss (nats per masked token) of every step."""
    cfg = cfg or PriorTrainConfig()
    cfg.validate()
    _check_data(prior, grids, layout)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(prior.parameters()).device
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    n, frames, M = prior.cfg.tokens_per_frame, prior.cfg.frames, grids.shape[0]
    maskable = torch.zeros(prior.seq_len, dtype=torch.bool)
    maskable[-n:] = True  # the last frame (the whole grid for images)
    prior.train()
    losses = []
    for step in range(cfg.steps):
        pick = torch.randint(0, M, (cfg.batch_size,), generator=gen)
        target = grids[pick].to(device)
        mask = sample_mask(cfg.batch_size, prior.seq_len, gen, device, maskable)
        inputs = torch.where(mask, torch.full_like(target, prior.mask_id), target)
        if frames > 2 and cfg.drop_context > 0:
            drop = (torch.rand(cfg.batch_size, generator=gen) < cfg.drop_context).to(device)
            inputs[:, :n] = torch.where(drop[:, None], torch.full_like(inputs[:, :n], prior.mask_id), inputs[:, :n])
        lay = layout[pick].to(device) if layout is not None else None
        loss = masked_nll(prior(inputs, lay), target, mask)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            log(f"prior step {step + 1}/{cfg.steps}: loss {sum(recent) / len(recent):.3f} nats/token")
    prior.eval()
    return losses
