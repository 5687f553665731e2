"""Datasets: synthetic street scenes, image folders with bad files, the segmenter hook."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sgcvq.data import (
    CITYSCAPES_CLASS_MAP,
    CLASS_NAMES,
    IGNORE_LABEL,
    BadItemError,
    FolderDataset,
    SegmentedDataset,
    SegmentingCollate,
    SyntheticStreetScenes,
    build_dataset,
    load_segmenter,
)


# --------------------------------------------------------------------------------------------
# Synthetic street scenes
# --------------------------------------------------------------------------------------------
def test_synthetic_items_are_deterministic_and_distinct():
    ds = SyntheticStreetScenes(10, resolution=48, seed=3)
    later = ds[7]
    first = ds[2]
    again = SyntheticStreetScenes(10, resolution=48, seed=3)  # a fresh dataset, other access order
    assert torch.equal(again[2]["image"], first["image"]) and torch.equal(again[2]["label"], first["label"])
    assert torch.equal(again[7]["image"], later["image"])
    assert first["id"] != later["id"]
    assert not torch.equal(first["image"], later["image"])
    assert not torch.equal(first["label"], later["label"])
    other_seed = SyntheticStreetScenes(10, resolution=48, seed=4)[2]
    assert not torch.equal(other_seed["image"], first["image"])


def test_synthetic_item_format_and_label_range():
    ds = SyntheticStreetScenes(4, resolution=(40, 72), seed=0)
    assert len(ds) == 4 and ds.num_classes == len(CLASS_NAMES) >= 8
    for item in ds:
        image, label = item["image"], item["label"]
        assert image.shape == (3, 40, 72) and image.dtype == torch.float32
        assert label.shape == (40, 72) and label.dtype == torch.int64
        assert image.min() >= -1 and image.max() <= 1 and image.std() > 0.1
        assert label.min() >= 0 and label.max() < len(CLASS_NAMES)
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="resolution"):
        SyntheticStreetScenes(4, resolution=(4, 4))


def test_synthetic_classes_all_appear_and_match_their_colours():
    ds = SyntheticStreetScenes(8, resolution=64, seed=0)
    seen = set()
    sky_blue, road_grey = [], []
    for item in ds:
        label, image = item["label"], item["image"]
        seen |= set(torch.unique(label).tolist())
        sky = label == CLASS_NAMES.index("sky")
        sky_blue.append(image[2][sky].mean() - image[0][sky].mean())
        road = image[:, label == CLASS_NAMES.index("road")]
        road_grey.append((road.max(0).values - road.min(0).values).mean())
    assert seen == set(range(len(CLASS_NAMES)))
    # Labels follow the paint: sky pixels are bluer than red on average, road pixels nearly grey.
    assert np.mean(sky_blue) > 0.05
    assert np.mean(road_grey) < 0.15


def test_synthetic_video_moves():
    ds = SyntheticStreetScenes(2, resolution=32, seed=1, video=True, num_frames=5)
    clip = ds[0]
    assert clip["frames"].shape == (5, 3, 32, 32) and clip["frames"].dtype == torch.float32
    assert clip["labels"].shape == (5, 32, 32) and clip["labels"].dtype == torch.int64
    for t in range(4):
        assert not torch.equal(clip["frames"][t], clip["frames"][t + 1])
        assert not torch.equal(clip["labels"][t], clip["labels"][t + 1])
    # Motion, not a new scene: consecutive frames share most labels.
    same = (clip["labels"][1:] == clip["labels"][:-1]).float().mean()
    assert same > 0.6
    assert torch.equal(ds[0]["frames"], clip["frames"])


# --------------------------------------------------------------------------------------------
# Folder datasets
# --------------------------------------------------------------------------------------------
def _write_rgb(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _write_label(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)


def make_cityscapes(root, cities=("aachen", "bonn"), per_city=2, height=16, width=24):
    raw = np.zeros((height, width), np.uint8)
    raw[: height // 2] = 23  # sky -> 10
    raw[height // 2:, : width // 2] = 7  # road -> 0
    raw[height // 2:, width // 2:] = 26  # car -> 13
    raw[0, 0] = 0  # unlabeled -> 255
    for c, city in enumerate(cities):
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            _write_rgb(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png", height, width, 10 * c + i)
            _write_label(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png", raw)
    return raw


def test_cityscapes_layout_maps_label_ids_and_resizes(tmp_path):
    raw = make_cityscapes(tmp_path)
    ds = FolderDataset(tmp_path, layout="cityscapes")
    assert len(ds) == 4 and ds.skipped == [] and ds.num_classes == 19
    item = ds[0]
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    expected = np.vectorize(CITYSCAPES_CLASS_MAP.get)(raw)
    assert torch.equal(item["label"], torch.from_numpy(expected).long())
    assert item["id"].startswith("leftImg8bit/train/aachen/")
    small = FolderDataset(tmp_path, layout="cityscapes", resolution=(8, 12))[3]
    assert small["image"].shape == (3, 8, 12) and small["label"].shape == (8, 12)
    assert set(torch.unique(small["label"]).tolist()) <= {0, 10, 13, 255}  # nearest: no blended ids
    assert len(build_dataset("cityscapes", root=tmp_path)) == 4
    with pytest.raises(FileNotFoundError, match="leftImg8bit/<split>"):
        FolderDataset(tmp_path, layout="cityscapes", split="val")


def make_plain(root, n=3, size=12, num_classes=3):
    for i in range(n):
        _write_rgb(root / "images" / f"img{i}.png", size, size, i)
        _write_label(root / "labels" / f"img{i}.png", np.arange(size * size).reshape(size, size) % num_classes)
    return root


def test_plain_layout_with_jpeg_and_class_map(tmp_path):
    make_plain(tmp_path)
    Image.open(tmp_path / "images" / "img2.png").save(tmp_path / "images" / "img3.jpg")
    _write_label(tmp_path / "labels" / "img3.png", np.full((12, 12), 2))
    ds = FolderDataset(tmp_path, layout="plain", num_classes=3)
    assert len(ds) == 4 and ds.skipped == []
    assert torch.equal(ds[3]["label"], torch.full((12, 12), 2, dtype=torch.int64))
    mapped = FolderDataset(tmp_path, layout="plain", class_map={1: 0, 2: 1})
    assert mapped.num_classes == 2
    assert set(torch.unique(mapped[0]["label"]).tolist()) == {0, 1, IGNORE_LABEL}  # 0 is unmapped -> 255
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 12, 12) and batch["label"].shape == (4, 12, 12)


def make_bad_folder(root):
    make_plain(root, n=3)
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    _write_label(root / "labels" / "corrupt.png", np.zeros((12, 12)))
    _write_rgb(root / "images" / "wrongsize.png", 12, 12, 7)
    _write_label(root / "labels" / "wrongsize.png", np.zeros((10, 12)))
    _write_rgb(root / "images" / "unknown.png", 12, 12, 8)
    _write_label(root / "labels" / "unknown.png", np.full((12, 12), 7))  # class 7 of 3
    _write_rgb(root / "images" / "nolabel.png", 12, 12, 9)
    return root


def test_bad_files_are_skipped_and_reported(tmp_path):
    make_bad_folder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 3 of 7"):
        ds = FolderDataset(tmp_path, layout="plain", num_classes=3)
    reasons = dict(ds.skipped)
    assert "unreadable image" in reasons[str(tmp_path / "images" / "corrupt.png")]
    assert "label map is 12x10 (WxH)" in reasons[str(tmp_path / "labels" / "wrongsize.png")]
    assert "no label map" in reasons[str(tmp_path / "images" / "nolabel.png")]
    # Unknown ids are found when the item is decoded: the next good item takes its place.
    assert len(ds) == 4
    with pytest.warns(UserWarning, match=r"unknown\.png.*unknown class ids \[7\]"):
        items = [ds[i] for i in range(len(ds))]
    assert all(item["label"].max() < 3 for item in items)
    assert str(tmp_path / "labels" / "unknown.png") in dict(ds.skipped)
    assert len(ds.skipped) == 4
    # A DataLoader worker meeting the bad item does not crash; scan() gives the full report up front.
    with pytest.warns(UserWarning, match="skipped 3 of 7"):
        fresh = FolderDataset(tmp_path, layout="plain", num_classes=3)
    with pytest.warns(UserWarning, match="skipped 3 of 7"):
        loaded = FolderDataset(tmp_path, layout="plain", num_classes=3)
    batches = list(DataLoader(loaded, batch_size=2, num_workers=1))
    assert sum(len(b["id"]) for b in batches) == 4 and all(b["label"].max() < 3 for b in batches)
    assert len(fresh.scan()) == 4 and len(fresh) == 3
    assert sum(len(b["id"]) for b in DataLoader(fresh, batch_size=2)) == 3


def test_bad_files_raise_when_asked(tmp_path):
    make_bad_folder(tmp_path)
    with pytest.raises(BadItemError, match=r"corrupt\.png"):
        FolderDataset(tmp_path, layout="plain", num_classes=3, on_error="raise")
    for name in ("corrupt", "wrongsize", "nolabel"):
        for suffix in ("images", "labels"):
            (tmp_path / suffix / f"{name}.png").unlink(missing_ok=True)
    ds = FolderDataset(tmp_path, layout="plain", num_classes=3, on_error="raise")
    with pytest.raises(BadItemError, match=r"unknown\.png.*unknown class ids \[7\]"):
        [ds[i] for i in range(len(ds))]


def test_cityscapes_unknown_label_id_is_reported(tmp_path):
    make_cityscapes(tmp_path, cities=("aachen",), per_city=2)
    bad = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    _write_label(bad, np.full((16, 24), 77))
    ds = FolderDataset(tmp_path, layout="cityscapes")
    assert ds.scan() == [(str(bad), ds.skipped[0][1])] and "[77]" in ds.skipped[0][1]
    assert len(ds) == 1


# --------------------------------------------------------------------------------------------
# Segmenter hook
# --------------------------------------------------------------------------------------------
@pytest.fixture
def segmenter_module(tmp_path, monkeypatch):
    (tmp_path / "toy_segmenter.py").write_text(textwrap.dedent("""
        import torch

        def by_brightness(images):
            # class 1 where the pixel is brighter than the image mean, else 0
            gray = images.mean(dim=1)
            return (gray > gray.mean(dim=(1, 2), keepdim=True)).to(torch.int32)

        def scores(images):
            return torch.stack([-images[:, 0], images[:, 0]], dim=1)

        def wrong_shape(images):
            return torch.zeros(images.shape[0], 3, dtype=torch.int64)

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "toy_segmenter"


