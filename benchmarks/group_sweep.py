"""Time of the grouped search against the size of the class groups (one thread, D=8 by default).

    python benchmarks/group_sweep.py [--threads 1] [--dim 8]

N = 65536 tokens over C groups of g codes (C * g = 16384), labels uniform: the per-token cost of a
search over g codes, which is what the semantic search's ratio to the full search comes down to.
One column per CPU search path this machine runs (the bf16 paths forced with SGCVQ_CPU_BF16, and
mode "exact_fp32" for the float32 candidates), measured side by side on the same data. Calls
torch.ops.sgcvq.nearest_code directly (no Python value checks), best of 10 in the calling thread's
CPU time with one thread (wall time otherwise).
"""
import argparse
import os
import re
import subprocess
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
    import sgcvq._C as C_ext

    torch.set_num_threads(args.threads)
    timer = time.thread_time if args.threads == 1 else time.perf_counter
    paths = [p for p in C_ext.cpu_capabilities()["bf16_paths"] if p != "off"]
    columns = [(f"bf16={p}", p, "exact") for p in paths] + [("exact_fp32", None, "exact_fp32")]
    print(f"CPU: {_lscpu_model()}; {args.threads} thread(s), D={args.dim}, N=65536, K=16384; "
          f"ms, best of 10 ({'CPU' if timer is time.thread_time else 'wall'} time)")
    print("group size | " + " | ".join(f"{name:>14s}" for name, _, _ in columns))
    N, D = 65536, args.dim
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    for g in (16, 64, 256, 1024, 4096, 16384):
        C = 16384 // g
        cb = torch.randn(C * g, D)
        labels, offsets = torch.randint(0, C, (N,)), torch.arange(C + 1) * g
        cells = []
        for _, path, mode in columns:
            fn = lambda: torch.ops.sgcvq.nearest_code(x, cb, labels, offsets, mode)  # noqa: E731
            with _forced(path):
                fn()
                best = min(_timed(fn, timer) for _ in range(10))
            cells.append(f"{best * 1e3:7.2f} ({best * 1e9 / N:5.1f} ns/token)")
        print(f"{g:10d} | " + " | ".join(cells))


class _forced:
    """SGCVQ_CPU_BF16=path inside the block (None: leave it as it is)."""

    def __init__(self, path):
        self.path, self.old = path, None

    def __enter__(self):
        self.old = os.environ.get("SGCVQ_CPU_BF16")
        if self.path is not None:
            os.environ["SGCVQ_CPU_BF16"] = self.path

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("SGCVQ_CPU_BF16", None)
        else:
            os.environ["SGCVQ_CPU_BF16"] = self.old


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        return m.group(1).strip() if m else "unknown CPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"


def _timed(fn, timer) -> float:
    t0 = timer()
    fn()
    return timer() - t0


if __name__ == "__main__":
    main()
