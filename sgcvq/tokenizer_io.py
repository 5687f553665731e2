"""Using a trained tokenizer on files: load it from a checkpoint, encode images (and optional label
maps) to token grids, decode token grids back to PNG images (`sgcvq encode`, `sgcvq decode`).

Token files: one `<stem>.npy` (int64 [h, w]) per image, or one `tokens.safetensors` holding every
grid under its image's stem. Both are read back by `sgcvq decode`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_checkpoint
from .config import Config, config_from_dict

__all__ = [
    "load_tokenizer",
    "load_image",
    "load_label_map",
    "save_image",
    "list_images",
    "encode_files",
    "decode_files",
    "read_token_files",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IGNORE = 255


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """(model in eval mode, Config, checkpoint state) from a checkpoint, a checkpoints/ folder or a
    run folder. With use_ema and an EMA in the checkpoint, the EMA weights are loaded."""
    from .model import SGCVQGAN

    ckpt = load_checkpoint(path, with_optim=False)
    cfg = config_from_dict(ckpt["state"]["config"])
    model = SGCVQGAN(cfg.model)
    weights = ckpt.group("ema") if use_ema and ckpt.group("ema") else ckpt.group("model")
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg, {**ckpt["state"], "path": str(ckpt["path"])}


def list_images(path: str | Path) -> list[Path]:
    """The image files at `path` (a file, or a folder searched recursively), sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"images: {str(p)!r} does not exist")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise FileNotFoundError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(p)!r}")
    return files


def load_image(path: Path, size: int) -> torch.Tensor:
    """An RGB image resized to size x size, as [3, size, size] float in [-1, 1]."""
    try:
        img = Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from None
    img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    return arr.permute(2, 0, 1) / 127.5 - 1.0


def load_label_map(path: Path, size: int | None = None) -> torch.Tensor:
    """A label map (single-channel PNG of class ids, 255 = ignore) as [H, W] int64, resized with
    nearest to [size, size] when size is given."""
    try:
        img = Image.open(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read label map {str(path)!r}: {exc}") from None
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"label map {str(path)!r} has mode {img.mode}: expected one channel of class ids")
    if size is not None:
        img = img.resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(img).astype(np.int64))


def save_image(t: torch.Tensor, path: Path) -> None:
    """[3, H, W] in [-1, 1] -> 8-bit PNG."""
    arr = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr).save(path)


def _label_for(image: Path, images_root: Path, labels_root: Path) -> Path:
    rel = image.relative_to(images_root) if images_root.is_dir() else Path(image.name)
    for suffix in (".png", rel.suffix):
        cand = (labels_root / rel).with_suffix(suffix)
        if cand.is_file():
            return cand
    expected = str((labels_root / rel).with_suffix(".png"))
    raise FileNotFoundError(f"labels: no label map for {str(image)!r} (looked for {expected!r})")


@torch.no_grad()
def encode_files(model, cfg: Config, images: str | Path, out: str | Path, labels: str | Path | None = None,
                 fmt: str = "npy", batch_size: int = 16, size: int | None = None) -> list[Path]:
    """Tokenize every image under `images` into `out`; returns the written files.

    labels: a folder of label maps mirroring `images` (same relative path, .png); used by a
    semantic (SGC) model to search each token's class group, ignored by a plain-VQ model.
    """
    if fmt not in ("npy", "safetensors"):
        raise ValueError(f"format must be 'npy' or 'safetensors', got {fmt!r}")
    files = list_images(images)
    images_root = Path(images)
    labels_root = Path(labels) if labels is not None else None
    if labels_root is not None and not labels_root.is_dir():
        raise FileNotFoundError(f"labels: {str(labels_root)!r} is not a folder")
    size = size or cfg.model.resolution
    factor = model.downsample_factor
    if size % (2 * factor):
        raise ValueError(f"size {size} must be divisible by {2 * factor} for this model")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    guided = cfg.model.num_classes is not None and labels_root is not None
    grids: dict[str, torch.Tensor] = {}
    for start in range(0, len(files), batch_size):
        chunk = files[start: start + batch_size]
        x = torch.stack([load_image(f, size) for f in chunk]).to(device)
        lab = None
        if guided:
            lab = torch.stack([load_label_map(_label_for(f, images_root, labels_root), size) for f in chunk]).to(device)
        idx = model.encode(x, labels=lab).cpu()
        for f, grid in zip(chunk, idx):
            rel = f.relative_to(images_root) if images_root.is_dir() else Path(f.name)
            grids[rel.with_suffix("").as_posix()] = grid
    written = []
    if fmt == "npy":
        for key, grid in grids.items():
            target = out / f"{key}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, grid.numpy())
            written.append(target)
    else:
        from safetensors.torch import save_file

        target = out / "tokens.safetensors"
        save_file({k: v.contiguous() for k, v in grids.items()}, str(target),
                  metadata={"codebook_size": str(cfg.model.codebook_size)})
        written.append(target)
    return written


def read_token_files(path: str | Path) -> dict[str, torch.Tensor]:
    """{name: [h, w] int64} from a .npy file, a .safetensors file or a folder of .npy files."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokens: {str(p)!r} does not exist")
    if p.is_file() and p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.long() for k, v in load_file(str(p)).items()}
    if p.is_file() and p.suffix == ".npy":
        return {p.stem: torch.from_numpy(np.load(p)).long()}
    if p.is_dir():
        found = {f.relative_to(p).with_suffix("").as_posix(): torch.from_numpy(np.load(f)).long()
                 for f in sorted(p.rglob("*.npy"))}
        for f in sorted(p.rglob("*.safetensors")):
            found.update(read_token_files(f))
        if found:
            return found
    raise ValueError(f"tokens: {str(p)!r} holds no .npy or .safetensors token grids")


@torch.no_grad()
def decode_files(model, cfg: Config, tokens: str | Path, out: str | Path, batch_size: int = 16) -> list[Path]:
    """Decode every token grid under `tokens` to `<out>/<name>.png`; returns the written files."""
    grids = read_token_files(tokens)
    K = cfg.model.codebook_size
    for name, g in grids.items():
        if g.dim() != 2:
            raise ValueError(f"tokens {name!r}: expected a [h, w] grid, got shape {list(g.shape)}")
        if g.numel() and (g.min() < 0 or g.max() >= K):
            raise ValueError(f"tokens {name!r}: indices must be in [0, {K}), got [{int(g.min())}, {int(g.max())}]")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    names = list(grids)
    written = []
    # Grids of one shape are decoded together; shapes may differ between files.
    by_shape: dict[tuple, list[str]] = {}
    for n in names:
        by_shape.setdefault(tuple(grids[n].shape), []).append(n)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start: start + batch_size]
            imgs = model.decode_indices(torch.stack([grids[n] for n in chunk]).to(device))
            for n, img in zip(chunk, imgs):
                target = out / f"{n}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                save_image(img, target)
                written.append(target)
    return written
