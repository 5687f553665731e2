"""The judge: a small CNN segmenter trained on the synthetic scenes' exact label maps, used to
score decoded images in pixel space (mIoU against a requested layout, features for a Fréchet
distance). It is trained on its own seed (JUDGE_SEED), never on scenes it scores.

It also plugs into the segmenter hook (sgcvq/data/segmenter.py): with
SGCVQ_JUDGE_WEIGHTS=<judge.safetensors>, `sgcvq train --segmenter sgcvq.prior.judge:segment` trains
a tokenizer on the judge's predicted labels instead of the ground truth (the paper's setting).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .scenes import scene_tensors

__all__ = ["Judge", "JudgeConfig", "train_judge", "save_judge", "load_judge", "segment", "JUDGE_SEED"]

# Far from the tokenizers' seeds (train 0, held-out 1_000_003, clips 2_000_006) and the prior's.
JUDGE_SEED = 7_000_001


@dataclass
class JudgeConfig:
    num_classes: int = 9
    width: int = 16
    resolution: int = 32
    scenes: int = 3072
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = JUDGE_SEED


def _conv(cin: int, cout: int, dilation: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Judge(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> class scores [B, C, H, W]; `features` -> [B, 3 * width]
    (the half-resolution branch, average-pooled: what the Fréchet distance compares).

    A thin full-resolution branch keeps the edges; a wider half-resolution branch with dilated
    convolutions sees most of a 32x32 scene (receptive field ~40 px) for the context.
    """

    def __init__(self, num_classes: int = 9, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(3, w), _conv(w, w))
        self.down = nn.Sequential(_conv(w, 3 * w, stride=2), _conv(3 * w, 3 * w, dilation=2),
                                  _conv(3 * w, 3 * w, dilation=4))
        self.fuse = _conv(4 * w, 2 * w)
        self.out = nn.Conv2d(2 * w, num_classes, 1)

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.stem(images)
        coarse = self.down(fine)
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.fuse(torch.cat([fine, up], 1))), coarse

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images)[0]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images)[1].mean((-2, -1))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Label maps [B, H, W] int64."""
        self.eval()
        return torch.cat([self(images[i:i + batch_size]).argmax(1) for i in range(0, images.shape[0], batch_size)])

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self.features(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])


def _blur(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random mild blur and noise per image: decoded images are softer than the painted scenes, and
    the judge has to read both."""
    sigma = torch.rand(images.shape[0], generator=gen) * 1.2
    k = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, 5]
    B, C, H, W = images.shape
    x = images.reshape(1, B * C, H, W)
    kc = kernel.repeat_interleave(C, 0)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kc[:, None, None, :], groups=B * C)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kc[:, None, :, None], groups=B * C)
    noise = torch.randn(images.shape, generator=gen) * 0.03
    return (x.view(B, C, H, W) + noise).clamp(-1, 1)


def train_judge(cfg: JudgeConfig | None = None, log=print, log_every: int = 100) -> Judge:
    """Train a judge on cfg.scenes synthetic scenes of seed cfg.seed (cross-entropy, Adam, cosine LR)."""
    cfg = cfg or JudgeConfig()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = scene_tensors(cfg.scenes, cfg.resolution, cfg.seed)
    judge = Judge(cfg.num_classes, cfg.width)
    opt = torch.optim.Adam(judge.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    judge.train()
    for step in range(cfg.steps):
        pick = torch.randint(0, cfg.scenes, (cfg.batch_size,), generator=gen)
        x = images[pick]
        blur = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = torch.where(blur[:, None, None, None], _blur(x, gen), x)
        loss = F.cross_entropy(judge(x), labels[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            log(f"judge step {step + 1}/{cfg.steps}: cross-entropy {float(loss.detach()):.3f}")
    judge.config = cfg
    return judge.eval()


def save_judge(judge: Judge, path: str | Path) -> None:
    from safetensors.torch import save_file

    cfg = getattr(judge, "config", JudgeConfig())
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path),
              metadata={"config": json.dumps(asdict(cfg))})


def load_judge(path: str | Path) -> Judge:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge weights {str(path)!r} do not exist (train them with train_judge / "
                                "benchmarks/prior_compare.py)")
    with safe_open(str(path), "pt") as fh:
        cfg = JudgeConfig(**json.loads(fh.metadata()["config"]))
    judge = Judge(cfg.num_classes, cfg.width)
    judge.load_state_dict(load_file(str(path)))
    judge.config = cfg
    return judge.eval()


_LOADED: dict[str, Judge] = {}


def segment(images: torch.Tensor) -> torch.Tensor:
    """The segmenter hook ("sgcvq.prior.judge:segment"): images [B, 3, H, W] in [-1, 1] -> class scores
    [B, C, H, W], from the judge whose weights SGCVQ_JUDGE_WEIGHTS names."""
    path = os.environ.get("SGCVQ_JUDGE_WEIGHTS")
    if not path:
        raise ValueError("sgcvq.prior.judge:segment needs SGCVQ_JUDGE_WEIGHTS=<judge .safetensors file>")
    if path not in _LOADED:
        _LOADED[path] = load_judge(path)
    judge = _LOADED[path]
    with torch.no_grad():
        return judge(images.to(next(judge.parameters()).dtype))
