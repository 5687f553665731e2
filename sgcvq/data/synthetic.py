"""SyntheticStreetScenes: procedurally drawn street scenes (and clips) with exact label maps.

No files, no downloads: item i is drawn by its own numpy generator seeded by (seed, i), so the
same (seed, i) gives the same item in any order, in any worker, at any resolution. With `cache`
(a folder), items are painted once into a memory-mapped SceneCache and read from it afterwards, in
every process and later run: the same bits, without the painting.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from .classes import CLASS_NAMES
from .scene import Canvas, render, sample_scene, smooth_noise
from .scene_cache import MAX_CACHE_BYTES, SceneCache, default_cache_root


def _resolution(resolution) -> tuple[int, int]:
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    try:
        height, width = (int(v) for v in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be an int or (H, W); got {resolution!r}") from None
    if height < 8 or width < 8:
        raise ValueError(f"resolution must be at least 8x8; got {height}x{width}")
    return height, width


def draw_street_scene(seed: int, index: int, resolution=64, num_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render scene `index` of `seed`: images [T, H, W, 3] float32 in [0, 1] and labels [T, H, W] uint8 (class ids)."""
    height, width = _resolution(resolution)
    rng = np.random.default_rng([int(seed), int(index)])
    scene = sample_scene(rng, num_frames)
    # Texture noise is drawn once per item, after the layout, so it never changes the layout.
    grain = rng.standard_normal((height, width)).astype(np.float32)
    blotch = smooth_noise(rng, height, width, cells=6)
    images = np.empty((num_frames, height, width, 3), np.float32)
    labels = np.empty((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        canvas = Canvas(height, width, grain, blotch)
        render(scene, canvas, t)
        images[t], labels[t] = canvas.image, canvas.label
    np.clip(images, 0.0, 1.0, out=images)
    return images, labels


def _item_arrays(seed: int, resolution: tuple[int, int], num_frames: int, index: int):
    """Item `index` as the dataset returns it: frames float32 [T, 3, H, W] in [-1, 1], labels uint8 [T, H, W]."""
    images, labels = draw_street_scene(seed, index, resolution, num_frames)
    frames = torch.from_numpy(images).permute(0, 3, 1, 2).mul(2.0).sub(1.0).contiguous()
    return frames.numpy(), labels


class SyntheticStreetScenes(Dataset):
    """Street scenes with 9 classes (CLASS_NAMES): road, sidewalk, building, pole, vegetation, terrain,
    sky, person, vehicle.

    Image mode: ds[i] -> {"image": float32 [3, H, W] in [-1, 1], "label": int64 [H, W], "id": str}.
    Video mode (video=True): ds[i] -> {"frames": float32 [T, 3, H, W], "labels": int64 [T, H, W], "id"},
    T = num_frames, with a camera moving forward and panning and vehicles/persons moving.
    Every pixel has a class (no ignore pixels).

    cache: None (paint every item when it is read), "auto" (a SceneCache under $SGCVQ_CACHE_DIR or
    ~/.cache/sgcvq) or a folder. A set over MAX_CACHE_BYTES is painted on the fly.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, length: int, resolution=64, seed: int = 0, video: bool = False, num_frames: int = 8,
                 cache=None):
        if length < 0:
            raise ValueError(f"SyntheticStreetScenes: length must be >= 0, got {length}")
        if video and num_frames < 1:
            raise ValueError(f"SyntheticStreetScenes: num_frames must be >= 1, got {num_frames}")
        self.length = int(length)
        self.resolution = _resolution(resolution)
        self.seed = int(seed)
        self.video = bool(video)
        self.num_frames = int(num_frames) if video else 1
        self.cache = None
        if cache is not None and cache is not False and self.length > 0:
            root = default_cache_root() if cache in ("auto", True) else cache
            if SceneCache.nbytes(self.resolution, self.length, self.num_frames) <= MAX_CACHE_BYTES:
                render = functools.partial(_item_arrays, self.seed, self.resolution, self.num_frames)
                self.cache = SceneCache(root, self.seed, self.resolution, self.length, self.num_frames, render)

    def __len__(self) -> int:
        return self.length

    def class_frequencies(self, num_images: int = 64) -> list[float]:
        """Pixel frequency of each class over the first `num_images` scenes (sums to 1).

        For FastSemanticQuantizer(group_sizes="frequency"): rare classes (poles, persons) get
        smaller code groups, so their few tokens per batch can keep every code of the group alive.
        """
        counts = np.zeros(self.num_classes, np.float64)
        for index in range(min(num_images, max(self.length, 1))):
            _, labels = draw_street_scene(self.seed, index, self.resolution, 1)
            counts += np.bincount(labels.ravel(), minlength=self.num_classes)[: self.num_classes]
        return (counts / max(counts.sum(), 1.0)).tolist()

    def __getitem__(self, index: int) -> dict:
        if not -self.length <= index < self.length:
            raise IndexError(f"SyntheticStreetScenes index {index} out of range for length {self.length}")
        index = index % self.length
        if self.cache is not None:
            frames, labels = self.cache.get(index)
        else:
            frames, labels = _item_arrays(self.seed, self.resolution, self.num_frames, index)
        frames = torch.from_numpy(frames)  # [T, 3, H, W] in [-1, 1]
        labels = torch.from_numpy(labels).long()
        item_id = f"synthetic-{self.seed}-{index}"
        if self.video:
            return {"frames": frames, "labels": labels, "id": item_id}
        return {"image": frames[0].contiguous(), "label": labels[0], "id": item_id}
