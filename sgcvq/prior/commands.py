"""`sgcvq prior train | sample | edit | predict`: the library calls behind the command line
(sgcvq/cli.py parses the arguments and reports errors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import CLASS_NAMES
from .layout import check_label_map, token_layout
from .store import load_prior, save_prior
from .tasks import class_tables, edit_grids, fit_prior, sample_grids
from .tokens import Tokenizer, load_prior_tokenizer
from .training import PriorTrainConfig
from .video import clip_windows, predict_frames

__all__ = ["cmd_train", "cmd_sample", "cmd_edit", "cmd_predict", "parse_class", "parse_box"]


def parse_class(value: str, names=CLASS_NAMES) -> int:
    """A class by name ("vehicle") or id ("8")."""
    if value.isdigit() and int(value) < len(names):
        return int(value)
    if value in names:
        return names.index(value)
    raise ValueError(f"--paint {value!r} is not a class: use one of {', '.join(names)} or an id 0..{len(names) - 1}")


def parse_box(value: str, size: int) -> tuple[int, int, int, int]:
    """'y0,x0,y1,x1' pixel box (end exclusive) inside a size x size image."""
    try:
        y0, x0, y1, x1 = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--box must be 'y0,x0,y1,x1' (pixels, end exclusive), got {value!r}") from None
    if not (0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size):
        raise ValueError(f"--box {value!r} must lie inside the {size}x{size} image with y0 < y1 and x0 < x1")
    return y0, x0, y1, x1


def _training_scenes(tok: Tokenizer, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from ..training.build import build_train_dataset

    ds = build_train_dataset(tok.cfg.data)
    n = len(ds) if max_images is None else min(max_images, len(ds))
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def cmd_train(tokenizer: str, out: str, task: str = "image", head: str = "auto", steps: int = 1200,
              batch_size: int = 32, dim: int = 64, layers: int = 3, seed: int = 0, max_images: int | None = None,
              clips: int = 512, log=print) -> Path:
    """Train a prior of `task` on the tokens of the tokenizer run `tokenizer`; save it in `out`."""
    tok = load_prior_tokenizer(tokenizer)
    if head == "factorised":
        tok.require_groups("--head factorised")
    train = PriorTrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    images, labels = _training_scenes(tok, max_images)
    grids = tok.encode(images, labels).flatten(1)
    tl = token_layout(labels, tok.factor, tok.num_classes).flatten(1)
    class_codes, counts = class_tables(tok, grids, tl)
    if task == "video":
        from .scenes import PRIOR_CLIP_SEED, clip_tensors

        if tok.cfg.data.dataset != "synthetic":
            raise ValueError("prior train --task video needs clips: only the synthetic street video has them")
        frames, flabels = clip_tensors(clips, 6, tok.resolution, PRIOR_CLIP_SEED)
        B, T = frames.shape[:2]
        seqs = clip_windows(tok.encode(frames.flatten(0, 1), flabels.flatten(0, 1)).view(B, T, -1), 3)
        bundle = fit_prior(tok, "video", seqs, class_codes, counts, train, head=head, dim=dim, layers=layers,
                           log=log, log_every=max(steps // 10, 1))
    else:
        bundle = fit_prior(tok, task, grids, class_codes, counts, train, layout=tl if task == "layout" else None,
                           head=head, dim=dim, layers=layers, log=log, log_every=max(steps // 10, 1))
    return save_prior(bundle, out)


def _open(prior: str, tokenizer: str | None):
    bundle = load_prior(prior)
    tok = load_prior_tokenizer(tokenizer or bundle.tokenizer_path)
    bundle.check_tokenizer(tok)
    return bundle, tok


def _read_label_map(path: Path, tok: Tokenizer) -> torch.Tensor:
    from ..tokenizer_io import load_label_map

    lab = load_label_map(path)  # not resized: a map of another size is an error (check_label_map)
    check_label_map(lab, (tok.resolution, tok.resolution), tok.num_classes, f"label map {str(path)!r}")
    return lab


def _label_files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.png"))
        if files:
            return files
    raise FileNotFoundError(f"--labels {path!r}: no .png label maps there")


def _save(img: torch.Tensor, path: Path) -> None:
    from ..tokenizer_io import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(img, path)


def cmd_sample(prior: str, out: str, labels: str | None = None, num: int = 8, tokenizer: str | None = None,
               seed: int = 0, steps: int = 8, temperature: float = 1.0, restrict: bool = True) -> list[Path]:
    """Samples as PNG (+ their token grids .npy): one per label map in `labels` (layout-controlled),
    or `num` unconditional ones."""
    bundle, tok = _open(prior, tokenizer)
    if bundle.task == "video":
        raise ValueError("prior sample: this is a next-frame prior; use `sgcvq prior predict`")
    gen = torch.Generator().manual_seed(seed)
    if labels is not None:
        files = _label_files(labels)
        maps = torch.stack([_read_label_map(f, tok) for f in files])
        layout = token_layout(maps, tok.factor, tok.num_classes).flatten(1)
        names = [f.stem for f in files]
        grids = sample_grids(bundle, len(files), layout, restrict, steps, temperature, gen)
    else:
        if bundle.prior.cfg.layout_prefix:
            raise ValueError("prior sample: this prior is layout-conditioned: give --labels")
        names = [f"sample_{i:04d}" for i in range(num)]
        grids = sample_grids(bundle, num, None, False, steps, temperature, gen)
    images = tok.decode(grids.view(-1, *tok.grid))
    written = []
    for name, img, g in zip(names, images, grids):
        _save(img, Path(out) / f"{name}.png")
        np.save(Path(out) / f"{name}.npy", g.view(*tok.grid).numpy())
        written.append(Path(out) / f"{name}.png")
    return written


def _load_images(paths: list[str], tok: Tokenizer) -> torch.Tensor:
    from ..tokenizer_io import load_image

    return torch.stack([load_image(Path(p), tok.resolution) for p in paths])


def cmd_edit(prior: str, image: str, box: str, paint: str, out: str, labels: str | None = None,
             tokenizer: str | None = None, seed: int = 0, steps: int = 8, temperature: float = 1.0) -> list[Path]:
    """Paint `box` of `image` with class `paint`, re-mask the tokens it covers (half or more of
    their pixels), resample them restricted to that class's codes. Writes before.png, after.png."""
    bundle, tok = _open(prior, tokenizer)
    if bundle.task != "image":
        raise ValueError(f"prior edit needs an image prior (task 'image'), this one is {bundle.task!r}")
    cls = parse_class(paint)
    y0, x0, y1, x1 = parse_box(box, tok.resolution)
    img = _load_images([image], tok)
    lab = _read_label_map(Path(labels), tok)[None] if labels else None
    grids = tok.encode(img, lab).flatten(1)
    painted = torch.zeros(1, tok.resolution, tok.resolution)
    painted[:, y0:y1, x0:x1] = 1.0
    f = tok.factor
    region = (torch.nn.functional.avg_pool2d(painted[:, None], f)[:, 0] >= 0.5).flatten(1)
    if not bool(region.any()):
        raise ValueError(f"--box {box!r} covers no token cell by half: make it at least {f}x{f} pixels on the "
                         f"{f}-pixel token grid")
    layout = torch.full_like(grids, -1)
    layout[region] = cls
    after = edit_grids(bundle, grids, region, layout, steps, temperature, torch.Generator().manual_seed(seed))
    before_img, after_img = tok.decode(grids.view(1, *tok.grid)), tok.decode(after.view(1, *tok.grid))
    _save(before_img[0], Path(out) / "before.png")
    _save(after_img[0], Path(out) / "after.png")
    return [Path(out) / "before.png", Path(out) / "after.png"]


