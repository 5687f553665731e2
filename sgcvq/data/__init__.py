"""Datasets: procedural street scenes with exact labels, image folders (Cityscapes/plain), a segmenter hook."""
from __future__ import annotations

from torch.utils.data import Dataset

from .classes import (
    CITYSCAPES_CLASS_MAP,
    CITYSCAPES_CLASS_NAMES,
    CLASS_MAPS,
    CLASS_NAMES,
    IGNORE_LABEL,
)
from .folder import BadItemError, FolderDataset
from .segmenter import SegmentedDataset, SegmentingCollate, checked_segmenter, load_segmenter
from .synthetic import SyntheticStreetScenes, draw_street_scene

__all__ = [
    "CLASS_NAMES",
    "IGNORE_LABEL",
    "CITYSCAPES_CLASS_MAP",
    "CITYSCAPES_CLASS_NAMES",
    "CLASS_MAPS",
    "SyntheticStreetScenes",
    "draw_street_scene",
    "FolderDataset",
    "BadItemError",
    "load_segmenter",
    "checked_segmenter",
    "SegmentedDataset",
    "SegmentingCollate",
    "build_dataset",
]


def build_dataset(kind: str, segmenter=None, **kwargs) -> Dataset:
    """Build a dataset by kind.

    kind: "synthetic" -> SyntheticStreetScenes(**kwargs) (length, resolution, seed, video, num_frames);
          "cityscapes" -> FolderDataset(layout="cityscapes", **kwargs) (root, split, resolution, ...);
          "folder" -> FolderDataset(**kwargs) with layout="plain" unless given.
    segmenter: optional "module:function" or callable; wraps the dataset in SegmentedDataset
        (labels predicted for items that have none).
    """
    if kind == "synthetic":
        dataset = SyntheticStreetScenes(**kwargs)
    elif kind == "cityscapes":
        if kwargs.setdefault("layout", "cityscapes") != "cityscapes":
            raise ValueError(f"build_dataset('cityscapes'): layout must be 'cityscapes', got {kwargs['layout']!r}")
        dataset = FolderDataset(**kwargs)
    elif kind == "folder":
        kwargs.setdefault("layout", "plain")
        if segmenter is not None:
            kwargs.setdefault("labels", False)
        dataset = FolderDataset(**kwargs)
    else:
        raise ValueError(f"build_dataset: kind must be 'synthetic', 'cityscapes' or 'folder', got {kind!r}")
    return SegmentedDataset(dataset, segmenter) if segmenter is not None else dataset
