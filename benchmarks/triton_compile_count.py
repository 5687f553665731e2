"""How many JIT compilations the Triton test suite and a short training run cost on a GPU, counted
on the CPU under TRITON_INTERPRET=1 (sgcvq/kernels/compile_count.py), next to what the same launches
compiled before issue 22 (every int argument specialised).

    TRITON_INTERPRET=1 python benchmarks/triton_compile_count.py tests     # runs tests/test_triton.py
    TRITON_INTERPRET=1 python benchmarks/triton_compile_count.py train     # quantizer steps, backend triton

Prints the counts per kernel and writes them to $OUT/triton_compile_count.json (OUT default
benchmarks/out). Under the interpreter the search kernel has one tile config; on a GPU with
autotuning each search key compiles every config it keeps (SGCVQ_TRITON_AUTOTUNE=0: one per family,
the same count as here).
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(steps: int = 3) -> None:
    import torch

    import sgcvq

    # A training step's calls: the grouped search (19 classes) and the EMA statistics, the batch
    # size changing once (the last, smaller batch of an epoch), on the Triton backend.
    sgcvq.set_options(backend="triton")
    q = sgcvq.FastSemanticQuantizer(32, 64, decay=0.99, threshold_dead=0, num_classes=19).train()
    for step in range(steps):
        n = 96 if step < steps - 1 else 40
        z = torch.randn(1, n, 32, requires_grad=True)
        labels = torch.randint(-1, 19, (1, n))
        quantized = q(z, labels)[0]
        quantized.square().mean().backward()


def main() -> int:
    from sgcvq.kernels.compile_count import CompileCounter

    what = sys.argv[1] if len(sys.argv) > 1 else "tests"
    t0 = time.time()
    with CompileCounter(count_specialised=True) as cc:
        if what == "tests":
            import pytest

            rc = pytest.main([os.path.join(ROOT, "tests", "test_triton.py"), "-q", "-x", "-p", "no:cacheprovider"]
                             + sys.argv[2:])
        else:
            _train()
            rc = 0
    specialised: dict = {}
    for name, _, _ in cc.specialised_keys:
        specialised[name] = specialised.get(name, 0) + 1
    out = {"what": what, "launches": cc.launches, "compilations": cc.count, "by_kernel": cc.by_kernel(),
           "compilations_every_int_specialised": len(cc.specialised_keys), "by_kernel_specialised": specialised,
           "pytest_rc": int(rc), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1))
    out_dir = os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "out")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"triton_compile_count_{what}.json"), "w") as f:
        json.dump(out, f, indent=1)
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
