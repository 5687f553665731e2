"""Training step rate with the real data pipeline against the same loop fed one fixed batch.

    .venv/bin/python -m pytest benchmarks/test_bench_train.py -s                      # full: 123 steps a config
    SGCVQ_BENCH_QUICK=1 .venv/bin/python -m pytest benchmarks/test_bench_train.py -s  # CI: 9 steps a config, a smoke run

For configs/sgc_synthetic_64.yaml (all torch threads) and the demo's SGC model (`sgcvq train --demo`:
32x32 on a CPU, one intra-op thread; on a GPU the demo's GPU size), one Trainer runs, in this order
and in alternating blocks of the same number of steps:

* real, cold cache: batches from the run's BatchStream while the scene cache is empty, so every
  scene is painted as it is read (the first epoch of a machine's first run);
* fixed: the same loop, every step fed one batch that is already on the device (the model's own
  rate: no data work at all);
* real, warm cache: the stream rewound to the same items, now read from the SceneCache (every later
  epoch and every later run).

Each block's rate is steps / wall seconds; a row reports the median block. Images/s = batch x it/s.
On a GPU the peak memory of the run is reported. The floor (full mode): real with a warm cache
>= 90% of the fixed-batch rate. Rows go to benchmarks/out/train_rates.json.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

QUICK = os.environ.get("SGCVQ_BENCH_QUICK", "0") not in ("", "0")
ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out" / "train_rates.json"
BLOCK_STEPS = 2 if QUICK else 10
# A GPU step takes milliseconds: longer blocks there, so one block is not a handful of launches.
GPU_BLOCK_STEPS = 2 if QUICK else int(os.environ.get("SGCVQ_BENCH_TRAIN_GPU_STEPS", "30"))
# SGCVQ_BENCH_PROFILE=1: after the rates, a torch.profiler table of fixed-batch steps (where the
# model's own time goes: the rate the model allows).
PROFILE = os.environ.get("SGCVQ_BENCH_PROFILE", "0") == "1"
ROUNDS = 1 if QUICK else 3
WARMUP_STEPS = 1 if QUICK else 3
FLOOR = 0.90

_ROWS: list[dict] = []


class _FixedBatch:
    """A stand-in for the BatchStream that hands out one batch forever."""

    def __init__(self, batch):
        self.batch = batch

    def __next__(self):
        return self.batch


def _config(name: str, cache_dir: Path, device: torch.device):
    from sgcvq.config import load_config
    from sgcvq.training.demo import demo_run_config

    if name == "sgc_synthetic_64":
        cfg = load_config(ROOT / "configs" / "sgc_synthetic_64.yaml")
    else:
        cfg = demo_run_config(9, device)
    cfg.data.cache = str(cache_dir)
    if os.environ.get("SGCVQ_BENCH_TRAIN_WORKERS"):  # compare loader settings: "auto" or a count
        w = os.environ["SGCVQ_BENCH_TRAIN_WORKERS"]
        cfg.data.num_workers = w if w == "auto" else int(w)
    cfg.train.device = str(device)
    cfg.train.ckpt_every = 0
    cfg.log.progress = cfg.log.csv = cfg.log.tensorboard = False
    return cfg


def _block(trainer, steps: int, sync) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    return steps / (time.perf_counter() - start)


def _profile(trainer, fixed, device, sync, steps: int = 8):
    """Prints the top operators of `steps` fixed-batch steps by device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    trainer.stream = fixed
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            trainer.train_step()
        sync()
    keys = ["self_device_time_total", "self_cuda_time_total"] if device.type == "cuda" else ["self_cpu_time_total"]
    for key in keys:  # torch renamed cuda -> device in the profiler's columns; try both
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60)
        except (AttributeError, KeyError, ValueError):
            continue
        print(f"\nprofile of {steps} fixed-batch steps, by {key}:\n{table}")
        break


@pytest.mark.parametrize("name", ["sgc_synthetic_64", "demo"])
def test_real_pipeline_vs_fixed_batch(name, tmp_path):
    from sgcvq.training import Trainer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if name == "demo" and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as run_demo does on a CPU
    try:
        cfg = _config(name, tmp_path / "cache", device)
        trainer = Trainer(cfg, tmp_path / "run")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        steps = GPU_BLOCK_STEPS if device.type == "cuda" else BLOCK_STEPS
        stream = trainer.stream
        fixed = _FixedBatch(next(stream))  # already on the device
        _block(trainer, WARMUP_STEPS, sync)
        start_pos = (stream.epoch, stream.batch_in_epoch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        rates = {"real, cold cache": [], "fixed batch": [], "real, warm cache": []}
        for _ in range(ROUNDS):
            trainer.stream = stream
            rates["real, cold cache"].append(_block(trainer, steps, sync))
            trainer.stream = fixed
            rates["fixed batch"].append(_block(trainer, steps, sync))
        # Rewind: the same items again, now from the cache.
        stream.epoch, stream.batch_in_epoch = start_pos
        stream._it = None
        for _ in range(ROUNDS):
            trainer.stream = stream
            rates["real, warm cache"].append(_block(trainer, steps, sync))
            trainer.stream = fixed
            rates["fixed batch"].append(_block(trainer, steps, sync))
        if PROFILE:
            _profile(trainer, fixed, device, sync)
        trainer.stream = stream
        stream.close()

        bs = cfg.data.batch_size
        fixed_rate = statistics.median(rates["fixed batch"])
        where = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
        mem = round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None
        print(f"\n{name} on {where} ({cfg.data.resolution}x{cfg.data.resolution}, batch {bs}, "
              f"{trainer.loader.describe()}; load {os.getloadavg()[0]:.2f}):")
        for provider, values in rates.items():
            rate = statistics.median(values)
            row = {"config": name, "provider": provider, "device": where, "it_per_s": round(rate, 3),
                   "images_per_s": round(rate * bs, 1), "of_fixed": round(rate / fixed_rate, 3),
                   "blocks": [round(v, 3) for v in values], "block_steps": steps,
                   "loader": trainer.loader.describe(), "resolution": cfg.data.resolution, "batch": bs,
                   "gpu_peak_mb": mem, "load_avg_1m": round(os.getloadavg()[0], 2), "quick": QUICK}
            _ROWS.append(row)
            print(f"  {provider:17s} {rate:7.2f} it/s {rate * bs:8.1f} images/s  {rate / fixed_rate:6.1%} of fixed"
                  + (f"  peak {mem} MB" if mem is not None else ""))
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps(_ROWS, indent=1))
        warm = statistics.median(rates["real, warm cache"]) / fixed_rate
        if not QUICK:
            assert warm >= FLOOR, f"{name}: the real pipeline (warm cache) runs at {warm:.1%} of the fixed-batch rate"
    finally:
        torch.set_num_threads(threads)
