"""Compile the Triton nearest_code search kernel for sm_90 without a GPU and print what it became.

For every tile shape of the autotuner and each use of the kernel (bf16 / TF32 candidate pass,
grouped, 3xTF32 re-search): shared memory, registers and stack (cuobjdump -res-usage), and the
SASS count of HGMMA (wgmma) and LDL (local-memory loads: spilled registers). Fails when a config
the autotuner keeps needs more shared memory than an H100 block may have (227 KB), or when a
tensor-core tile of 64 rows or more has no HGMMA (smaller tiles take mma.sync, HMMA). Needs a Triton with its CUDA backend (no GPU, no driver).

    python .ci/triton_sm90_check.py          # the first two tile shapes of each use
    python .ci/triton_sm90_check.py --all    # every tile shape
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

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

SMEM_LIMIT = 227 * 1024


def _cuobjdump() -> str | None:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def main() -> int:
    nc = importlib.import_module("sgcvq.kernels.nearest_code")
    kern = nc._nearest_code_search_kernel
    while hasattr(kern, "fn"):  # autotune -> heuristics -> jit
        if isinstance(kern, triton.runtime.jit.JITFunction):
            break
        kern = kern.fn
    target = GPUTarget("cuda", 90, 32)
    tool = _cuobjdump()
    shapes = nc._TENSOR_CORE_SHAPES if "--all" in sys.argv else nc._TENSOR_CORE_SHAPES[:2]
    uses = [  # name, x dtype, operand dtype, dot precision, centre in kernel, D, grouped
        ("bf16 candidates, fp32 x, D=256", "fp32", "bf16", "tf32", False, 256, False),
        ("bf16 candidates, grouped, D=256", "fp32", "bf16", "tf32", False, 256, True),
        ("bf16 x, bf16 candidates, D=256", "bf16", "bf16", "tf32", False, 256, False),
        ("tf32 candidates, fp32 x, D=8", "fp32", "fp32", "tf32", False, 8, False),
        ("3xTF32 re-search, D=256", "fp32", "fp32", "tf32x3", True, 256, True),
        ("3xTF32 re-search, D=8", "fp32", "fp32", "tf32x3", True, 8, True),
    ]
    failures = 0
    print(f"triton {triton.__version__}, target sm_90, LIST_R = {nc.LIST_R}")
    print(f"  {'use':<34} {'BN,BK,BD,warps,stages':<22} {'smem':>7} {'regs':>5} {'stack':>6} {'HGMMA':>6} {'LDL':>4}")
    for name, xdt, odt, prec, centre, D, grouped in uses:
        configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
                   for bn, bk, bd, w, s in shapes]
        kept = nc._prune_configs(configs, {"D": D}, DOT_PRECISION=prec, CENTER_IN_KERNEL=centre) \
            if len(configs) > 1 else configs
        for c in kept:
            bn, bk, bd = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], min(c.kwargs["BLOCK_D"], max(16, triton.next_power_of_2(D)))
            consts = {"GROUPED": grouped, "NB_P2": 32 if grouped else 1, "DOT_PRECISION": prec, "DOT_IN_FP32": False,
                      "CENTER_IN_KERNEL": centre, "LIST_R": nc.LIST_R, "BLOCK_N": bn, "BLOCK_K": bk,
                      "BLOCK_D": bd, "X_RESIDENT": D <= bd, "RESCORE_D": 4}
            sig = {"xa_ptr": f"*{odt}", "ea_ptr": f"*{odt}", "mu_ptr": "*fp32", "x_ptr": f"*{xdt}",
                   "e_ptr": f"*{xdt}", "enorm2_ptr": "*fp32", "xx_ptr": "*fp32", "margin_ptr": "*fp32",
                   "perm_ptr": "*i64", "bucket_count_ptr": "*i32", "offsets_ptr": "*i64", "index_ptr": "*i64",
                   "sqdist_ptr": "*fp32", "need_ptr": "*i32", "N": "i32", "K": "i32", "D": "i32", "NB": "i32"}
            sig.update({k: "constexpr" for k in consts})
            src = ASTSource(fn=kern, signature=sig,
                            constexprs={(kern.arg_names.index(k),): v for k, v in consts.items()})
            shape = f"{bn},{bk},{bd},{c.num_warps},{c.num_stages}"
            try:
                ck = triton.compile(src, target=target, options={"num_warps": c.num_warps, "num_stages": c.num_stages})
            except Exception as ex:  # noqa: BLE001 - report and go on
                print(f"  {name:<34} {shape:<22} FAILED: {type(ex).__name__}: {str(ex)[:200]}")
                failures += 1
                continue
            regs = stack = hg = hm = ldl = "?"
            if tool:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "k.cubin")
                    with open(path, "wb") as fh:
                        fh.write(ck.asm["cubin"])
                    res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
                    sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
                m = re.search(r"REG:(\d+)", res)
                regs = m.group(1) if m else "?"
                m = re.search(r"STACK:(\d+)", res)
                stack = m.group(1) if m else "?"
                hg = sass.count("HGMMA")
                hm = sass.count("HMMA")
                ldl = len(re.findall(r"\bLDL\b", sass))
            smem = ck.metadata.shared
            flag = ""
            if smem > SMEM_LIMIT:
                flag += "  OVER THE 227 KB SHARED-MEMORY LIMIT"
                failures += 1
            if tool and hg == 0:
                if bn >= 64:  # a warpgroup's wgmma has M = 64; smaller tiles take mma.sync (HMMA)
                    flag += "  NO HGMMA"
                    failures += 1
                else:
                    flag += f"  ({hm} HMMA: mma.sync below 64 rows)"
            print(f"  {name:<34} {shape:<22} {smem:>7} {regs:>5} {stack:>6} {hg:>6} {ldl:>4}{flag}")
    # The prologue and the direct fallback: they must compile too (no report needed).
    prep = nc._prepare_rows_kernel
    for cand, cdt, margins in (("bf16", "bf16", False), ("bf16", "bf16", True), ("tf32", "fp32", True),
                               ("fp16", "fp16", True), ("none", "fp32", True)):
        sig = {"src_ptr": "*fp32", "mu_ptr": "*fp32", "cand_ptr": f"*{cdt}", "norm2_ptr": "*fp32",
               "bound_ptr": "*i32", "margin1_ptr": "*fp32", "margin2_ptr": "*fp32", "rows_total": "i32",
               "D": "i32", "g": "fp32", "dp1": "fp32", "passes1": "i32", "dp2": "fp32", "passes2": "i32"}
        consts = {"CAND": cand, "WRITE_MARGINS": margins, **nc._PREP_BLOCKS}
        sig.update({k: "constexpr" for k in consts})
        try:
            triton.compile(ASTSource(fn=prep, signature=sig,
                                     constexprs={(prep.arg_names.index(k),): v for k, v in consts.items()}),
                           target=target, options={"num_warps": 4})
            print(f"  _prepare_rows_kernel CAND={cand} WRITE_MARGINS={margins}: compiled")
        except Exception as ex:  # noqa: BLE001
            print(f"  _prepare_rows_kernel CAND={cand} WRITE_MARGINS={margins}: FAILED {type(ex).__name__}: {str(ex)[:200]}")
            failures += 1
    fb = nc._nearest_code_fallback_kernel
    sig = {"x_ptr": "*fp32", "e_ptr": "*fp32", "labels_ptr": "*i64", "offsets_ptr": "*i64", "todo_ptr": "*i64",
           "n_todo_ptr": "*i64", "index_ptr": "*i64", "sqdist_ptr": "*fp32", "K": "i32", "D": "i32"}
    consts = {"GROUPED": True, **nc._FALLBACK_BLOCKS}
    sig.update({k: "constexpr" for k in consts})
    try:
        triton.compile(ASTSource(fn=fb, signature=sig, constexprs={(fb.arg_names.index(k),): v for k, v in consts.items()}),
                       target=target, options={"num_warps": 4})
        print("  _nearest_code_fallback_kernel: compiled")
    except Exception as ex:  # noqa: BLE001
        print(f"  _nearest_code_fallback_kernel: FAILED {type(ex).__name__}: {str(ex)[:200]}")
        failures += 1
    print(f"triton_sm90_check: {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
