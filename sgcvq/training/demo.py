"""`sgcvq train --demo`: SGC-VQGAN and the plain-VQ baseline on the synthetic street scenes, same
data and budget, then both evaluated side by side in one report.

Sized for about five minutes on a quiet 2-core CPU: DEMO_STEPS steps per model at 32x32, batch 16
(measured: see the README), plus about half a minute of evaluation and plotting.
"""
from __future__ import annotations

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

__all__ = ["run_demo", "DEMO_STEPS"]

DEMO_STEPS = 300
DEMO_EVAL_IMAGES = 128


def run_demo(out_dir: str | Path = "runs/demo", steps: int = DEMO_STEPS, overrides=None,
             progress: bool = True) -> Path:
    """Train both models, evaluate them and write `<out_dir>/report/report.html`; returns its path.

    overrides: `section.key=value` strings applied to both configs (e.g. train.max_steps=50).
    """
    from ..config import apply_overrides

    out = Path(out_dir)
    start = time.perf_counter()
    results, extra = {}, {}
    runs = (("SGC-VQGAN", "sgc", len(CLASS_NAMES)), ("plain VQ (baseline)", "baseline", None))
    for i, (name, sub, num_classes) in enumerate(runs, 1):
        cfg = apply_overrides(demo_config(num_classes, steps), overrides)
        cfg.log.progress = progress
        print(f"[{i}/2] training {name}: {cfg.train.max_steps} steps, {cfg.data.resolution}x"
              f"{cfg.data.resolution}, batch {cfg.data.batch_size}, K={cfg.model.codebook_size} -> {out / sub}",
              file=sys.stderr)
        result = Trainer(cfg, out / sub, overwrite=True).run()
        print(f"[{i}/2] {name}: {result.step} steps in {result.wall_s:.0f} s, last batch PSNR "
              f"{result.last_logs.get('psnr', float('nan')):.2f} dB", file=sys.stderr)
        model, cfg, state = load_tokenizer(result.checkpoint)
        print(f"[{i}/2] evaluating {name} on {DEMO_EVAL_IMAGES} held-out scenes and video clips", file=sys.stderr)
        results[name] = evaluate(model, cfg, torch.device("cpu"), max_images=DEMO_EVAL_IMAGES)
        extra[name] = {"train_steps": result.step, "train_wall_s": result.wall_s,
                       "skipped_files": result.skipped_files}
    notes = [f"Demo: both models trained on the same synthetic street scenes ({cfg.data.resolution}x"
             f"{cfg.data.resolution}, same seed, same data order) for the same number of steps; "
             f"total wall time {time.perf_counter() - start:.0f} s."]
    report = write_report(out / "report", results, extra, title="sgcvq demo: SGC-VQGAN vs plain VQ",
                          notes=notes)
    return report
