"""LPIPS perceptual distance (Zhang et al. 2018), VGG16 variant, from a LOCAL weights file only.

The module layout matches the `lpips` package's `LPIPS(net="vgg")` (and taming-transformers'
copy of it), so its state dict loads unchanged: keys `net.slice{1..5}.<i>.weight|bias` (VGG16
conv layers under their torchvision `features` indices) and `lin{0..4}.model.1.weight` (the
linear heads). Nothing is ever downloaded: the weights come from `lpips_weights=PATH` or the
environment variable SGCVQ_LPIPS_WEIGHTS, a torch pickle (.pth/.pt) or a .safetensors file.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ENV_VAR = "SGCVQ_LPIPS_WEIGHTS"

HOW_TO_GET_WEIGHTS = (
    "LPIPS needs a local weights file; nothing is downloaded. Supply it with lpips_weights=PATH "
    f"(train.lpips_weights in the config) or the environment variable {ENV_VAR}=PATH. The file is the "
    "state dict of the `lpips` package's LPIPS(net='vgg') (VGG16 features + linear heads; keys "
    "net.slice1.0.weight ... lin4.model.1.weight), saved with torch.save (.pth) or safetensors "
    "(.safetensors). To make it on a machine with internet access: pip install lpips && python -c "
    "\"import lpips, torch; torch.save(lpips.LPIPS(net='vgg').state_dict(), 'lpips_vgg.pth')\" "
    "(lpips ships the linear heads, https://github.com/richzhang/PerceptualSimilarity; the VGG16 "
    "features come from torchvision's ImageNet weights), then copy lpips_vgg.pth here. "
    "Or set perceptual_weight=0 to train without the perceptual loss."
)

# torchvision vgg16().features: (index, in, out) of each conv; ReLUs follow each conv, max-pools
# sit at indices 4, 9, 16, 23. LPIPS taps the ReLU after the last conv of each block.
_VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
                (28, 512, 512)]
_SLICE_BOUNDS = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
_POOLS = (4, 9, 16, 23)
CHANNELS = (64, 128, 256, 512, 512)


class VGG16Slices(nn.Module):
    """VGG16 conv trunk cut into LPIPS's 5 slices: [B, 3, H, W] -> 5 feature maps (relu1_2 ... relu5_3)."""

    def __init__(self):
        super().__init__()
        convs = {i: nn.Conv2d(cin, cout, 3, padding=1) for i, cin, cout in _VGG16_CONVS}
        for n, (start, stop) in enumerate(_SLICE_BOUNDS, start=1):
            piece = nn.Sequential()
            for i in range(start, stop):
                # add_module with the torchvision index keeps the lpips key names (net.slice2.5.weight).
                if i in convs:
                    piece.add_module(str(i), convs[i])
                elif i in _POOLS:
                    piece.add_module(str(i), nn.MaxPool2d(2, 2))
                else:
                    piece.add_module(str(i), nn.ReLU(inplace=False))
            setattr(self, f"slice{n}", piece)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for n in range(1, 6):
            x = getattr(self, f"slice{n}")(x)
            feats.append(x)
        return feats


class LinearHead(nn.Module):
    """1x1 conv, no bias, non-negative weights in the released model: [B, C, H, W] -> [B, 1, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        # Dropout at index 0 (inactive in eval) keeps the released key name `model.1.weight`.
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Perceptual distance between image batches.

    forward(a, b): a, b [B, 3, H, W] in [-1, 1] -> [B] float32 distances (mean over space, sum over layers).
    Frozen (requires_grad False) and always in eval mode; gradients flow to the inputs.
    Build with `LPIPS.from_file(path)`; `LPIPS()` has random weights (tests only).
    """

    def __init__(self):
        super().__init__()
        # ImageNet normalisation expressed for inputs in [-1, 1] (lpips' ScalingLayer constants).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Slices()
        for i, channels in enumerate(CHANNELS):
            setattr(self, f"lin{i}", LinearHead(channels))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # Frozen metric network: dropout must stay off even when the parent model trains.
        return super().train(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None) -> "LPIPS":
        """Load from `path`, or from $SGCVQ_LPIPS_WEIGHTS when path is None; clear errors otherwise."""
        path = path or os.environ.get(ENV_VAR)
        if not path:
            raise FileNotFoundError(f"No LPIPS weights given. {HOW_TO_GET_WEIGHTS}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights file {str(path)!r} does not exist. {HOW_TO_GET_WEIGHTS}")
        state = _read_state_dict(path)
        model = cls()
        model.load_weights(state, source=str(path))
        return model

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load an lpips-layout state dict; extra keys (lins.*, scaling_layer.*) are ignored, missing are errors."""
        # The lpips package also registers the heads in a ModuleList `lins`: same tensors, other names.
        state = {k: v for k, v in state.items() if k.startswith(("net.", "lin")) and not k.startswith("lins.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"LPIPS weights {source!r} lack {len(missing)} key(s), e.g. {missing[:4]}. "
                             f"{HOW_TO_GET_WEIGHTS}")
        wrong = [f"{k}: {list(state[k].shape)} (expected {list(v.shape)})" for k, v in own.items()
                 if state[k].shape != v.shape]
        if wrong:
            raise ValueError(f"LPIPS weights {source!r} have wrong shapes: {wrong[:4]}")
        self.load_state_dict({k: state[k] for k in own}, strict=True)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS: inputs must both be [B, 3, H, W]; got {list(a.shape)} and {list(b.shape)}")
        feats_a = self.net((a.float() - self.shift) / self.scale)
        feats_b = self.net((b.float() - self.shift) / self.scale)
        total = 0.0
        for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
            diff = (_unit_normalize(fa) - _unit_normalize(fb)) ** 2
            total = total + getattr(self, f"lin{i}")(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # Channel-wise unit length at every position, as LPIPS defines it.
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same actionable message
        raise ValueError(f"Cannot read LPIPS weights {str(path)!r}: {type(err).__name__}: {err}. "
                         f"{HOW_TO_GET_WEIGHTS}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"LPIPS weights {str(path)!r} hold a {type(state).__name__}, not a state dict. "
                         f"{HOW_TO_GET_WEIGHTS}")
    return state
