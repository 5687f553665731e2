"""The run configuration: a dataclass tree (model, data, optim, train, log) with working defaults.

A config is built from the defaults, then a YAML file (`--config run.yaml`), then command-line
overrides (`--set train.max_steps=200 optim.lr=1e-4`), in that order, and saved beside every run
(`config.yaml`) and inside every checkpoint, so a run can always be rebuilt from its outputs.
Unknown keys are errors that name the key: a typo must never be silently ignored.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .model import ModelConfig

__all__ = [
    "Config",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "LogConfig",
    "ModelConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "apply_overrides",
    "demo_config",
    "smoke_config",
]


@dataclass
class DataConfig:
    """Where the training images come from.

    dataset: "synthetic" (procedural street scenes with exact label maps, no files needed) or
    "folder" (images under `root`, label maps beside them in the given `layout`).
    """

    dataset: str = "synthetic"
    root: str | None = None
    layout: str = "cityscapes"  # folder datasets: "cityscapes" or "plain"
    class_map: str | None = None  # folder datasets: name of a class map known to sgcvq.data
    split: str = "train"  # cityscapes layout: the training split
    eval_split: str = "val"  # cityscapes layout: the split `sgcvq eval` reads
    resolution: int = 64
    length: int = 4096  # synthetic datasets: number of distinct scenes
    eval_length: int = 256  # synthetic datasets: held-out scenes for `sgcvq eval`
    video_frames: int = 4  # frames per clip for the temporal-stability metric (synthetic only)
    seed: int = 0
    # "module:function" mapping images [B, 3, H, W] in [-1, 1] to label maps [B, H, W]: labels come
    # from this segmentation model instead of label files (folder images then need no label maps).
    segmenter: str | None = None
    batch_size: int = 16  # per process, per micro-batch
    # Loader processes: "auto" = by device and core count (see sgcvq.training.batch_stream), or a count.
    num_workers: int | str = "auto"
    pin_memory: bool | str = "auto"  # "auto": on when training on a GPU
    prefetch_factor: int = 4  # batches each worker prepares ahead
    # Synthetic scenes: "auto" paints each scene once into a memory-mapped cache under $SGCVQ_CACHE_DIR
    # (default ~/.cache/sgcvq) that later epochs, workers and runs read; a folder path; or null (off).
    cache: str | None = "auto"


@dataclass
class OptimConfig:
    """Optimizers for the generator (encoder, quantizer, decoder) and the discriminator."""

    name: str = "adam"  # "adam" or "adamw"
    lr: float = 2e-4
    disc_lr: float | None = None  # None: same as lr
    betas: tuple[float, float] = (0.5, 0.9)  # VQGAN's betas
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainConfig:
    """The training loop: length, precision, losses, checkpoints."""

    max_steps: int = 10_000  # optimizer steps (one step = grad_accum micro-batches)
    grad_accum: int = 1
    amp: str = "auto"  # "auto" (bf16 on GPUs that support it, else fp16; fp32 on CPU), "fp32", "bf16", "fp16"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    seed: int = 0
    disc_start: int = 5_000  # step at which the discriminator starts training and its loss is used
    disc_weight: float = 0.5
    perceptual_weight: float = 0.0  # LPIPS needs local weights (lpips_weights); 0 = off
    lpips_weights: str | None = None
    l1_weight: float = 1.0
    ema_decay: float = 0.0  # EMA of the weights for evaluation; 0 = off
    ckpt_every: int = 500
    keep_last: int = 3
    time_limit_s: float = 0.0  # stop (with a checkpoint) after this many seconds; 0 = no limit
    compile: bool = False  # run the generator and discriminator steps under torch.compile
    channels_last: bool | str = "auto"  # NHWC activations; "auto": on GPUs (tensor-core convolutions)


@dataclass
class LogConfig:
    """What gets written while training."""

    every: int = 10  # steps between CSV/TensorBoard rows
    tensorboard: bool = True
    csv: bool = True
    progress: bool = True  # tqdm bar


@dataclass
class Config:
    """The whole run: `Config()` trains a 64x64 SGC-VQGAN on the synthetic street scenes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass
