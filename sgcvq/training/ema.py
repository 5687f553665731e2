"""Exponential moving average of the model weights, for evaluation."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimizer step.

    Buffers are copied, not averaged: the quantizer's codebook and statistics are already
    EMA-updated by the quantizer itself, and averaging counts again would make them inconsistent.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # One foreach call each instead of a lerp / copy per tensor: on a GPU, a few multi-tensor
        # kernels instead of ~200 launches a step (the step is launch-bound there; RESULTS.md).
        # The same elementwise lerp, so the same bits (the CPU runs it tensor by tensor anyway).
        shadow, params = list(self.shadow.parameters()), [p.detach() for p in model.parameters()]
        if shadow:
            torch._foreach_lerp_(shadow, params, 1.0 - self.decay)
        pairs = [(s, b) for s, b in zip(self.shadow.buffers(), model.buffers())]
        if pairs:
            torch._foreach_copy_([s for s, _ in pairs], [b for _, b in pairs])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
