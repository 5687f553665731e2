"""A trained prior on disk: `<dir>/prior.safetensors` (weights and the class tables) and
`<dir>/prior.json` (its shape, task, the tokenizer it was trained on, training settings, losses).

Loading checks the prior against the tokenizer it is used with: a prior trained on another
codebook size or token grid is refused with a message naming both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .transformer import MaskedTokenPrior, PriorConfig

__all__ = ["PriorBundle", "save_prior", "load_prior", "TASKS"]

# image: unconditional over one grid (layout control by restriction); video: two context frames and
# the next; layout: a layout-conditioned prior (label-map tokens prepended), the trained baseline.
TASKS = ("image", "video", "layout")


@dataclass
class PriorBundle:
    """A prior plus what sampling needs besides the network."""

    prior: MaskedTokenPrior
    task: str
    tokenizer_path: str
    tokenizer_kind: str
    class_codes: torch.Tensor  # [C, K] bool: the codes each class may use
    code_class_counts: torch.Tensor  # [K, C] int64: training tokens per (code, class)
    info: dict = field(default_factory=dict)

    def check_tokenizer(self, tok) -> None:
        """Refuse a tokenizer whose codebook size or token grid differs from the prior's."""
        cfg = self.prior.cfg
        if tok.num_codes != cfg.num_codes:
            raise ValueError(f"the prior was trained on K = {cfg.num_codes} codes but the tokenizer {tok.path} has "
                             f"K = {tok.num_codes}: train a prior on this tokenizer's tokens")
        if tuple(tok.grid) != (cfg.height, cfg.width):
            raise ValueError(f"the prior was trained on {cfg.height}x{cfg.width} token grids but the tokenizer "
                             f"{tok.path} makes {tok.grid[0]}x{tok.grid[1]}")


def save_prior(bundle: PriorBundle, out: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"prior.{k}": v.contiguous() for k, v in bundle.prior.state_dict().items()}
    tensors["class_codes"] = bundle.class_codes.to(torch.uint8).contiguous()
    tensors["code_class_counts"] = bundle.code_class_counts.contiguous()
    save_file(tensors, str(out / "prior.safetensors"))
    meta = {"config": bundle.prior.cfg.to_dict(), "task": bundle.task, "tokenizer": bundle.tokenizer_path,
            "tokenizer_kind": bundle.tokenizer_kind, **bundle.info}
    (out / "prior.json").write_text(json.dumps(meta, indent=1))
    return out


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> PriorBundle:
    """Load a prior folder written by save_prior."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "prior.json").is_file() or not (p / "prior.safetensors").is_file():
        raise FileNotFoundError(f"prior: {str(p)!r} is not a prior folder (no prior.json / prior.safetensors; "
                                "make one with `sgcvq prior train`)")
    meta = json.loads((p / "prior.json").read_text())
    tensors = load_file(str(p / "prior.safetensors"))
    cfg = PriorConfig(**meta.pop("config"))
    weights = {k[len("prior."):]: v for k, v in tensors.items() if k.startswith("prior.")}
    offsets = weights.get("head.offsets")
    prior = MaskedTokenPrior(cfg, offsets)
    prior.load_state_dict(weights)
    return PriorBundle(prior.to(device).eval(), meta.pop("task"), meta.pop("tokenizer"), meta.pop("tokenizer_kind"),
                       tensors["class_codes"].bool(), tensors["code_class_counts"].long(), meta)