# --------------------------------------------------------------------------------------------
def config_to_dict(obj: Any) -> Any:
    """A plain, YAML- and JSON-safe dict (tuples become lists) of a dataclass tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the field's annotated type, or raise naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: {value!r} does not fit {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> Config:
    """Build a Config from a (partial) nested dict; missing keys keep their defaults."""
    return _from_dict(Config, data, "")


def load_config(path: str | Path) -> Config:
    """Read a YAML config file (partial files are fine: missing keys keep their defaults)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path) as fh:
        data = yaml.safe_load(fh)
    try:
        return config_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the full config (every key, defaults included) as YAML."""
    with open(path, "w") as fh:
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)


def apply_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """Return a copy of `cfg` with `section.key=value` overrides applied.

    Values are parsed as YAML (`1e-4`, `true`, `[0.5, 0.9]`, `null`), then checked against the
    field's type, so `--set train.max_steps=abc` fails naming `train.max_steps`.
    """
    data = config_to_dict(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ValueError(f"override {item!r}: unknown section {'.'.join(parts[: depth + 1])!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(
                f"override {item!r}: unknown key {key!r}; known: {', '.join(sorted(node))}"
            )
        value = yaml.safe_load(raw) if raw.strip() else ""
        # YAML reads "1e-4" as a string (no dot before the exponent); numbers are meant here.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        node[parts[-1]] = value
    return config_from_dict(data)


def _synthetic_class_frequencies(data: DataConfig, num_classes: int | None) -> tuple[float, ...] | None:
    if not num_classes:
        return None
    from .data import SyntheticStreetScenes

    scenes = SyntheticStreetScenes(data.length, resolution=data.resolution, seed=data.seed)
    if num_classes != scenes.num_classes:
        return None
    return tuple(scenes.class_frequencies(num_images=64))


def demo_config(num_classes: int | None, steps: int) -> Config:
    """The small configuration `sgcvq train --demo` uses (32x32 scenes, a few-MB model).

    Sized so that two such runs (SGC and the plain-VQ baseline) plus evaluation and the report take
    about five minutes on a quiet 2-core CPU; see `sgcvq.train.run_demo`.
    """
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, resolution=32, length=2048, eval_length=128, batch_size=16)
    cfg.model = dataclasses.replace(
        cfg.model,
        resolution=32,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        embed_dim=32,
        codebook_size=128,
        num_classes=num_classes,
        # Rare classes (pole, person) bring a handful of tokens per batch to their group's codes; a
        # higher threshold keeps re-seeding those codes every step (measured: ~10k re-seeds in 400
        # steps at 1.0, 744 in 500 at 0.1, and eval-set usage 91% -> 99%).
        threshold_dead=0.1,
        # A code that wins nothing for 20 steps (of ~256 tokens over 128 codes each) is re-seeded,
        # so the few codes k-means leaves unused come back within the first steps.
        max_idle_steps=20,
        # Group sizes follow the scenes' class frequencies (** 0.5), so the rare classes' groups are
        # small enough for their tokens to keep every code in use from the first steps.
        group_sizes="frequency" if num_classes else "equal",
        class_frequencies=_synthetic_class_frequencies(cfg.data, num_classes),
        min_codes_per_class=2,
        # Issue 24 (benchmarks/RESULTS.md): SGC's groups follow their error mass (every 10 steps) and
        # dead codes re-seed by splitting loaded cells: at K = 8192 held-out usage 56% -> 90%, at
        # K = 128 the same PSNR (+0.03 dB). The baselines keep their own re-seeding.
        rebalance_every=10 if num_classes else 0,
        reseed_split=bool(num_classes),
        disc_channels=32,
        disc_layers=2,
    )
    cfg.optim = dataclasses.replace(cfg.optim, lr=1e-3)
    cfg.train = dataclasses.replace(
        cfg.train, max_steps=steps, disc_start=10**9, ckpt_every=max(steps // 2, 1), keep_last=1
    )
    cfg.log = dataclasses.replace(cfg.log, every=5)
    return cfg


def smoke_config(num_classes: int | None = 9, max_steps: int = 4, ckpt_every: int = 2) -> Config:
    """A seconds-long configuration (32x32, a few thousand parameters) for tests and smoke checks."""
    cfg = demo_config(num_classes, max_steps)
    cfg.model = dataclasses.replace(cfg.model, base_channels=8, channel_mult=(1, 2, 2), embed_dim=8,
                                    codebook_size=32, kmeans_iters=2, disc_channels=8, disc_layers=1)
    cfg.data = dataclasses.replace(cfg.data, length=64, eval_length=8, batch_size=4, video_frames=3)
    cfg.train = dataclasses.replace(cfg.train, ckpt_every=ckpt_every, keep_last=3)
    cfg.log = dataclasses.replace(cfg.log, every=1, progress=False)
    return cfg
