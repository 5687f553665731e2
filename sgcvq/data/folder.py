"""FolderDataset: images and label maps from disk (Cityscapes layout or a plain images/labels folder).

Bad files never crash a run. At construction every pair gets a cheap check (the files exist and
open, the PNG/JPEG headers parse, image and label sizes agree, the label map is single-channel);
a failure is recorded in `ds.skipped` as (path, reason), warned about once, and the item left out.
Problems only visible after decoding (truncated pixel data, unknown class ids) are found when the
item is loaded: with on_error="skip" the item is recorded, warned about, and replaced by the next
good item, so a DataLoader worker never raises; `ds.scan()` decodes everything up front when a
complete report is wanted. on_error="raise" raises instead, naming the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .classes import CLASS_MAPS, IGNORE_LABEL

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LABEL_MODES = ("L", "P", "I;16", "I")  # single-channel integer images


class BadItemError(ValueError):
    """A corrupt or inconsistent image/label file: `path` names the file, `reason` says what is wrong."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _resolution(resolution) -> tuple[int, int] | None:
    if resolution is None:
        return None
    if isinstance(resolution, int):
        return resolution, resolution
    try:
        height, width = (int(v) for v in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"FolderDataset: resolution must be None, an int or (H, W); got {resolution!r}") from None
    return height, width


def _lookup_table(class_map: dict[int, int], strict: bool) -> np.ndarray:
    """[65536] int32 raw id -> train id; -1 marks ids that are errors (strict maps), others map to 255."""
    table = np.full(65536, -1 if strict else IGNORE_LABEL, np.int32)
    for raw, train in class_map.items():
        if not 0 <= int(raw) < 65536 or not (0 <= int(train) < IGNORE_LABEL or int(train) == IGNORE_LABEL):
            raise ValueError(f"FolderDataset: class_map entry {raw!r}: {train!r} is out of range "
                             "(raw ids 0..65535, train ids 0..254 or 255)")
        table[int(raw)] = int(train)
    return table


