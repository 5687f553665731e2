"""What makes SGC's tokens carry semantics without labels: variants of the demo, same budget.

Every variant is the demo's SGC model (`sgcvq.config.demo_config`, 32x32 synthetic scenes, K = 128,
same seed and data order) with a few `model.*` overrides, trained for --steps steps and evaluated
on the demo's 128 held-out scenes. The EMA-VQ baseline runs beside them for the PSNR comparison.
Label-free purity and group mIoU come from a search over all codes with no labels.

    python benchmarks/semantic_sweep.py --steps 300 --jobs 2 --out benchmarks/results/semantic_sweep
    python benchmarks/semantic_sweep.py --variants group_l1 --curve 100,200,300,500   # metric vs steps

Writes <out>/results.json and <out>/table.md (one row per variant and step count).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

# (name, overrides, what it tests). "ema" is the plain-VQ baseline (num_classes null).
VARIANTS = {
    "ema": (["model.num_classes=null", "model.group_sizes=equal", "model.class_frequencies=null"],
            "EMA-VQ baseline (no groups)"),
    "sgc_base": (["model.group_loss_weight=0.0"], "SGC as before this study: groups, no semantic loss"),
    "centre_pull": (["model.semantic_loss_weight=0.1"], "class-centre pull λ=0.1 (DESIGN §1.9)"),
    "group_l0.1": (["model.group_loss_weight=0.1"], "group loss λ=0.1, τ=1"),
    "group_l1": (["model.group_loss_weight=1.0"], "group loss λ=1, τ=1"),
    "group_l1_t0.3": (["model.group_loss_weight=1.0", "model.group_loss_temperature=0.3"],
                      "group loss λ=1, τ=0.3"),
    "group_l1_warm": (["model.group_loss_weight=1.0", "model.group_loss_warmup=100"],
                      "group loss λ=1, τ=1, warm-up 100 steps"),
    "group_l1_coarse2": (["model.group_loss_weight=1.0", "model.level_weights=[1.0, 2.0]"],
                         "group loss λ=1, coarse level weight 2"),
    "group_l3": (["model.group_loss_weight=3.0"], "group loss λ=3, τ=1"),
    "group_l0.03": (["model.group_loss_weight=0.03"], "group loss λ=0.03, τ=1"),
    "group_l0.05": (["model.group_loss_weight=0.05"], "group loss λ=0.05, τ=1"),
    "group_l0.05_pull": (["model.group_loss_weight=0.05", "model.semantic_loss_weight=0.1"],
                         "group loss λ=0.05 plus class-centre pull 0.1"),
    "group_l0.1_coarse": (["model.group_loss_weight=0.1", "model.group_loss_levels=coarse"],
                          "group loss λ=0.1, gradient into the coarse level only"),
    "group_l1_coarse": (["model.group_loss_weight=1.0", "model.group_loss_levels=coarse"],
                        "group loss λ=1, gradient into the coarse level only"),
    "group_l0.1_t3": (["model.group_loss_weight=0.1", "model.group_loss_temperature=3.0"],
                      "group loss λ=0.1, τ=3 (softer)"),
}

KEYS = ("token_purity", "group_miou", "psnr", "psnr_label_free", "active_code_fraction", "perplexity")


def run_variant(args: tuple) -> dict:
    name, steps, out, extra = args
    import torch

    torch.set_num_threads(1)
    from sgcvq.config import apply_overrides, demo_config
    from sgcvq.data import CLASS_NAMES
    from sgcvq.tokenizer_io import load_tokenizer
    from sgcvq.training.evaluate import evaluate
    from sgcvq.training.loop import Trainer

    # a pool worker is a daemon process: it may not start DataLoader workers of its own
    overrides = VARIANTS[name][0] + list(extra) + ["data.num_workers=0"]
    cfg = apply_overrides(demo_config(len(CLASS_NAMES), steps), overrides)
    cfg.log.progress = False
    cfg.log.tensorboard = False
    start = time.perf_counter()
    result = Trainer(cfg, Path(out) / f"{name}_{steps}", overwrite=True).run()
    model, cfg, _ = load_tokenizer(result.checkpoint)
    ev = evaluate(model, cfg, torch.device("cpu"), max_images=128)
    row = {"variant": name, "steps": steps, "overrides": overrides, "wall_s": time.perf_counter() - start}
    row.update({k: ev.metrics.get(k) for k in KEYS})
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _fmt(v, f):
    return "n/a" if v is None else f.format(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="300", help="training steps; a comma list runs each (a curve)")
    p.add_argument("--curve", default=None, help="alias of --steps for a metric-vs-steps curve")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    p.add_argument("--set", dest="extra", nargs="*", default=[], help="extra overrides for every variant")
    p.add_argument("--out", default="benchmarks/results/semantic_sweep")
    args = p.parse_args(argv)
    steps = [int(s) for s in (args.curve or args.steps).split(",")]
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(n, s, str(out / "runs"), args.extra) for s in steps for n in names]
    start = time.perf_counter()
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.map(run_variant, jobs, chunksize=1)
    else:
        rows = [run_variant(j) for j in jobs]
    wall = time.perf_counter() - start
    meta = {"cpu": platform.processor() or platform.machine(), "load_before": os.getloadavg(),
            "jobs": args.jobs, "wall_s": wall, "extra_overrides": args.extra}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    kept = [r for r in previous.get("rows", []) if (r["variant"], r["steps"]) not in {(x["variant"], x["steps"])
                                                                                         for x in rows}]
    all_rows = sorted(kept + rows, key=lambda r: (r["steps"], list(VARIANTS).index(r["variant"])))
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": all_rows}, indent=1))
    psnr_ema = {r["steps"]: r["psnr"] for r in all_rows if r["variant"] == "ema"}
    lines = ["| variant | what | steps | label-free purity | group mIoU | PSNR (dB) | PSNR − EMA-VQ | "
             "PSNR label-free | active | perplexity |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in all_rows:
        gap = r["psnr"] - psnr_ema[r["steps"]] if r["steps"] in psnr_ema else None
        lines.append(f"| {r['variant']} | {VARIANTS[r['variant']][1]} | {r['steps']} | "
                     f"{_fmt(r['token_purity'], '{:.3f}')} | {_fmt(r['group_miou'], '{:.3f}')} | "
                     f"{r['psnr']:.2f} | {_fmt(gap, '{:+.2f}')} | {_fmt(r['psnr_label_free'], '{:.2f}')} | "
                     f"{r['active_code_fraction']:.1%} | {r['perplexity']:.1f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wall {wall:.0f} s with {args.jobs} job(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