def test_load_segmenter_from_a_module(segmenter_module):
    segment = load_segmenter(f"{segmenter_module}:by_brightness")
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    labels = segment(images)
    assert labels.shape == (2, 8, 8) and labels.dtype == torch.int64
    assert torch.equal(labels, (images.mean(1) > images.mean(1).mean(dim=(1, 2), keepdim=True)).long())
    scores = load_segmenter(f"{segmenter_module}:scores")(images)
    assert torch.equal(scores, (images[:, 0] > 0).long())


@pytest.mark.parametrize("spec, error, match", [
    ("no_such_module_xyz:f", ImportError, "cannot import module 'no_such_module_xyz'"),
    ("toy_segmenter:missing", AttributeError, "no attribute 'missing'"),
    ("toy_segmenter:NOT_CALLABLE", TypeError, "not a callable"),
    ("toy_segmenter", ValueError, "module:function"),
])
def test_load_segmenter_errors(segmenter_module, spec, error, match):
    with pytest.raises(error, match=match):
        load_segmenter(spec)


def test_segmenter_output_is_checked(segmenter_module):
    with pytest.raises(ValueError, match=r"expected integer label maps \[2, 8, 8\]"):
        load_segmenter(f"{segmenter_module}:wrong_shape")(torch.rand(2, 3, 8, 8))