class FolderDataset(Dataset):
    """Images (and label maps) from a folder.

    layout="cityscapes": root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with
        root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png; class_map defaults to
        CITYSCAPES_CLASS_MAP (labelId -> 19 train ids, strict: other ids are errors).
    layout="plain": root/images/*.png|jpg with root/labels/<same stem>.png.
    class_map: None (label values are already class ids), a dict raw id -> train id (other ids -> 255),
        or a name in CLASS_MAPS ("cityscapes").
    resolution: None (keep the size) or int / (H, W): images resized bilinearly, labels by nearest.
    labels: False to load images only (for a segmenter, see SegmentedDataset).
    num_classes: class ids must be < num_classes (or 255); inferred from class_map when None.
    on_error: "skip" (record in ds.skipped, warn, leave out / replace) or "raise".

    ds[i] -> {"image": float32 [3, H, W] in [-1, 1], "label": int64 [H, W] (255 = ignore), "id": str};
    without labels the "label" key is absent.
    """

    def __init__(self, root, layout: str = "cityscapes", class_map=None, resolution=None, on_error: str = "skip",
                 num_classes: int | None = None, split: str = "train", labels: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"FolderDataset: root {str(self.root)!r} is not a directory")
        if layout not in ("cityscapes", "plain"):
            raise ValueError(f"FolderDataset: layout must be 'cityscapes' or 'plain', got {layout!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"FolderDataset: on_error must be 'skip' or 'raise', got {on_error!r}")
        self.layout, self.split, self.on_error = layout, split, on_error
        self.resolution = _resolution(resolution)
        self.with_labels = bool(labels)
        self.class_names = None
        strict = False
        if class_map is None and layout == "cityscapes":
            class_map = "cityscapes"
        if isinstance(class_map, str):
            if class_map not in CLASS_MAPS:
                raise ValueError(f"FolderDataset: unknown class_map {class_map!r}; known: {sorted(CLASS_MAPS)}")
            class_map, self.class_names, strict = CLASS_MAPS[class_map]
        self.class_map = dict(class_map) if class_map is not None else None
        self._table = _lookup_table(self.class_map, strict) if self.class_map is not None else None
        if num_classes is None and self.class_map is not None:
            num_classes = max((v for v in self.class_map.values() if v != IGNORE_LABEL), default=-1) + 1
        self.num_classes = num_classes
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        # Loader workers hold copies of this dataset: a queue set here by the loader's owner
        # (BatchStream) carries the files they skip back to the main process.
        self.skip_sink = None

        pairs = self._find_pairs()
        if not pairs:
            raise FileNotFoundError(f"FolderDataset: no images found under {str(self.root)!r} for layout={layout!r}"
                                    + (f", split={split!r}" if layout == "cityscapes" else "")
                                    + f" (expected {self._expected_pattern()})")
        self.items: list[tuple[Path, Path | None]] = []
        for image_path, label_path in pairs:
            try:
                self._check_headers(image_path, label_path)
            except BadItemError as err:
                if on_error == "raise":
                    raise
                self.skipped.append((err.path, err.reason))
                continue
            self.items.append((image_path, label_path))
        if self.skipped:
            warnings.warn(f"FolderDataset: skipped {len(self.skipped)} of {len(pairs)} items under {str(self.root)!r}; "
                          f"first: {self.skipped[0][0]}: {self.skipped[0][1]} (see ds.skipped)", stacklevel=2)
        if not self.items:
            raise FileNotFoundError(f"FolderDataset: every item under {str(self.root)!r} was skipped: "
                                    f"{self.skipped[:3]}")

    # ----------------------------------------------------------------------------------------
    def _expected_pattern(self) -> str:
        if self.layout == "cityscapes":
            return "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"
        return "images/*.png|jpg and labels/<same stem>.png"

    def _find_pairs(self) -> list[tuple[Path, Path | None]]:
        pairs = []
        if self.layout == "cityscapes":
            image_dir = self.root / "leftImg8bit" / self.split
            for image_path in sorted(image_dir.glob("*/*_leftImg8bit.png")):
                stem = image_path.name[: -len("_leftImg8bit.png")]
                label_path = self.root / "gtFine" / self.split / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
                pairs.append((image_path, label_path if self.with_labels else None))
        else:
            image_dir = self.root / "images"
            for image_path in sorted(p for p in image_dir.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
                label_path = self.root / "labels" / f"{image_path.stem}.png"
                pairs.append((image_path, label_path if self.with_labels else None))
        return pairs

    def _check_headers(self, image_path: Path, label_path: Path | None) -> None:
        """Cheap checks that read headers only; raises BadItemError naming the file."""
        image_size, _ = self._open_header(image_path, "image")
        if label_path is None:
            return
        if not label_path.is_file():
            raise BadItemError(image_path, f"no label map: expected {label_path}")
        label_size, label_mode = self._open_header(label_path, "label map")
        if label_mode not in _LABEL_MODES:
            raise BadItemError(label_path, f"label map has mode {label_mode!r}; expected a single-channel integer "
                               f"PNG ({'/'.join(_LABEL_MODES)})")
        if label_size != image_size:
            raise BadItemError(label_path, f"label map is {label_size[0]}x{label_size[1]} (WxH) but the image "
                               f"{image_path.name} is {image_size[0]}x{image_size[1]}")

    @staticmethod
    def _open_header(path: Path, what: str) -> tuple[tuple[int, int], str]:
        """(size (W, H), mode) of an image file, after PIL's structural check."""
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
                img.verify()  # structure and chunk CRCs, without decoding the pixels
            return size, mode
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise BadItemError(path, f"unreadable {what}: {type(err).__name__}: {err}") from None

    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict:
        """Decode item `index` or raise BadItemError naming the file (no skipping)."""
        image_path, label_path = self.items[index]
        try:
            with Image.open(image_path) as img:
                img = img.convert("RGB")
                if self.resolution is not None:
                    img = img.resize((self.resolution[1], self.resolution[0]), Image.BILINEAR)
                image = np.asarray(img, dtype=np.float32)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise BadItemError(image_path, f"cannot decode image: {type(err).__name__}: {err}") from None
        item = {"image": torch.from_numpy(image).permute(2, 0, 1).div(127.5).sub(1.0).contiguous(),
                "id": str(image_path.relative_to(self.root))}
        if label_path is not None:
            item["label"] = torch.from_numpy(self._load_label(label_path))
        return item

    def _load_label(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as lab:
                if self.resolution is not None:
                    lab = lab.resize((self.resolution[1], self.resolution[0]), Image.NEAREST)
                raw = np.asarray(lab).astype(np.int64)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise BadItemError(path, f"cannot decode label map: {type(err).__name__}: {err}") from None
        if raw.ndim != 2:
            raise BadItemError(path, f"label map decodes to shape {raw.shape}; expected [H, W]")
        if raw.min() < 0 or raw.max() >= 65536:
            raise BadItemError(path, f"label map has values outside 0..65535 ({raw.min()}..{raw.max()})")
        label = self._table[raw].astype(np.int64) if self._table is not None else raw
        unknown = label == -1
        if self.num_classes is not None:
            unknown |= (label >= self.num_classes) & (label != IGNORE_LABEL)
        if unknown.any():
            ids = np.unique(raw[unknown])[:8].tolist()
            if self._table is not None and (self._table == -1).any():
                ids_known = sorted(self.class_map)
                known = f"the {len(ids_known)} raw ids of the class map, {ids_known[0]}..{ids_known[-1]}"
            else:
                known = f"0..{self.num_classes - 1} or {IGNORE_LABEL}"
            raise BadItemError(path, f"label map has unknown class ids {ids} (known: {known})")
        return label

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.items):
            raise IndexError(f"FolderDataset index {index} out of range for {len(self.items)} items")
        if self.on_error == "raise":
            return self.load(index)
        # Skip mode: try this item, then the following ones; a worker never raises for a bad file.
        for offset in range(len(self.items)):
            i = (index + offset) % len(self.items)
            if i in self._bad:
                continue
            try:
                return self.load(i)
            except BadItemError as err:
                self._bad.add(i)
                self.skipped.append((err.path, err.reason))
                if self.skip_sink is not None:
                    self.skip_sink.put((str(err.path), err.reason))
                warnings.warn(f"FolderDataset: skipping {err}", stacklevel=2)
        raise RuntimeError(f"FolderDataset: every item under {str(self.root)!r} failed to load; see ds.skipped")

    def scan(self) -> list[tuple[str, str]]:
        """Decode every item now; bad ones are dropped from the dataset and recorded. Returns ds.skipped.

        With on_error="raise", raises at the first bad item instead.
        """
        good = []
        for i, pair in enumerate(self.items):
            try:
                if i not in self._bad:
                    self.load(i)
                    good.append(pair)
            except BadItemError as err:
                if self.on_error == "raise":
                    raise
                self.skipped.append((err.path, err.reason))
        self.items, self._bad = good, set()
        return self.skipped
