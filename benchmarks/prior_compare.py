"""The prior comparison for the demo's four tokenizers (sgcvq.prior.compare.run_comparison).

    python benchmarks/prior_compare.py --demo runs/demo --out benchmarks/out/prior [--judge J] [--quick]

--demo: a `sgcvq train --demo` folder (sgc/, baseline/, vqgan/, cvq/); or name runs with
--run NAME=FOLDER. Writes results.json, table.md, the figures and report.html into --out; with
--publish DIR, copies table.md and the PNG grids there too (benchmarks/results/prior/).
Budget: about 20 minutes on a quiet 2-core CPU for the four tokenizers (tokenizer training excluded).
--quick runs every step at toy sizes (a minute or two) to check the pipeline.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

DEMO_RUNS = (("SGC-VQGAN", "sgc"), ("plain VQ", "baseline"), ("VQGAN", "vqgan"), ("CVQ-VAE", "cvq"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=None, help="a demo folder holding sgc/, baseline/, vqgan/, cvq/")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER", help="a tokenizer run (repeatable)")
    ap.add_argument("--out", default="benchmarks/out/prior")
    ap.add_argument("--judge", default=None, help="reuse a judge .safetensors (else train one into --out)")
    ap.add_argument("--publish", default=None, help="copy table.md and the figures here")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline, not the numbers")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                    help="first take the finished tokenizers of these comparison folders (same settings and judge)")
    ap.add_argument("--fresh", action="store_true", help="recompute every tokenizer (default: keep those an "
                    "earlier run in --out finished with the same settings, judge and checkpoint)")
    args = ap.parse_args(argv)

    from sgcvq.prior.compare import CompareSettings, run_comparison
    from sgcvq.prior.judge import JudgeConfig

    runs = []
    if args.demo:
        runs += [(name, str(Path(args.demo) / sub)) for name, sub in DEMO_RUNS]
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--run {item!r} must be NAME=FOLDER")
        runs.append((name, path))
    if not runs:
        ap.error("give --demo or --run")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = CompareSettings()
    if args.quick:
        settings = CompareSettings(prior_steps=20, video_steps=20, layout_prior_steps=20, layouts=32, reference=64,
                                   seeds=(0,), edit_scenes=8, clips_train=16, eval_clips=8, bits_grids=8,
                                   judge=JudgeConfig(scenes=128, steps=20))
    if args.merge:
        from sgcvq.prior.compare import merge_partials

        print(f"merged: {merge_partials(args.out, args.merge)}", file=sys.stderr)
    start = time.perf_counter()
    print(f"prior comparison: {len(runs)} tokenizers, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average at start {os.getloadavg()[0]:.1f}", file=sys.stderr)
    run_comparison(runs, args.out, settings, judge_path=args.judge, resume=not args.fresh, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"total {time.perf_counter() - start:.0f} s, load average at end {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print((Path(args.out) / "table.md").read_text())
    if args.publish:
        dest = Path(args.publish)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("table.md", "layout_samples.png", "edits.png", "next_frames.png"):
            if (Path(args.out) / name).is_file():
                shutil.copy(Path(args.out) / name, dest / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
