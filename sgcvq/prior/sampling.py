"""MaskGIT decoding: fill the masked positions of token sequences in a few confidence-ordered steps,
optionally restricted per position to a set of allowed codes (layout control, editing), and the
context-free sampler it is compared with.

Each step predicts every masked position, samples a code for each (restricted to its allowed
codes: forbidden codes get probability 0), and keeps the most confident samples; the least
confident stay masked for the next step, as many as the cosine schedule says (schedule.py).
Confidence is the sample's log-probability plus Gumbel noise annealed to 0 over the steps
(MaskGIT's choice temperature), which keeps early steps from committing to one mode.
"""
from __future__ import annotations

import torch

from .schedule import masked_after_steps
from .transformer import MaskedTokenPrior

__all__ = ["decode", "sample_context_free"]


def _gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp(1e-9, 1 - 1e-9)
    return (-torch.log(-torch.log(u))).to(device)


def _check_allowed(allowed: torch.Tensor, masked: torch.Tensor, K: int) -> None:
    if allowed.shape != (*masked.shape, K):
        raise ValueError(f"decode: allowed must be [B, L, K] = {[*masked.shape, K]}, got {list(allowed.shape)}")
    empty = masked & ~allowed.any(-1)
    if bool(empty.any()):
        b, pos = (int(v) for v in empty.nonzero()[0])
        raise ValueError(f"decode: position {pos} of sequence {b} is masked but allows no code (its class has "
                         "no codes in this codebook)")


@torch.no_grad()
def decode(prior: MaskedTokenPrior, tokens: torch.Tensor, allowed: torch.Tensor | None = None,
           layout: torch.Tensor | None = None, steps: int = 8, temperature: float = 1.0,
           choice_temperature: float = 4.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill the positions of tokens [B, L] that hold prior.mask_id; returns a new [B, L] int64.

    allowed: [B, L, K] bool, the codes each position may take (None: all). layout: the layout prefix
    of a conditioned prior. temperature 0 takes the most likely code (no sampling).
    """
    prior.eval()
    K = prior.cfg.num_codes
    tokens = tokens.clone()
    masked = tokens == prior.mask_id
    if allowed is not None:
        _check_allowed(allowed, masked, K)
    # Rows mask different numbers of positions (edits): each follows its own schedule.
    counts = masked.sum(1).tolist()
    remain = torch.tensor([masked_after_steps(c, steps) for c in counts], dtype=torch.long,
                          device=tokens.device).view(len(counts), steps)
    for s in range(steps):
        if not bool(masked.any()):
            break
        logp = prior(tokens, layout)
        if allowed is not None:
            # Only masked positions are restricted: a fixed token keeps whatever code it has.
            logp = logp.masked_fill(~allowed & masked[..., None], float("-inf"))
        if temperature > 0:
            probs = torch.softmax(logp / temperature, dim=-1)
            flat = probs.reshape(-1, K).cpu()
            sampled = torch.multinomial(flat, 1, generator=generator).view(tokens.shape).to(tokens.device)
        else:
            sampled = logp.argmax(-1)
        conf = logp.gather(-1, sampled[..., None])[..., 0]
        anneal = choice_temperature * (1.0 - (s + 1) / steps)
        if anneal > 0:
            conf = conf + anneal * _gumbel(conf.shape, generator, conf.device)
        conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
        rank = conf.argsort(1).argsort(1)
        still = masked & (rank < remain[:, s:s + 1])
        tokens = torch.where(masked & ~still, sampled, tokens)
        masked = still
    return tokens


def sample_context_free(layout: torch.Tensor, frequencies: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Each position drawn on its own from its class's code frequencies: layout [B, n] int64 in [-1, C),
    frequencies [C, K] (rows sum to 1; class_code_frequencies). Positions without a class (-1) draw
    from the mean of the rows. Returns [B, n] int64."""
    C, K = frequencies.shape
    table = torch.cat([frequencies, frequencies.mean(0, keepdim=True)]).cpu()
    rows = torch.where(layout < 0, torch.full_like(layout, C), layout).cpu().reshape(-1)
    draw = torch.multinomial(table[rows], 1, generator=generator)[:, 0]
    return draw.view(layout.shape).to(layout.device)