def test_segmenter_labels_an_unlabelled_folder(tmp_path, segmenter_module):
    root = tmp_path / "data"
    for i in range(3):
        _write_rgb(root / "images" / f"x{i}.png", 8, 8, i)
    spec = f"{segmenter_module}:by_brightness"
    ds = build_dataset("folder", root=root, segmenter=spec)
    assert isinstance(ds, SegmentedDataset) and len(ds) == 3
    item = ds[1]
    assert item["label"].shape == (8, 8) and set(torch.unique(item["label"]).tolist()) <= {0, 1}
    plain = FolderDataset(root, layout="plain", labels=False)
    assert "label" not in plain[0]
    batch = next(iter(DataLoader(plain, batch_size=3, collate_fn=SegmentingCollate(spec))))
    assert batch["label"].shape == (3, 8, 8)
    assert torch.equal(batch["label"][1], item["label"])


def test_build_dataset_kinds(tmp_path):
    assert len(build_dataset("synthetic", length=5, resolution=16)) == 5
    make_plain(tmp_path)
    assert len(build_dataset("folder", root=tmp_path, num_classes=3)) == 3
    with pytest.raises(ValueError, match="kind must be"):
        build_dataset("imagenet")


# --------------------------------------------------------------------------------------------
# The scene cache and the batch stream (exact resume depends on item i being the same everywhere)
# --------------------------------------------------------------------------------------------
def _same_item(a, b):
    assert a.keys() == b.keys() and a["id"] == b["id"]
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("video", [False, True])
def test_scene_cache_gives_the_painted_items_bit_for_bit(tmp_path, video):
    kwargs = dict(length=23, resolution=(24, 40), seed=int(np.random.default_rng().integers(1000)), video=video,
                  num_frames=3)
    plain = SyntheticStreetScenes(**kwargs)
    cached = SyntheticStreetScenes(**kwargs, cache=tmp_path)
    order = np.random.default_rng().permutation(23)
    for i in order[:11]:  # first reads paint and store
        _same_item(cached[int(i)], plain[int(i)])
    assert cached.cache.filled_count() == 11
    again = SyntheticStreetScenes(**kwargs, cache=tmp_path)  # a later run: reads what is stored
    for i in order:
        _same_item(again[int(i)], plain[int(i)])
    assert again.cache.filled_count() == 23
    assert again[-1]["id"] == plain[22]["id"]


