"""Rendered synthetic scenes kept in memory-mapped files, so each scene is painted once per machine.

Painting a 64x64 scene in numpy costs a few milliseconds (`draw_street_scene`); a training step on
a GPU costs less than a batch of them. A `SceneCache` holds the finished tensors of one
(seed, resolution, length, frames) set in three flat files under one folder:

    images.f32   float32 [length, T, 3, H, W]  exactly what SyntheticStreetScenes returns ([-1, 1])
    labels.u8    uint8   [length, T, H, W]     class ids
    filled.u8    uint8   [length]              1 once the item's two rows are written

It fills itself on first use: an item not yet filled is rendered, written, then marked. Every
process (loader workers, DDP ranks, later runs) maps the same files, so the set is rendered once
whatever reads it, and an item read from the cache is bit-for-bit the item the renderer draws
(the renderer is deterministic per (seed, index), and the cache stores its float32 output).
Concurrent writers of one item write identical bytes, so no lock is needed.

The folder name carries RENDER_VERSION: a change to the renderer's output must bump it, so an old
cache is never read for new scenes. Each time a cache is opened it also re-renders one filled item
and compares, and starts afresh on a mismatch (a renderer changed without the bump).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["SceneCache", "default_cache_root", "RENDER_VERSION", "MAX_CACHE_BYTES"]

# Bump when draw_street_scene's output changes for any (seed, index, resolution).
RENDER_VERSION = 1
# A set larger than this is not cached (rendering on the fly still works); 4 GiB holds 20k scenes
# at 64x64 or 5k at 128x128.
MAX_CACHE_BYTES = 4 << 30


def default_cache_root() -> Path:
    """$SGCVQ_CACHE_DIR, else $XDG_CACHE_HOME/sgcvq, else ~/.cache/sgcvq."""
    if os.environ.get("SGCVQ_CACHE_DIR"):
        return Path(os.environ["SGCVQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sgcvq"


class SceneCache:
    """Memory-mapped store of the items of one synthetic scene set (see the module docstring).

    render(index) -> (images float32 [T, 3, H, W], labels uint8 [T, H, W]) is called for items not
    yet in the store. get(index) returns numpy copies of the two rows.
    """

    def __init__(self, root, seed: int, resolution: tuple[int, int], length: int, frames: int, render):
        self.height, self.width = resolution
        self.length, self.frames, self.seed = int(length), int(frames), int(seed)
        self.render = render
        key = f"scenes-v{RENDER_VERSION}-seed{seed}-{self.height}x{self.width}-n{length}-t{frames}"
        self.path = Path(root) / key
        self.image_shape = (self.length, self.frames, 3, self.height, self.width)
        self.label_shape = (self.length, self.frames, self.height, self.width)
        self._maps = None  # opened lazily in each process (workers, ranks)

    @staticmethod
    def nbytes(resolution: tuple[int, int], length: int, frames: int) -> int:
        height, width = resolution
        return length * frames * height * width * (3 * 4 + 1) + length

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None  # a worker maps the files itself
        return state

    # ----------------------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"render_version": RENDER_VERSION, "seed": self.seed, "height": self.height, "width": self.width,
                "length": self.length, "frames": self.frames}

    def _create(self) -> None:
        """Make the folder with empty (sparse) files; atomic, so racing processes agree on one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=self.path.name + ".tmp-", dir=self.path.parent))
        try:
            np.memmap(tmp / "images.f32", np.float32, "w+", shape=self.image_shape).flush()
            np.memmap(tmp / "labels.u8", np.uint8, "w+", shape=self.label_shape).flush()
            np.memmap(tmp / "filled.u8", np.uint8, "w+", shape=(self.length,)).flush()
            (tmp / "meta.json").write_text(json.dumps(self._meta()))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the set is for every run on the machine
            os.rename(tmp, self.path)  # fails if another process made it first: use theirs
        except OSError:
            if not (self.path / "meta.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _open(self):
        if not (self.path / "meta.json").is_file():
            self._create()
        try:
            meta = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError):
            meta = None
        if meta != self._meta():
            raise RuntimeError(f"scene cache {str(self.path)!r} holds another set ({meta}); delete the folder")
        maps = (np.memmap(self.path / "images.f32", np.float32, "r+", shape=self.image_shape),
                np.memmap(self.path / "labels.u8", np.uint8, "r+", shape=self.label_shape),
                np.memmap(self.path / "filled.u8", np.uint8, "r+", shape=(self.length,)))
        filled = np.flatnonzero(maps[2])
        if filled.size:  # the self-check: one stored item must equal a fresh render
            index = int(filled[len(filled) // 2])
            images, labels = self.render(index)
            if not (np.array_equal(maps[0][index], images) and np.array_equal(maps[1][index], labels)):
                warnings.warn(f"scene cache {str(self.path)!r} does not match the renderer (changed without a "
                              "RENDER_VERSION bump?): it is cleared and filled again", stacklevel=3)
                maps[2][:] = 0
        return maps

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 [T, 3, H, W], labels uint8 [T, H, W]) of item `index`, rendered if not stored."""
        if self._maps is None:
            self._maps = self._open()
        images, labels, filled = self._maps
        if filled[index]:
            return np.array(images[index]), np.array(labels[index])
        new_images, new_labels = self.render(index)
        images[index] = new_images
        labels[index] = new_labels
        # NOTE: the flag is written after the rows; a reader that sees it set reads complete rows
        # (file-backed shared mappings are coherent across processes). A writer killed before this
        # line leaves the item unmarked, and the next reader renders it again.
        filled[index] = 1
        return new_images, new_labels

    def filled_count(self) -> int:
        """How many items are stored (0 for a cache not created yet)."""
        if self._maps is None:
            if not (self.path / "meta.json").is_file():
                return 0
            self._maps = self._open()
        return int(self._maps[2].sum())
