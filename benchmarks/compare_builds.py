"""Side-by-side timing of two builds of the compiled extension (a no-regression check).

    python benchmarks/compare_builds.py OLD_ROOT NEW_ROOT [--rounds 5] [--env NAME=VALUE ...]

Each root is a checkout with its extension built in place (`python setup.py build_ext --inplace`).
Rounds alternate one fresh process per build (old, new, old, new, ...); each process loads that
root's `sgcvq/_C*.so` with `torch.ops.load_library` and times `torch.ops.sgcvq.nearest_code` on
the cases below, median of 3 calls after a warm-up. Prints each case's median over the rounds for
both builds and their ratio (new / old: below 1 is faster). `--env` settings apply to the new
build's processes only (e.g. SGCVQ_CPU_AVX2=0 to compare the same kernel family as an older build).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

CASES = [  # (name, N, K, D, groups, threads)
    ("(65536, 1024, 256), 2 threads", 65536, 1024, 256, 0, 2),
    ("(16384, 8192, 64), 2 threads", 16384, 8192, 64, 0, 2),
    ("(65536, 16384, 8), 2 threads", 65536, 16384, 8, 0, 2),
    ("semantic (32768, 8192, 8), 16 groups, 1 thread", 32768, 8192, 8, 16, 1),
    ("semantic (32768, 8192, 64), 16 groups, 1 thread", 32768, 8192, 64, 16, 1),
    ("taming init (16384, 1024, 64), 2 threads", 16384, 1024, 64, 0, 2),
]

CHILD = r"""
import glob, json, sys, time, statistics, torch
torch.ops.load_library(glob.glob(sys.argv[1] + "/sgcvq/_C*.so")[0])
cases, mode = json.loads(sys.argv[2]), sys.argv[3]
out = {}
for name, N, K, D, C, threads in cases:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    labels = offsets = None
    if C:
        labels = torch.randint(0, C, (N,), generator=g)
        offsets = torch.arange(0, K + 1, K // C)
    fn = lambda: torch.ops.sgcvq.nearest_code(x, e, labels, offsets, mode)
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    out[name] = statistics.median(ts) * 1e3
print(json.dumps(out))
"""


def run(root: str, env: dict, mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, root, json.dumps(CASES), mode], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", default="exact")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the new build's processes")
    args = ap.parse_args()
    for root in (args.old, args.new):
        if not glob.glob(os.path.join(root, "sgcvq", "_C*.so")):
            sys.exit(f"{root}: no sgcvq/_C*.so (build it in place first)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SGCVQ_")}
    new_env = dict(base, **dict(kv.split("=", 1) for kv in args.env))
    times = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for side, root, env in (("old", args.old, base), ("new", args.new, new_env)):
            for name, ms in run(root, env, args.mode).items():
                times[side].setdefault(name, []).append(ms)
    print(f"| case | old (ms) | new (ms) | new / old |\n| --- | ---: | ---: | ---: |")
    for name, *_ in CASES:
        o, n = statistics.median(times["old"][name]), statistics.median(times["new"][name])
        print(f"| {name} | {o:.1f} | {n:.1f} | {n / o:.3f} |")


if __name__ == "__main__":
    main()