def test_scene_cache_is_filled_by_workers_and_keyed_by_the_set(tmp_path):
    plain = SyntheticStreetScenes(16, resolution=32, seed=5)
    cached = SyntheticStreetScenes(16, resolution=32, seed=5, cache=tmp_path)
    gen = torch.Generator().manual_seed(1)
    batches = list(DataLoader(cached, batch_size=4, shuffle=True, num_workers=2, generator=gen))
    ids = [i for b in batches for i in b["id"]]
    assert sorted(ids) == sorted(plain[i]["id"] for i in range(16))
    for b in batches:
        for j, item_id in enumerate(b["id"]):
            ref = plain[int(item_id.rsplit("-", 1)[1])]
            assert torch.equal(b["image"][j], ref["image"]) and torch.equal(b["label"][j], ref["label"])
    assert SyntheticStreetScenes(16, resolution=32, seed=5, cache=tmp_path).cache.filled_count() == 16
    others = [SyntheticStreetScenes(16, resolution=32, seed=6, cache=tmp_path),
              SyntheticStreetScenes(16, resolution=48, seed=5, cache=tmp_path),
              SyntheticStreetScenes(17, resolution=32, seed=5, cache=tmp_path)]
    assert len({o.cache.path for o in others} | {cached.cache.path}) == 4
    assert all(o.cache.filled_count() == 0 for o in others)


