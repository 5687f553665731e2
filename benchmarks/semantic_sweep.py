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

def _softmax(weight: float, *more: str) -> list[str]:
    """Overrides of the group loss's cross-entropy form (margin null) with weight λ, and more."""
    return ["model.group_loss_margin=null", f"model.group_loss_weight={weight}", *more]


def _hinge(weight: float, margin: float, *more: str) -> list[str]:
    """Overrides of the group loss's hinge form with weight λ and margin m, and more."""
    return [f"model.group_loss_weight={weight}", f"model.group_loss_margin={margin}", *more]


# The plain EMA-VQ baseline: no classes, equal (one) group.
_EMA = ["model.num_classes=null", "model.group_sizes=equal", "model.class_frequencies=null"]

# (name, overrides, what it tests). "ema" is the plain-VQ baseline (num_classes null). The group_* and
# decay_* variants are the cross-entropy form (margin null), the default before the hinge_* rows; the
# default now is hinge_l0.05_m1.
VARIANTS = {
    "ema": (_EMA, "EMA-VQ baseline (no groups)"),
    "sgc_base": (["model.group_loss_weight=0.0"], "SGC as before this study: groups, no semantic loss"),
    "centre_pull": (["model.semantic_loss_weight=0.1"], "class-centre pull λ=0.1 (docs/method.md §1.9)"),
    "group_l0.1": (_softmax(0.1), "group loss λ=0.1, τ=1"),
    "group_l1": (_softmax(1.0), "group loss λ=1, τ=1"),
    "group_l1_t0.3": (_softmax(1.0, "model.group_loss_temperature=0.3"), "group loss λ=1, τ=0.3"),
    "group_l1_warm": (_softmax(1.0, "model.group_loss_warmup=100"), "group loss λ=1, τ=1, warm-up 100 steps"),
    "group_l1_coarse2": (_softmax(1.0, "model.level_weights=[1.0, 2.0]"), "group loss λ=1, coarse level weight 2"),
    "group_l3": (_softmax(3.0), "group loss λ=3, τ=1"),
    "group_l0.03": (_softmax(0.03), "group loss λ=0.03, τ=1"),
    "group_l0.05": (_softmax(0.05), "group loss λ=0.05, τ=1"),
    "group_l0.05_pull": (_softmax(0.05, "model.semantic_loss_weight=0.1"),
                         "group loss λ=0.05 plus class-centre pull 0.1"),
    "group_l0.1_coarse": (_softmax(0.1, "model.group_loss_levels=coarse"),
                          "group loss λ=0.1, gradient into the coarse level only"),
    "group_l1_coarse": (_softmax(1.0, "model.group_loss_levels=coarse"),
                        "group loss λ=1, gradient into the coarse level only"),
    "group_l0.1_t3": (_softmax(0.1, "model.group_loss_temperature=3.0"), "group loss λ=0.1, τ=3 (softer)"),
    # λ that falls once the label-free groups have formed (ModelConfig.group_loss_decay_*)
    "decay_200_400": (_softmax(0.05, "model.group_loss_decay_start=200", "model.group_loss_decay_steps=200"),
                      "group loss λ=0.05, falls to 0 over steps 200-400"),
    "decay_l0.1_150_300": (_softmax(0.1, "model.group_loss_decay_start=150", "model.group_loss_decay_steps=150"),
                           "group loss λ=0.1, falls to 0 over steps 150-300"),
    "decay_250_350_to0.01": (_softmax(0.05, "model.group_loss_decay_start=250", "model.group_loss_decay_steps=100",
                                      "model.group_loss_final_weight=0.01"),
                             "group loss λ=0.05, falls to 0.01 over steps 250-350"),
    # hinge form: no gradient once a token's own group is nearer than any other by m errors
    "hinge_l0.05_m0.5": (_hinge(0.05, 0.5), "group loss hinge λ=0.05, margin 0.5"),
    "hinge_l0.2_m0.5": (_hinge(0.2, 0.5), "group loss hinge λ=0.2, margin 0.5"),
    "hinge_l0.2_m0.2": (_hinge(0.2, 0.2), "group loss hinge λ=0.2, margin 0.2"),
    "hinge_l0.1_m0.5": (_hinge(0.1, 0.5), "group loss hinge λ=0.1, margin 0.5"),
    "hinge_l0.05_m1": (_hinge(0.05, 1.0), "group loss hinge λ=0.05, margin 1"),
    "hinge_l0.02_m2": (_hinge(0.02, 2.0), "group loss hinge λ=0.02, margin 2"),
    "hinge_l0.05_m0.5_b0.1": (_hinge(0.05, 0.5, "model.commitment_weight=0.1"),
                              "group loss hinge λ=0.05, margin 0.5, β = 0.1"),
    "hinge_l0.05_m1_b0.1": (_hinge(0.05, 1.0, "model.commitment_weight=0.1"),
                            "group loss hinge λ=0.05, margin 1, β = 0.1"),
    # third round: where the hinge's gradient goes, a smaller λ, a later start
    "hinge_l0.05_m1_coarse": (_hinge(0.05, 1.0, "model.group_loss_levels=coarse"),
                              "group loss hinge λ=0.05, margin 1, gradient into the coarse level only"),
    "hinge_l0.1_m1_coarse": (_hinge(0.1, 1.0, "model.group_loss_levels=coarse"),
                             "group loss hinge λ=0.1, margin 1, gradient into the coarse level only"),
    "hinge_l0.04_m1": (_hinge(0.04, 1.0), "group loss hinge λ=0.04, margin 1"),
    "hinge_l0.05_m1_warm150": (_hinge(0.05, 1.0, "model.group_loss_warmup=150"),
                               "group loss hinge λ=0.05, margin 1, warm-up 150 steps"),
    "hinge_l0.05_m1_tok1024": (_hinge(0.05, 1.0, "model.group_loss_max_tokens=1024"),
                               "group loss hinge λ=0.05, margin 1, 1024 tokens a step"),
    "hinge_l0.05_m1_equal": (_hinge(0.05, 1.0, "model.group_sizes=equal"),
                             "group loss hinge λ=0.05, margin 1, equal group sizes (α = 0)"),
    "hinge_l0.05_m1_alpha0.25": (_hinge(0.05, 1.0, "model.group_sizes=[22, 13, 19, 10, 14, 11, 18, 9, 12]"),
                                 "group loss hinge λ=0.05, margin 1, group sizes ∝ frequency ** 0.25"),
    "ema_b0.1": ([*_EMA, "model.commitment_weight=0.1"], "EMA-VQ baseline, β = 0.1"),
    # group sizes ∝ class frequency ** α (the default α = 0.5 gives the rare classes more codes)
    "sgc_base_alpha1": (["model.group_loss_weight=0.0", "model.group_sizes=[48, 5, 30, 2, 9, 3, 24, 2, 5]"],
                        "SGC, no group loss, group sizes ∝ frequency (α = 1)"),
    "group_l0.05_alpha1": (["model.group_loss_margin=null", "model.group_sizes=[48, 5, 30, 2, 9, 3, 24, 2, 5]"],
                           "group loss λ=0.05, group sizes ∝ frequency (α = 1)"),
    # issue 24 (every row with today's default group loss: hinge λ = 0.05, m = 1)
    "sgc": ([], "SGC, today's defaults (fixed groups, token re-seeds)"),
    "split": (["model.reseed_split=true"], "SGC, re-seeds split a loaded cell (D² rule)"),
    "rebal": (["model.rebalance_every=10"], "SGC, group sizes follow error mass (every 10 steps)"),
    "rebal_split": (["model.rebalance_every=10", "model.reseed_split=true"], "SGC, rebalance every 10 + split re-seeds"),
    "rebal5_split": (["model.rebalance_every=5", "model.rebalance_rate=0.25", "model.reseed_split=true"],
                     "SGC, rebalance every 5 at rate 0.25 + split re-seeds"),
    "mixed0.75": (["model.label_min_share=0.75"], "SGC, boundary tokens (majority < 75%) search all codes"),
    "mixed0.75_rebal_split": (["model.label_min_share=0.75", "model.rebalance_every=10", "model.reseed_split=true"],
                              "SGC, boundary tokens search all codes + rebalance every 10 + split re-seeds"),
    "mixed1_rebal_split": (["model.label_min_share=1.0", "model.rebalance_every=10", "model.reseed_split=true"],
                           "SGC, only pure cells search their group + rebalance every 10 + split re-seeds"),
    "rebal_split_l0": (["model.rebalance_every=10", "model.reseed_split=true", "model.group_loss_weight=0.0"],
                       "SGC, rebalance every 10 + split re-seeds, no group loss"),
    "ema_split": ([*_EMA, "model.reseed_split=true"], "EMA-VQ, re-seeds split a loaded cell (D² rule)"),
}

