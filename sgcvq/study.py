"""`sgcvq study usage-vs-k`: codebook use and label-free semantics of each quantizer against K.

Every run is the demo's model (`sgcvq.config.demo_config`: 32x32 synthetic street scenes, the same
encoder, pyramid and decoder, seed and data order) with one quantizer (`model.quantizer`: vqgan,
cvq, ema, sgc) and one codebook size K, trained for the same number of steps, then evaluated on the
same held-out scenes. `study_config` says what differs from the demo so that K = 8192 can be measured
at all (more held-out scenes, re-seeding scaled with K, SGC's groups sized by token frequency).
Per run it records:

* active codes, training: fraction of codes that took a token in the last 100 training steps
  (the quantizer's own counter; 100 steps x 16 images x 64 tokens = 102400 assignments, 12.5 per
  code at K = 8192);
* active codes, eval: fraction of codes used by the eval set's tokens (as trained: SGC searches
  the token's class group); the eval set is eval_images held-out scenes of 64 tokens (default 2048
  scenes: 131072 tokens, 16 per code at K = 8192; with the demo's 128 scenes, 8192 tokens, K = 8192
  could not be fully used by construction);
* perplexity of the eval set's code distribution (exp entropy; K when all codes are used equally);
* label-free token purity (every model searches all K codes, no labels).

Runs go `jobs` at a time in separate processes with one thread each. Results: results.json,
table.md and usage_vs_k.png in the output folder; rows of an earlier call into the same folder with
the same steps, eval images and overrides are kept (so quantizers can be run one call each).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

__all__ = ["STUDY_QUANTIZERS", "study_config", "run_usage_vs_k", "write_study"]

STUDY_QUANTIZERS = ("vqgan", "cvq", "ema", "sgc")
LABELS = {"vqgan": "VQGAN (taming)", "cvq": "CVQ-VAE-style", "ema": "EMA-VQ", "sgc": "SGC-VQ"}


def token_class_frequencies(data_cfg, factor: int, num_classes: int, num_images: int = 64) -> list[float]:
    """Frequency of each class among the *token* labels (majority of each factor x factor cell) of the
    first `num_images` training scenes. Thin classes (poles, persons) are the majority of far fewer
    cells than their pixel share says (pole: 1.8% of the pixels, 0.3% of the tokens at f = 4)."""
    import numpy as np
    import torch

    from .data.synthetic import draw_street_scene
    from .metrics import pixel_to_token_labels

    counts = np.zeros(num_classes)
    for index in range(num_images):
        _, labels = draw_street_scene(data_cfg.seed, index, data_cfg.resolution, 1)
        tokens = pixel_to_token_labels(torch.from_numpy(labels).long(), factor, num_classes)
        counts += np.bincount(tokens[tokens >= 0].numpy().ravel(), minlength=num_classes)[:num_classes]
    return (counts / max(counts.sum(), 1.0)).tolist()


def scaled_reseeding(tokens_per_step: int, codebook_size: int) -> tuple[float, int]:
    """(threshold_dead, max_idle_steps) for K codes fed `tokens_per_step` tokens a step.

    The demo's values (0.1, 20) are tuned at K = 128 and 1024 tokens a step: 8 tokens per code per
    step, threshold 1/80 of that. Kept as absolute numbers at K = 8192 (0.125 tokens per code per
    step) they call about half the codes dead at every step, so codes that win a token every few
    steps are torn away and re-seeded (940k re-seeds in 300 steps were measured). Scaled: the
    threshold keeps its ratio to the expected count, and a code is idle-dead only after a window in
    which it would expect at least 5 tokens.
    """
    rate = tokens_per_step / codebook_size
    return 0.1 * rate / 8.0, max(20, math.ceil(5.0 / rate))


def study_config(kind: str, codebook_size: int, steps: int, overrides: list[str] | None = None,
                 eval_images: int = 2048):
    """The demo's Config with `model.quantizer=kind` and K = codebook_size, for codebook use at any K.

    Three settings differ from the demo (each kind gets the same): data.eval_length = eval_images
    held-out scenes (2048 scenes = 131072 tokens, 16 per code at K = 8192: the paper measures usage
    over a validation set far larger than K); threshold_dead and max_idle_steps scaled with K
    (`scaled_reseeding`); and for SGC the group sizes follow the classes' *token* frequencies with
    α = 1 (every code the same expected share of tokens; the demo's α = 0.5 on pixel frequencies
    gives the pole group 430 codes at K = 8192 for ~3 tokens a step, so most of them can never be
    used, whatever the quantizer does).
    """
    from .config import apply_overrides, demo_config
    from .data import CLASS_NAMES
    from .semantic import group_sizes_for

    num_classes = len(CLASS_NAMES) if kind == "sgc" else None
    cfg = demo_config(num_classes, steps)
    threshold, idle = scaled_reseeding(cfg.data.batch_size * (cfg.data.resolution // cfg.model.downsample_factor) ** 2,
                                       codebook_size)
    scaled = [f"data.eval_length={eval_images}", f"model.threshold_dead={threshold!r}", f"model.max_idle_steps={idle}"]
    if num_classes:
        freqs = token_class_frequencies(cfg.data, cfg.model.downsample_factor, num_classes)
        sizes = group_sizes_for(num_classes, codebook_size, "frequency", freqs, cfg.model.min_codes_per_class, 1.0)
        scaled.append(f"model.group_sizes={list(sizes)}")
    cfg = apply_overrides(cfg, [f"model.quantizer={kind}", f"model.codebook_size={codebook_size}", *scaled,
                                *(overrides or [])])
    cfg.log.progress = False
    cfg.log.tensorboard = False
    cfg.train.ckpt_every = 0  # one checkpoint, at the end
    return cfg


def _run_one(job: tuple) -> dict:
    kind, K, steps, out, eval_images, overrides = job
    import torch

    torch.set_num_threads(1)
    from .training.evaluate import evaluate
    from .training.loop import Trainer, quantizer_scalars

    # a pool worker is a daemon process: it may not start DataLoader workers of its own
    cfg = study_config(kind, K, steps, [*overrides, "data.num_workers=0"], eval_images=eval_images)
    start = time.perf_counter()
    trainer = Trainer(cfg, Path(out) / f"{kind}_K{K}", overwrite=True)
    result = trainer.run()
    train_s = time.perf_counter() - start
    vq = quantizer_scalars(trainer.model.quantizer)
    # few video clips: the study reports no temporal metric, and painting 4-frame clips costs time
    ev = evaluate(trainer.model, cfg, torch.device("cpu"), max_images=eval_images, video_clips=4)
    m = ev.metrics
    row = {"quantizer": kind, "K": K, "steps": result.step, "train_s": train_s,
           "active_train": vq.get("active_fraction"), "active_eval": m["active_code_fraction"],
           "active_eval_label_free": m["active_code_fraction_label_free"], "perplexity_eval": m["perplexity"],
           "token_purity_label_free": m.get("token_purity"), "group_miou_label_free": m.get("group_miou"),
           "psnr": m["psnr"], "eval_tokens": int(ev.counts.sum())}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def run_usage_vs_k(out_dir: str | Path, ks=(128, 1024, 8192), kinds=STUDY_QUANTIZERS, steps: int = 300,
                   jobs: int = 2, eval_images: int = 2048, overrides: list[str] | None = None) -> list[dict]:
    """Train and evaluate every (quantizer, K); write results.json, table.md, usage_vs_k.png; return the rows."""
    for kind in kinds:
        if kind not in STUDY_QUANTIZERS:
            raise ValueError(f"study: quantizer {kind!r} is not one of {STUDY_QUANTIZERS}")
    if steps < 1 or jobs < 1 or eval_images < 1 or not ks or min(ks) < 9:
        raise ValueError(f"study: steps={steps}, jobs={jobs}, eval_images={eval_images} must be >= 1 and every "
                         f"K in {list(ks)} >= 9 (one code per class)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the largest K first, so the slowest runs do not end up alone at the end
    work = [(kind, K, steps, str(out / "runs"), eval_images, list(overrides or []))
            for K in sorted(ks, reverse=True) for kind in kinds]
    start = time.perf_counter()
    load = os.getloadavg()
    if jobs > 1:
        with mp.get_context("spawn").Pool(jobs) as pool:
            rows = pool.map(_run_one, work, chunksize=1)
    else:
        rows = [_run_one(job) for job in work]
    # runs of an earlier call with the same settings stay in the table unless run again
    previous = out / "results.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        same = {k: old["meta"].get(k) for k in ("steps", "eval_images", "overrides")} == {
            "steps": steps, "eval_images": eval_images, "overrides": list(overrides or [])}
        ran = {(r["quantizer"], r["K"]) for r in rows}
        if same:
            rows += [r for r in old["rows"] if (r["quantizer"], r["K"]) not in ran]
    rows.sort(key=lambda r: (r["K"], list(STUDY_QUANTIZERS).index(r["quantizer"])))
    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_at_start": load, "jobs": jobs, "steps": steps, "eval_images": eval_images,
            "overrides": list(overrides or []), "wall_s": time.perf_counter() - start}
    write_study(out, rows, meta)
    return rows


def write_study(out: Path, rows: list[dict], meta: dict) -> None:
    """results.json, table.md and usage_vs_k.png from the study's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    def f(v, fmt):
        return "n/a" if v is None else fmt.format(v)

    lines = ["| quantizer | K | active codes, last 100 training steps | active codes, eval (as trained) | "
             "perplexity, eval | label-free token purity | PSNR (dB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {LABELS[r['quantizer']]} | {r['K']} | {f(r['active_train'], '{:.1%}')} | "
                     f"{r['active_eval']:.1%} | {r['perplexity_eval']:.1f} | "
                     f"{f(r['token_purity_label_free'], '{:.3f}')} | {r['psnr']:.2f} |")
    lines.append("")
    # the eval set is min(eval_images, data.eval_length) scenes: say what was measured, in tokens
    lines.append(f"{meta['steps']} training steps per run; eval tokens per run: "
                 f"{sorted({r['eval_tokens'] for r in rows})}; {meta['jobs']} runs at a time, "
                 f"{meta['wall_s']:.0f} s wall for the last call.")
    (out / "table.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    kinds = [k for k in STUDY_QUANTIZERS if any(r["quantizer"] == k for r in rows)]
    panels = (("active_train", "active codes (last 100 training steps)", False),
              ("perplexity_eval", "perplexity (eval)", True),
              ("token_purity_label_free", "label-free token purity", False))
    for ax, (key, title, logy) in zip(axes, panels):
        for kind in kinds:
            pts = sorted((r["K"], r[key]) for r in rows if r["quantizer"] == kind and r[key] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS[kind])
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"codebook use vs K ({meta['steps']} steps per run, demo model, synthetic scenes)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "usage_vs_k.png", dpi=100)
    plt.close(fig)