def test_scene_cache_repaints_a_cache_that_disagrees_with_the_renderer(tmp_path):
    ds = SyntheticStreetScenes(6, resolution=16, seed=2, cache=tmp_path)
    reference = [SyntheticStreetScenes(6, resolution=16, seed=2)[i] for i in range(6)]
    for i in range(6):
        ds[i]
    images = np.memmap(ds.cache.path / "images.f32", np.float32, "r+", shape=ds.cache.image_shape)
    images[:] += 0.5  # as if the renderer had changed without a RENDER_VERSION bump
    images.flush()
    with pytest.warns(UserWarning, match="does not match the renderer"):
        fresh = SyntheticStreetScenes(6, resolution=16, seed=2, cache=tmp_path)
        items = [fresh[i] for i in range(6)]
    for item, ref in zip(items, reference):
        _same_item(item, ref)


def test_scene_cache_off_and_size_limit(tmp_path, monkeypatch):
    import sgcvq.data.synthetic as synthetic

    assert SyntheticStreetScenes(4, resolution=16).cache is None
    monkeypatch.setattr(synthetic, "MAX_CACHE_BYTES", 1000)
    assert SyntheticStreetScenes(4, resolution=16, cache=tmp_path).cache is None  # painted on the fly
    monkeypatch.setenv("SGCVQ_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(synthetic, "MAX_CACHE_BYTES", 1 << 30)
    assert SyntheticStreetScenes(4, resolution=16, cache="auto").cache.path.parent == tmp_path / "env"


def _stream_batches(dataset, workers, n, epoch=0, batch_in_epoch=0, rank=0, world=1):
    from sgcvq.training.batch_stream import BatchStream

    stream = BatchStream(dataset, 3, rank, world, seed=11, num_workers=workers, epoch=epoch,
                         batch_in_epoch=batch_in_epoch, prefetch_factor=2)
    out = [next(stream) for _ in range(n)]
    state = stream.state()
    stream.close()
    return out, state


def test_batch_stream_is_the_same_for_any_worker_count_and_resumes_exactly(tmp_path):
    plain = SyntheticStreetScenes(10, resolution=16, seed=4)
    cached = SyntheticStreetScenes(10, resolution=16, seed=4, cache=tmp_path)
    # 3 batches of 3 per epoch: 7 batches cross two epoch boundaries.
    ref, state = _stream_batches(plain, 0, 7)
    assert state == {"epoch": 2, "batch_in_epoch": 1}
    for dataset, workers in ((plain, 2), (cached, 0), (cached, 2)):
        got, _ = _stream_batches(dataset, workers, 7)
        for a, b in zip(got, ref):
            _same_item(a, b)
    # Resumed after batch 4 (epoch 1, batch 1): the same batches 5..7, any worker count.
    for workers in (0, 2):
        tail, _ = _stream_batches(cached, workers, 3, epoch=1, batch_in_epoch=1)
        for a, b in zip(tail, ref[4:]):
            _same_item(a, b)
    # Two ranks share an epoch's shuffled order without overlap.
    r0, _ = _stream_batches(cached, 1, 1, rank=0, world=2)
    r1, _ = _stream_batches(cached, 0, 1, rank=1, world=2)
    assert not set(r0[0]["id"]) & set(r1[0]["id"])


def test_loader_settings_auto_and_errors(monkeypatch):
    import sgcvq.training.batch_stream as bs

    monkeypatch.setattr(bs, "_usable_cores", lambda: 16)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    s = bs.resolve_loader_settings("auto", "auto", 4, cuda)
    assert (s.num_workers, s.pin_memory, s.prefetch_factor) == (8, True, 4)
    assert bs.resolve_loader_settings("auto", "auto", 4, cuda, local_world_size=4).num_workers == 3
    assert bs.resolve_loader_settings("auto", "auto", 4, cuda, main_process_only=True).num_workers == 0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(12)
        s = bs.resolve_loader_settings("auto", "auto", 2, cpu)
        assert (s.num_workers, s.pin_memory) == (4, False)
        torch.set_num_threads(16)
        assert bs.resolve_loader_settings("auto", True, 2, cpu).num_workers == 0  # no idle core on a CPU run
        assert bs.resolve_loader_settings("auto", True, 2, cpu).pin_memory is False  # nothing to pin for
    finally:
        torch.set_num_threads(threads)
    assert bs.resolve_loader_settings(3, False, 1, cuda) == bs.LoaderSettings(3, False, 1)
    for bad, match in ((("many", "auto", 4), "data.num_workers"), ((-1, "auto", 4), "data.num_workers"),
                       ((0, "yes", 4), "data.pin_memory"), ((0, "auto", 0), "data.prefetch_factor")):
        with pytest.raises(ValueError, match=match):
            bs.resolve_loader_settings(*bad, cpu)


def test_decode_failures_in_workers_are_counted_once(tmp_path):
    import time

    from sgcvq.training.batch_stream import BatchStream

    for i in range(5):
        _write_rgb(tmp_path / "images" / f"{i}.png", 16, 16, i)
        _write_label(tmp_path / "labels" / f"{i}.png", np.ones((16, 16)))
    # Unknown class ids pass the header check: found only when the item is decoded, in a worker.
    _write_rgb(tmp_path / "images" / "unknown.png", 16, 16, 9)
    _write_label(tmp_path / "labels" / "unknown.png", np.full((16, 16), 7))
    ds = FolderDataset(tmp_path, layout="plain", num_classes=3)
    assert len(ds) == 6 and ds.skipped == []
    stream = BatchStream(ds, 2, 0, 1, seed=0, num_workers=2)
    for _ in range(6):  # two epochs: both workers may meet the bad file
        batch = next(stream)
        assert batch["image"].shape == (2, 3, 16, 16) and batch["label"].max() < 3
    for _ in range(100):  # the workers' queue feeder threads deliver asynchronously
        if stream.skipped():
            break
        time.sleep(0.05)
    skipped = stream.skipped()
    stream.close()
    assert [p for p, _ in skipped] == [str(tmp_path / "labels" / "unknown.png")]
    assert "unknown class ids [7]" in skipped[0][1]
    assert ds.skipped == []  # the main process's copy never decoded it


@pytest.mark.parametrize("res", [16, 32, 64])
def test_canvas_rect_slices_paint_exactly_the_masked_pixels(res):
    """Canvas.rect paints through slices; it must give the very bits the boolean mask gave (same
    pixels, same float32 values), for Python and numpy coordinates, thin and off-canvas rectangles."""
    from sgcvq.data.scene import Canvas

    rng = np.random.default_rng(res)
    grain, blotch = rng.standard_normal((2, res, res)).astype(np.float32)
    ours, ref = Canvas(res, res, grain, blotch), Canvas(res, res, grain, blotch)
    for i in range(400):
        y0, x0 = rng.uniform(-0.3, 1.2, 2)
        y1, x1 = y0 + rng.uniform(0, 0.6), x0 + rng.uniform(0, 0.6) * (0.02 if i % 5 == 0 else 1.0)
        if i % 2:  # numpy float64 coordinates compare in float64, Python floats in float32
            y0, y1, x0, x1 = (float(v) for v in (y0, y1, x0, x1))
        color, cls, texture = rng.uniform(0, 1, 3).astype(np.float32), int(rng.integers(0, 9)), (0.0, 0.02, 0.05)[i % 3]
        ours.rect(y0, y1, x0, x1, color, cls, texture)
        # The reference: the boolean-mask painting rect did before (Canvas.paint with the mask).
        w0, w1 = x0, x1
        if w1 - w0 < ref.pixel:
            mid = 0.5 * (w0 + w1)
            w0, w1 = mid - 0.5 * ref.pixel, mid + 0.5 * ref.pixel
        win = ref.box(y0, y1, w0, w1)
        if win is not None:
            rows, cols = win
            Y, X = ref.Y[rows], ref.X[:, cols]
            ref.paint(rows, cols, (Y >= y0) & (Y < y1) & (X >= w0) & (X < w1), color, cls, texture)
        assert np.array_equal(ours.image.view(np.uint32), ref.image.view(np.uint32)), i
        assert np.array_equal(ours.label, ref.label), i