KEYS = ("token_purity", "group_miou", "psnr", "psnr_label_free", "ssim", "active_code_fraction", "perplexity")


def run_variant(args: tuple) -> dict:
    name, steps, out, extra, seed = args
    import torch

    torch.set_num_threads(1)
    from sgcvq.config import apply_overrides, demo_config
    from sgcvq.data import CLASS_NAMES
    from sgcvq.tokenizer_io import load_tokenizer
    from sgcvq.training.evaluate import evaluate
    from sgcvq.training.loop import Trainer

    # a pool worker is a daemon process: it may not start DataLoader workers of its own
    overrides = VARIANTS[name][0] + list(extra) + ["data.num_workers=0"] + ([f"train.seed={seed}"] if seed else [])
    cfg = apply_overrides(demo_config(len(CLASS_NAMES), steps), overrides)
    cfg.log.progress = False
    cfg.log.tensorboard = False
    start = time.perf_counter()
    result = Trainer(cfg, Path(out) / (f"{name}_{steps}" + (f"_s{seed}" if seed else "")), overwrite=True).run()
    model, cfg, _ = load_tokenizer(result.checkpoint)
    ev = evaluate(model, cfg, torch.device("cpu"), max_images=128)
    row = {"variant": name, "steps": steps, "seed": seed, "overrides": overrides, "wall_s": time.perf_counter() - start}
    row.update({k: ev.metrics.get(k) for k in KEYS})
    offsets = getattr(model.quantizer, "class_offsets", None)
    if offsets is not None and offsets.numel() > 2:  # the group sizes at the end (they move with rebalancing)
        row["group_sizes"] = (offsets[1:] - offsets[:-1]).tolist()
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _fmt(v, f):
    return "n/a" if v is None else f.format(v)


