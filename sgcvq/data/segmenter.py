"""The segmenter hook: label maps from any segmentation model, for images that have none.

A segmenter is named "module:function" (like an entry point): the function maps an image batch
[B, 3, H, W] float in [-1, 1] to label maps [B, H, W] integer (255 = ignore), or to class scores
[B, C, H, W] that are arg-maxed. It is applied per item (SegmentedDataset) or per batch at
collate time (SegmentingCollate, cheaper for a real network).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, default_collate

Segmenter = Callable[[torch.Tensor], torch.Tensor]


def load_segmenter(spec: str) -> Segmenter:
    """Import "package.module:function" (or "module:Class.method") and return it wrapped with output checks.

    Raises ValueError for a malformed spec, ImportError when the module cannot be imported,
    AttributeError when it has no such function, TypeError when the attribute is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"load_segmenter: expected 'module:function' (e.g. 'my_seg:predict'), got {spec!r}")
    module_name, attr_path = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"load_segmenter({spec!r}): cannot import module {module_name!r} ({err}); "
                          "is it installed or on PYTHONPATH / sys.path?") from err
    obj = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"load_segmenter({spec!r}): {obj.__name__ if obj is module else attr_path!r} "
                                 f"has no attribute {part!r} (module file: {getattr(module, '__file__', '?')})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"load_segmenter({spec!r}): {attr_path!r} is a {type(obj).__name__}, not a callable")
    return checked_segmenter(obj, name=spec)


def checked_segmenter(fn: Segmenter, name: str = "segmenter") -> Segmenter:
    """Wrap `fn` so its output is checked and normalised to int64 label maps [B, H, W]."""

    def segment(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = fn(images)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"segmenter {name}: returned {type(out).__name__}, expected a tensor [B, H, W]")
        b, _, h, w = images.shape
        if out.dim() == 4 and out.shape[0] == b and out.shape[-2:] == (h, w) and out.dtype.is_floating_point:
            out = out.argmax(dim=1)  # class scores [B, C, H, W]
        if tuple(out.shape) != (b, h, w) or out.dtype.is_floating_point or out.dtype == torch.bool:
            raise ValueError(f"segmenter {name}: returned {out.dtype} {list(out.shape)}; expected integer label maps "
                             f"[{b}, {h}, {w}] (or float class scores [{b}, C, {h}, {w}])")
        return out.long()

    segment.__name__ = getattr(fn, "__name__", "segment")
    return segment


def _resolve(segmenter) -> Segmenter:
    return load_segmenter(segmenter) if isinstance(segmenter, str) else checked_segmenter(segmenter)


class SegmentedDataset(Dataset):
    """Adds (or replaces) item["label"] with the segmenter's prediction on item["image"].

    base: a dataset whose items hold "image" float32 [3, H, W] in [-1, 1];
    segmenter: a "module:function" string or a callable. overwrite=False keeps existing labels.
    """

    def __init__(self, base: Dataset, segmenter, overwrite: bool = False):
        self.base = base
        self.segmenter = _resolve(segmenter)
        self.overwrite = overwrite

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):
        # The base dataset's attributes (skipped, class_names, num_classes...) stay visible to the
        # trainer's reporting. "base" itself is excluded so unpickling cannot recurse.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.base[index])
        if self.overwrite or "label" not in item:
            item["label"] = self.segmenter(item["image"][None])[0]
        return item


class SegmentingCollate:
    """DataLoader collate_fn: stack the batch, then label all images in one segmenter call.

    Items must not hold labels (or overwrite=True); the batch gets "label" int64 [B, H, W].
    Top-level class, so it pickles into DataLoader workers (the segmenter must pickle too, or use
    num_workers=0; a "module:function" string always works).
    """

    def __init__(self, segmenter, overwrite: bool = False):
        self.spec = segmenter
        self.segmenter = _resolve(segmenter)
        self.overwrite = overwrite

    def __getstate__(self):
        # The wrapped closure does not pickle; a string spec is re-loaded in the worker.
        return {"spec": self.spec, "overwrite": self.overwrite}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["overwrite"])

    def __call__(self, items: list[dict]) -> dict:
        batch = default_collate(items)
        if self.overwrite or "label" not in batch:
            batch["label"] = self.segmenter(batch["image"])
        return batch
