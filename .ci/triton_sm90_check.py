"""Compile the Triton nearest_code kernels for sm_90 without a GPU, exactly as the runtime would,
and print what each became.

The host launcher runs as usual on CPU tensors of the real shapes; every kernel launch becomes a
compile for sm_90 with the runtime's own specialisations (each int argument's "== 1" / "divisible
by 16", each pointer's 16-byte alignment, the constexprs, warps and stages: see
kernels/compile_count.py `OfflineCompiler`), so the report is about the kernel that runs. (Until
2026-12 this script built the signature by hand, without the divisibility attributes, and reported
a different kernel at D = 256: 255 registers and 16 KB of shared memory instead of the runtime's
214 registers, 64 KB and a 4-stage cp.async pipeline.)

For each compiled search kernel: shared memory, registers and stack (cuobjdump -res-usage), and the
SASS counts of HGMMA (wgmma), HMMA (mma.sync), LDGSTS (cp.async) and LDL (spilled registers); the
CPU seconds each compile took (the first call's cost on a GPU host is about the same). Fails when
a kernel needs more shared memory than an H100 block may have (227 KB), or when a tensor-core tile
of 64 rows or more has no HGMMA. Needs a Triton with its CUDA backend (no GPU, no driver).

    python .ci/triton_sm90_check.py          # the first tile shape of each family (SGCVQ_TRITON_AUTOTUNE=0)
    python .ci/triton_sm90_check.py --all    # every tile shape the autotuner keeps
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
if "--all" not in sys.argv:
    os.environ["SGCVQ_TRITON_AUTOTUNE"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402

SMEM_LIMIT = 227 * 1024
# name, dtype, (N, K, D), classes (0: no labels), mode
USES = [
    ("fp32 x, bf16 candidates, D=256", torch.float32, (65536, 16384, 256), 0, "exact"),
    ("fp32 x, grouped C=19, D=256", torch.float32, (65536, 16384, 256), 19, "exact"),
    ("bf16 x, D=256", torch.bfloat16, (65536, 16384, 256), 0, "exact"),
    ("fp32 x, tf32 candidates, D=8", torch.float32, (262144, 16384, 8), 0, "exact"),
    ("fp32 x, 3xTF32 first pass, D=256", torch.float32, (4096, 16384, 256), 0, "exact_fp32"),
]


def _cuobjdump() -> str | None:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def _inspect(tool, cubin: bytes) -> dict:
    if not tool:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", res)
    s = re.search(r"STACK:(\d+)", res)
    return {"regs": m.group(1) if m else "?", "stack": s.group(1) if s else "?", "HGMMA": sass.count("HGMMA"),
            "HMMA": sass.count("HMMA"), "LDGSTS": sass.count("LDGSTS"), "LDL": len(re.findall(r"\bLDL\b", sass))}


def main() -> int:
    nc = importlib.import_module("sgcvq.kernels.nearest_code")
    from sgcvq.kernels.compile_count import OfflineCompiler

    tool = _cuobjdump()
    failures, total_s, compiles = 0, 0.0, 0
    print(f"triton {triton.__version__}, target sm_90, LIST_R = {nc.LIST_R}, "
          f"autotune {'all kept configs' if '--all' in sys.argv else 'off (first config per family)'}")
    print(f"  {'use / kernel':<44} {'BN,BK,BD,w,s':<16} {'smem':>7} {'regs':>5} {'stack':>5} {'HGMMA':>6} "
          f"{'HMMA':>5} {'LDGSTS':>6} {'LDL':>4} {'cpu s':>6}")
    seen: set = set()
    for name, dtype, (N, K, D), C, mode in USES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, D, generator=g).to(dtype)
        e = torch.randn(K, D, generator=g).to(dtype)
        labels = offsets = None
        if C:
            offsets = torch.tensor([round(K * c / C) for c in range(C + 1)])
            labels = torch.randint(-1, C, (N,), generator=g)
        with OfflineCompiler() as oc:
            nc.nearest_code_with_stats(x, e, labels, offsets, mode)
        print(f"  {name}")
        for key, (kname, ck, seconds, consts) in oc.kernels.items():
            total_s += seconds
            compiles += 1
            if key in seen:
                continue
            seen.add(key)
            if kname != "_nearest_code_search_kernel":
                print(f"    {kname:<42} {'':<16} {ck.metadata.shared:>7} {'':>5} {'':>5} {'':>6} {'':>5} {'':>6} "
                      f"{'':>4} {seconds:>6.1f}")
                continue
            info = _inspect(tool, ck.asm["cubin"])
            bn, bk, bd = consts["BLOCK_N"], consts["BLOCK_K"], consts["BLOCK_D"]
            shape = f"{bn},{bk},{bd},{ck.metadata.num_warps},{ck.metadata.num_stages}"
            what = f"search {consts['DOT_PRECISION']}{' centred' if consts['CENTER_IN_KERNEL'] else ''}" \
                   f"{' grouped' if consts['GROUPED'] else ''}{' x-resident' if consts['X_RESIDENT'] else ''}"
            flag = ""
            if ck.metadata.shared > SMEM_LIMIT:
                flag += "  OVER THE 227 KB SHARED-MEMORY LIMIT"
                failures += 1
            if tool and info["HGMMA"] == 0 and bn >= 64 and consts["DOT_PRECISION"] != "ieee":
                flag += "  NO HGMMA"  # a warpgroup's wgmma has M = 64; smaller tiles take mma.sync
                failures += 1
            print(f"    {what:<42} {shape:<16} {ck.metadata.shared:>7} {info.get('regs', '?'):>5} "
                  f"{info.get('stack', '?'):>5} {info.get('HGMMA', '?'):>6} {info.get('HMMA', '?'):>5} "
                  f"{info.get('LDGSTS', '?'):>6} {info.get('LDL', '?'):>4} {seconds:>6.1f}{flag}")
    print(f"{compiles} compiles ({len(seen)} distinct), {total_s:.1f} CPU s in all")
    print(f"triton_sm90_check: {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
