"""Time of the grouped search against the size of the class groups (one thread, D=8 by default).

    python benchmarks/group_sweep.py [--threads 1] [--dim 8]

N = 65536 tokens over C groups of g codes (C * g = 16384), labels uniform: the per-token cost of a
search over g codes, which is what the semantic search's ratio to the full search comes down to.
Calls torch.ops.sgcvq.nearest_code directly (no Python value checks), best of 10.
"""
import argparse
import time

import torch

from sgcvq import ops  # loads torch.ops.sgcvq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=8)
    args = ap.parse_args()
    if not ops.HAS_CPU_EXTENSION:
        raise SystemExit("group_sweep.py times the CPU kernels: build them first (python setup.py build_ext --inplace)")
    torch.set_num_threads(args.threads)
    N, D = 65536, args.dim
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    for g in (16, 64, 256, 1024, 4096, 16384):
        C = 16384 // g
        cb = torch.randn(C * g, D)
        labels, offsets = torch.randint(0, C, (N,)), torch.arange(C + 1) * g
        fn = lambda: torch.ops.sgcvq.nearest_code(x, cb, labels, offsets, "exact")  # noqa: E731
        fn()
        best = min(_timed(fn) for _ in range(10))
        print(f"group of {g:5d} codes: {best * 1e3:7.2f} ms  ({best * 1e9 / N:6.1f} ns per token)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