def write_curve(out: Path, rows: list[dict]) -> None:
    """curve.csv and curve.png: PSNR − EMA-VQ, purity and mIoU against steps, for every variant that
    ran at two or more step counts with the EMA-VQ baseline beside it."""
    rows = [r for r in rows if r.get("seed", 0) == 0]  # one curve per variant: the first seed
    ema = {r["steps"]: r["psnr"] for r in rows if r["variant"] == "ema"}
    series = {}
    for r in rows:
        if r["variant"] != "ema" and r["steps"] in ema:
            series.setdefault(r["variant"], []).append(r)
    series = {v: sorted(rs, key=lambda r: r["steps"]) for v, rs in series.items() if len(rs) >= 2}
    if not series:
        return
    csv = ["variant,steps,psnr,psnr_ema,psnr_gap_db,token_purity,group_miou"]
    for v, rs in series.items():
        csv += [f"{v},{r['steps']},{r['psnr']:.4f},{ema[r['steps']]:.4f},{r['psnr'] - ema[r['steps']]:.4f},"
                f"{r['token_purity']:.4f},{r['group_miou']:.4f}" for r in rs]
    (out / "curve.csv").write_text("\n".join(csv) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for v, rs in series.items():
        steps = [r["steps"] for r in rs]
        axes[0].plot(steps, [r["psnr"] - ema[r["steps"]] for r in rs], marker="o", label=v)
        axes[1].plot(steps, [r["token_purity"] for r in rs], marker="o", label=f"{v}: purity")
        axes[1].plot(steps, [r["group_miou"] for r in rs], marker="s", linestyle="--", label=f"{v}: mIoU")
    axes[0].axhline(-0.30, color="grey", linestyle=":", label="floor −0.30 dB")
    axes[0].axhline(0.0, color="black", linewidth=0.5)
    axes[0].set_title("SGC PSNR − EMA-VQ PSNR, same steps (dB)", fontsize=10)
    axes[1].axhline(0.85, color="grey", linestyle=":")
    axes[1].axhline(0.50, color="grey", linestyle=":")
    axes[1].set_title("label-free purity (floor 0.85) and group mIoU (floor 0.50)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("training steps")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="300", help="training steps; a comma list runs each (a curve)")
    p.add_argument("--curve", default=None, help="alias of --steps for a metric-vs-steps curve")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    p.add_argument("--seeds", default="0", help="comma list of train.seed values (paired seeds: same for every variant)")
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
    seeds = [int(x) for x in args.seeds.split(",")]
    jobs = [(n, s, str(out / "runs"), args.extra, seed) for seed in seeds for s in steps for n in names]
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
    ran = {(x["variant"], x["steps"], x.get("seed", 0)) for x in rows}
    kept = [r for r in previous.get("rows", []) if (r["variant"], r["steps"], r.get("seed", 0)) not in ran]
    all_rows = sorted(kept + rows, key=lambda r: (r["steps"], r.get("seed", 0), list(VARIANTS).index(r["variant"])))
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": all_rows}, indent=1))
    psnr_ema = {(r["steps"], r.get("seed", 0)): r["psnr"] for r in all_rows if r["variant"] == "ema"}
    lines = ["| variant | what | steps | seed | label-free purity | group mIoU | PSNR (dB) | PSNR − EMA-VQ | "
             "PSNR label-free | active | perplexity |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in all_rows:
        key = (r["steps"], r.get("seed", 0))
        gap = r["psnr"] - psnr_ema[key] if key in psnr_ema else None
        lines.append(f"| {r['variant']} | {VARIANTS[r['variant']][1]} | {r['steps']} | {r.get('seed', 0)} | "
                     f"{_fmt(r['token_purity'], '{:.3f}')} | {_fmt(r['group_miou'], '{:.3f}')} | "
                     f"{r['psnr']:.2f} | {_fmt(gap, '{:+.2f}')} | {_fmt(r['psnr_label_free'], '{:.2f}')} | "
                     f"{r['active_code_fraction']:.1%} | {r['perplexity']:.1f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    write_curve(out, all_rows)
    print("\n".join(lines))
    print(f"wall {wall:.0f} s with {args.jobs} job(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
