"""Issue 24: the paired-seed summary of a semantic_sweep results.json (mean and range over seeds).

    python benchmarks/issue24_summary.py benchmarks/results/issue24/results.json

For every (variant, steps) with runs at several train.seed values: mean PSNR (as trained and label-free),
SSIM, label-free purity and group mIoU, and the PSNR/SSIM difference to EMA-VQ on the *same* seeds
(paired), with its min..max over the seeds. Prints a Markdown table.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from statistics import mean


def summarise(rows: list[dict]) -> list[str]:
    ema = {(r["steps"], r.get("seed", 0)): r for r in rows if r["variant"] == "ema"}
    groups = defaultdict(list)
    for r in rows:
        groups[(r["variant"], r["steps"])].append(r)

    def m(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return mean(vals) if vals else None

    def f(v, fmt):
        return "n/a" if v is None else fmt.format(v)

    lines = ["| variant | steps | seeds | PSNR (dB) | PSNR label-free | SSIM | ΔPSNR vs EMA-VQ, paired (min..max) | "
             "ΔPSNR label-free | ΔSSIM | label-free purity | group mIoU | active (eval) |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (variant, steps), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0] != "ema", kv[0][0])):
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        paired = [(r, ema[(steps, r.get("seed", 0))]) for r in rs if (steps, r.get("seed", 0)) in ema]
        gaps = [r["psnr"] - e["psnr"] for r, e in paired]
        free = [r["psnr_label_free"] - e["psnr_label_free"] for r, e in paired]
        dssim = [r["ssim"] - e["ssim"] for r, e in paired if r.get("ssim") is not None and e.get("ssim") is not None]
        gap = f"{mean(gaps):+.2f} ({min(gaps):+.2f}..{max(gaps):+.2f})" if gaps and variant != "ema" else "0"
        lines.append(
            f"| {variant} | {steps} | {','.join(str(r.get('seed', 0)) for r in rs)} | {f(m(rs, 'psnr'), '{:.2f}')} | "
            f"{f(m(rs, 'psnr_label_free'), '{:.2f}')} | {f(m(rs, 'ssim'), '{:.3f}')} | {gap} | "
            f"{f(mean(free) if free and variant != 'ema' else None, '{:+.2f}')} | "
            f"{f(mean(dssim) if dssim and variant != 'ema' else None, '{:+.3f}')} | "
            f"{f(m(rs, 'token_purity'), '{:.3f}')} | {f(m(rs, 'group_miou'), '{:.3f}')} | "
            f"{f(m(rs, 'active_code_fraction'), '{:.1%}')} |")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rows = json.loads(open(argv[0]).read())["rows"]
    print("\n".join(summarise(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
