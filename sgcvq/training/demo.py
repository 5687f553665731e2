"""`sgcvq train --demo`: SGC-VQGAN and the plain-VQ baseline on the synthetic street scenes, same
data and budget, then both evaluated side by side in one report.

Sized for about five minutes on a quiet 2-core CPU: DEMO_STEPS steps per model at 32x32, batch 16,
plus a few seconds of evaluation and plotting (measured on the shared 2-core machine: 293
CPU-seconds and 5 min 49 s wall for the whole demo; about 0.3 CPU-seconds per training step).

The demo runs on one intra-op thread unless OMP_NUM_THREADS is set: its convolutions are so small
that a second thread costs more in synchronisation than it gains (measured on the 2-core machine:
0.29 CPU-s and 0.43 s wall per step on one thread, 1.3 CPU-s and 1.9 s wall on two).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ..config import demo_config
from ..data import CLASS_NAMES
from ..report import write_report
from ..tokenizer_io import load_tokenizer
from .evaluate import evaluate
from .loop import Trainer

__all__ = ["run_demo", "DEMO_STEPS", "DEMO_GPU_STEPS", "demo_run_config"]

DEMO_STEPS = 500
DEMO_EVAL_IMAGES = 128
# (report column, run folder, model.quantizer): the same encoder/decoder, data, steps and seed for each.
DEMO_MODELS = (("SGC-VQGAN", "sgc", "sgc"), ("plain VQ (baseline)", "baseline", "ema"),
               ("VQGAN", "vqgan", "vqgan"), ("CVQ-VAE", "cvq", "cvq"))
# On a GPU: the same four models at 64x64 (16x16 tokens), batch 32, this many steps each. On an
# H100 (2026-11-28, benchmarks/RESULTS.md) SGC ran ~15 it/s and the others ~22 it/s, so 800 steps
# each take ~50 s and ~35 s: the four, evaluation included, in about 3.5 minutes.
DEMO_GPU_STEPS = 800
# A guard, not the plan: each GPU model stops at this wall time even short of DEMO_GPU_STEPS (a
# slow or shared GPU); the report lists the steps each model got, and a model cut short says so.
DEMO_GPU_TIME_LIMIT_S = 75.0
DEMO_GPU_RESOLUTION = 64


def demo_run_config(num_classes: int | None, device: torch.device, steps: int | None = None):
    """The demo's config on `device`: demo_config (32x32, batch 16, DEMO_STEPS) on a CPU; on a GPU the
    same models at DEMO_GPU_RESOLUTION, batch 32, DEMO_GPU_STEPS steps, 4096 scenes and 256 held out."""
    import dataclasses

    from ..data import SyntheticStreetScenes

    if device.type != "cuda":
        return demo_config(num_classes, steps or DEMO_STEPS)
    cfg = demo_config(num_classes, steps or DEMO_GPU_STEPS)
    res = DEMO_GPU_RESOLUTION
    cfg.data = dataclasses.replace(cfg.data, resolution=res, length=4096, eval_length=256, batch_size=32)
    freqs = None
    if num_classes:
        freqs = tuple(SyntheticStreetScenes(cfg.data.length, res, cfg.data.seed).class_frequencies(num_images=64))
    cfg.model = dataclasses.replace(cfg.model, resolution=res, class_frequencies=freqs)
    cfg.log = dataclasses.replace(cfg.log, every=25)
    # A guard, not the plan: a slow or shared GPU stops each model at DEMO_GPU_TIME_LIMIT_S (with a
    # checkpoint; the report lists the steps each model got).
    cfg.train = dataclasses.replace(cfg.train, time_limit_s=DEMO_GPU_TIME_LIMIT_S)
    return cfg


def run_demo(out_dir: str | Path = "runs/demo", steps: int | None = None, overrides=None,
             progress: bool = True) -> Path:
    """Train the demo's models, evaluate them and write `<out_dir>/report/report.html`; returns its path.

    steps: per model; None = DEMO_STEPS on a CPU, DEMO_GPU_STEPS on a GPU (see demo_run_config).
    overrides: `section.key=value` strings applied to both configs (e.g. train.max_steps=50).
    """
    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ and _demo_device(overrides).type == "cpu":
        torch.set_num_threads(1)
    try:
        return _run_demo(Path(out_dir), steps, overrides, progress)
    finally:
        torch.set_num_threads(threads)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"the CPU ({torch.get_num_threads()} thread(s))"


def _demo_device(overrides) -> torch.device:
    from ..config import apply_overrides
    from .process_group import resolve_device

    return resolve_device(apply_overrides(demo_config(None, 1), overrides).train.device)


def _train_and_evaluate(i: int, n: int, name: str, sub: str, kind: str, out: Path, steps: int | None, overrides,
                        progress: bool, parallel: bool):
    """Train one demo model (model.quantizer=kind) and evaluate it: (EvalResult, extra metrics, resolution)."""
    from ..config import apply_overrides

    if parallel:  # one of `jobs` processes on the CPU: one thread, no loader workers, no progress bars
        torch.set_num_threads(1)
        overrides = [*(overrides or []), "data.num_workers=0"]
    device = _demo_device(overrides)
    num_classes = len(CLASS_NAMES) if kind == "sgc" else None
    cfg = apply_overrides(demo_run_config(num_classes, device, steps), [f"model.quantizer={kind}", *(overrides or [])])
    cfg.log.progress = progress and not parallel
    print(f"[{i}/{n}] training {name}: {cfg.train.max_steps} steps, {cfg.data.resolution}x"
          f"{cfg.data.resolution}, batch {cfg.data.batch_size}, K={cfg.model.codebook_size} -> {out / sub}",
          file=sys.stderr, flush=True)
    result = Trainer(cfg, out / sub, overwrite=True).run()
    print(f"[{i}/{n}] {name}: {result.step} steps in {result.wall_s:.0f} s, last batch PSNR "
          f"{result.last_logs.get('psnr', float('nan')):.2f} dB", file=sys.stderr, flush=True)
    model, cfg, state = load_tokenizer(result.checkpoint, device)
    eval_images = DEMO_EVAL_IMAGES if device.type == "cpu" else cfg.data.eval_length
    print(f"[{i}/{n}] evaluating {name} on {eval_images} held-out scenes and video clips", file=sys.stderr, flush=True)
    evaluated = evaluate(model, cfg, device, max_images=eval_images)
    extra = {"train_steps": result.step, "train_wall_s": result.wall_s, "skipped_files": result.skipped_files}
    return evaluated, extra, cfg.data.resolution


def _demo_jobs(device: torch.device) -> int:
    """Demo models trained at once: on a CPU one per core (at most two), each on one thread; on a GPU one."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return 1
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _run_demo(out: Path, steps: int | None, overrides, progress: bool) -> Path:
    start = time.perf_counter()
    device = _demo_device(overrides)
    jobs = _demo_jobs(device)
    n = len(DEMO_MODELS)
    work = [(i, n, name, sub, kind, out, steps, overrides, progress, jobs > 1)
            for i, (name, sub, kind) in enumerate(DEMO_MODELS, 1)]
    if jobs > 1:
        import multiprocessing as mp

        print(f"sgcvq demo: {n} models, {jobs} at a time (one CPU thread each)", file=sys.stderr)
        with mp.get_context("spawn").Pool(jobs) as pool:
            done = pool.starmap(_train_and_evaluate, work, chunksize=1)
    else:
        done = [_train_and_evaluate(*job) for job in work]
    results = {name: ev for (name, _, _), (ev, _, _) in zip(DEMO_MODELS, done)}
    extra = {name: ex for (name, _, _), (_, ex, _) in zip(DEMO_MODELS, done)}
    resolution = done[0][2]
    notes = [f"Demo: {', '.join(results)} trained on the same synthetic street scenes ({resolution}x{resolution}, "
             f"same encoder/decoder, seed and data order) for the same number of steps on "
             f"{_device_name(device)}, {jobs} model(s) at a time; total wall time "
             f"{time.perf_counter() - start:.0f} s.",
             "Quantizers: SGC-VQGAN = class-grouped EMA codebook with the group loss; plain VQ = EMA codebook "
             "with k-means start and dead-code re-seeding; VQGAN = taming's gradient-learned codebook "
             "(no EMA, no re-seeding, init uniform(-1/K, 1/K)); CVQ-VAE = gradient-learned codebook with "
             "anchored re-initialisation of rarely used codes."]
    report = write_report(out / "report", results, extra, title="sgcvq demo: SGC-VQGAN vs its baselines",
                          notes=notes)
    return report