def cmd_predict(prior: str, frames: list[str], out: str, horizon: int = 4, labels: list[str] | None = None,
                tokenizer: str | None = None, steps: int = 8, temperature: float = 0.0, seed: int = 0) -> list[Path]:
    """Predict `horizon` frames after 1-2 context frames (oldest first); writes frame_1.png .. frame_H.png."""
    bundle, tok = _open(prior, tokenizer)
    if bundle.task != "video":
        raise ValueError(f"prior predict needs a next-frame prior (task 'video'), this one is {bundle.task!r}")
    if not 1 <= len(frames) <= bundle.prior.cfg.frames - 1:
        raise ValueError(f"--frames takes 1 to {bundle.prior.cfg.frames - 1} context frames, got {len(frames)}")
    if labels is not None and len(labels) != len(frames):
        raise ValueError(f"--labels must give one label map per frame ({len(frames)}), got {len(labels)}")
    imgs = _load_images(frames, tok)
    lab = torch.stack([_read_label_map(Path(p), tok) for p in labels]) if labels else None
    ctx = tok.encode(imgs, lab).flatten(1)[None]
    pred = predict_frames(bundle.prior, ctx, horizon, steps, temperature, torch.Generator().manual_seed(seed))
    decoded = tok.decode(pred[0].view(horizon, *tok.grid))
    written = []
    for h in range(horizon):
        _save(decoded[h], Path(out) / f"frame_{h + 1}.png")
        written.append(Path(out) / f"frame_{h + 1}.png")
    return written
