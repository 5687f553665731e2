"""nearest_code on the GPU in Triton: certified low-precision candidates, never an N x K matrix.

Pipeline (no host synchronisation anywhere; every count stays on the device):

1. Prologue. The codebook mean mu (float32) is the centre: distances do not change when x and
   every code move by the same vector, and centring shrinks the norms that the error bound scales
   with (offset and post-ReLU data). `_prepare_rows_kernel` centres the codes, rounds them to the
   candidate dtype (bfloat16, float16 or TF32) and records ||e'_k||^2 and the rounding residual;
   run again over the tokens it writes their candidate operands, ||x'||^2 and two per-token
   margins E (one for the candidate pass, one for the float32-grade pass).
2. `_nearest_code_search_kernel`, the candidate pass: a program owns BLOCK_N tokens (with labels:
   of one class; work units are (class, token block) and stream only their class's codes) and
   loops over BLOCK_K code tiles. Per tile, `tl.dot` gives x'.e' on the tensor cores; the score
   s_k = ||e'_k||^2 - 2 x'.e'_k feeds a per-token candidate list of LIST_R codes: a code enters
   when its score is below the list's worst and within 2E of the list's best; the smallest score
   ever left out (evicted or never listed) is kept as v_excl. After the loop the listed codes are
   re-scored with the direct float32 distance on the original inputs, and the token is certified
   when best + E < v_excl + ||x'||^2: then no code outside the list can be as close
   (`token_margin` derives E). Writes index, sqdist and an "uncertified" flag.
3. The tokens left uncertified (compacted on the device, still grouped by class) go through the
   same kernel once more with float32-grade products (3xTF32 on the tensor cores, centring done
   in the kernel) and the tighter margin: a GEMM-tile re-search, not a per-token scan.
4. `_nearest_code_fallback_kernel`: the tokens that even the float32-grade pass cannot certify
   (codes within float32 rounding of each other: exact or near duplicates, many-way ties) take
   the direct float32 distance over their code range, in [32 tokens x 32 codes] tiles.

Modes ("exact" is the default; all three return the same index):
  "exact" / "fast_exact": the low-precision candidate pass first (float32 inputs: bfloat16
      candidates of the centred data for D >= 32, TF32 below; bfloat16 inputs: bfloat16; float16:
      float16), then steps 3 and 4 for what it leaves.
  "exact_fp32": the float32-grade pass first (step 3 for every token), then step 4.
In every mode the index is the float32 argmin, ties to the lowest index.

Extra memory: the candidate copies of x and the codes (N D + K D elements of the candidate dtype:
2 bytes for bfloat16) plus O(N + K) (norms, margins, flags, compacted token lists, class sort).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from sgcvq import options as _options
from sgcvq.reference import accumulation_error, centred_margin

__all__ = ["nearest_code", "nearest_code_with_stats", "token_margin", "candidate_kind", "LIST_R"]

_INF = tl.constexpr(float("inf"))  # a global the kernels may read: it must be a constexpr
_INT_MAX = tl.constexpr(2**31 - 1)
_TINY = tl.constexpr(2.0**-100)  # per feature: products and partial sums flushed to zero

LIST_R = 8  # candidates per token (a CPU simulation: > 8 codes within the bf16 margin for 0.1%)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------------------------
# Error bound
# --------------------------------------------------------------------------------------------
_U = 2.0**-24  # float32 unit roundoff
# Per dot precision: (relative error of one product as the dot sees it, products per x.e). The
# candidate operands (bf16 / fp16 / TF32 values) multiply exactly in float32; their rounding is
# charged through the measured residuals instead. 3xTF32 splits a = big + small (both TF32) and
# sums big*big + big*small + small*big: <= 2^-18 per product over 3D accumulated products.
_PRODUCT_ERROR = {
    "exact_products": (0.0, 1),
    "ieee": (_U, 1),
    "tf32x3": (2.0**-18, 3),
}


def _sum_error(D: int) -> float:
    """g: relative error of a float32 sum of D non-negative terms (any order), or of a tensor-core
    accumulation over D products. NOTE: tensor cores may truncate instead of rounding, so every
    accumulation step is charged a full ulp (2u); +16 leaves slack for the final additions.
    (sgcvq.reference.accumulation_error; csrc/include/sgcvq/certificate.h for the CUDA kernels.)"""
    return accumulation_error(D)


@triton.jit
def _margin(xx, r2, me2, merr, D, g, dp, passes):
    """E with |(s_k + fl||x'||^2) - f_k| <= E for every code k (see `token_margin`)."""
    xn = tl.sqrt(xx * (1.0 + g)) * 1.0001
    r = tl.sqrt(r2 * (1.0 + g)) * 1.0001
    me = tl.sqrt(me2)
    ah = 2.0 * (xn + r)  # >= ||2 c(x')||
    big = (xn + me) * (xn + me)
    dot = 2.0 * r * me + ah * merr + (passes * g + dp) * ah * (me + merr)
    e = g * (xn * xn + me2) + dot + (g * 1.01 + 12.0 * 2.0**-24) * big + (D + 8) * _TINY
    return e * 1.01


def token_margin(xx: float, r2: float, max_e2: float, max_err: float, D: int, dot: str) -> float:
    """The per-token margin E of the certificate, in float64 (the kernels compute it in float32
    with the same formula, `_margin`, and 1% slack): `sgcvq.reference.centred_margin` (derivation
    there and in docs/numerics.md) with this kernel's dot error, passes g + the product error.
    """
    dp, passes = _PRODUCT_ERROR[dot]
    return centred_margin(xx, r2, max_e2, max_err, D, passes * _sum_error(D) + dp)


# --------------------------------------------------------------------------------------------
# Prologue: centre, round to the candidate dtype, norms, residuals, margins
# --------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["rows_total", "passes1", "passes2"])  # one compile per D and use
def _prepare_rows_kernel(
    src_ptr,  # [R, D] float32/bfloat16/float16 rows (tokens or codes)
    mu_ptr,  # [D] float32 centre
    cand_ptr,  # [R, D] out: the centred rows in the candidate dtype (CAND != "none")
    norm2_ptr,  # [R] float32 out: fl||row - mu||^2
    bound_ptr,  # [2] int32, float bits: max_k fl||e'_k||^2 and max_k fl||e'_k - c(e'_k)||^2 (atomic max
    #             by the code launch, read by the token launch; non-negative floats order as ints)
    margin1_ptr,  # [R] float32 out (WRITE_MARGINS): E of the candidate pass
    margin2_ptr,  # [R] float32 out (WRITE_MARGINS): E of the float32-grade pass
    rows_total,
    D,
    g,
    dp1,
    passes1,
    dp2,
    passes2,
    CAND: tl.constexpr,  # "bf16", "fp16", "tf32" or "none"
    WRITE_MARGINS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < rows_total
    rows64 = rows.to(tl.int64)
    sq = tl.zeros([BLOCK_R], dtype=tl.float32)
    res = tl.zeros([BLOCK_R], dtype=tl.float32)
    for db in range(0, D, BLOCK_D):
        offs = db + tl.arange(0, BLOCK_D)
        dmask = offs < D
        m2 = rmask[:, None] & dmask[None, :]
        v = tl.load(src_ptr + rows64[:, None] * D + offs[None, :], mask=m2, other=0.0).to(tl.float32)
        mu = tl.load(mu_ptr + offs, mask=dmask, other=0.0)
        c = tl.where(m2, v - mu[None, :], 0.0)
        sq += tl.sum(c * c, 1)
        if CAND != "none":
            if CAND == "bf16":
                q = c.to(tl.bfloat16)
                back = q.to(tl.float32)
            elif CAND == "fp16":
                q = c.to(tl.float16)
                back = q.to(tl.float32)
            else:  # "tf32": round to 10 mantissa bits (to nearest, ties away), kept as float32
                bits = c.to(tl.int32, bitcast=True)
                back = ((bits + 0x1000) & -8192).to(tl.float32, bitcast=True)
                q = back
            tl.store(cand_ptr + rows64[:, None] * D + offs[None, :], q, mask=m2)
            t = c - back  # exact in float32
            res += tl.sum(t * t, 1)
    tl.store(norm2_ptr + rows, sq, mask=rmask)
    if WRITE_MARGINS:
        # Upper bounds: fl||e'||^2 and the residual sums are within (1 + g) of the true values.
        me2 = tl.load(bound_ptr).to(tl.float32, bitcast=True) * (1.0 + g) * 1.0001
        merr = tl.sqrt(tl.load(bound_ptr + 1).to(tl.float32, bitcast=True) * (1.0 + g)) * 1.0001
        e1 = _margin(sq, res, me2, merr, D, g, dp1, passes1)
        e2 = _margin(sq, res * 0.0, me2, 0.0, D, g, dp2, passes2)
        tl.store(margin1_ptr + rows, e1, mask=rmask)
        tl.store(margin2_ptr + rows, e2, mask=rmask)
    else:
        tl.atomic_max(bound_ptr + tl.zeros([BLOCK_R], dtype=tl.int32), sq.to(tl.int32, bitcast=True), mask=rmask)
        tl.atomic_max(bound_ptr + 1 + tl.zeros([BLOCK_R], dtype=tl.int32), res.to(tl.int32, bitcast=True),
                      mask=rmask)


# --------------------------------------------------------------------------------------------
# The search kernel
# --------------------------------------------------------------------------------------------
# (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages). Tensor-core tiles (bf16/fp16/tf32/3xTF32)
# are H100-oriented. The first is the one used without autotuning: BLOCK_D = 256 holds the whole
# token tile (D <= 256: X_RESIDENT), so it is loaded once and ONE software-pipelined loop streams
# the codes (with D in 32-wide chunks the pipeline drained and re-read the token tile on every
# code tile); 64 codes a tile keep 3 stages of [64, 256] bf16 codes plus the tokens in shared
# memory. At D <= 16 the candidate pass's 128-token tiles take 256 codes (`_prune_configs`).
# float32 operands (the centred 3xTF32 pass) stay at BLOCK_D = 32 (shared memory).
# The float32 FMA dot ("ieee") holds its operands in registers, so it gets smaller tiles.
# The last, 32 tokens a program, is for the re-search of a few compacted tokens: it spreads them
# over more SMs (each program streams its whole code range); autotuning times it on that launch
# (its own key: N_BUCKET = 0). 128 x 128 x 64 (280 B spilled) and 128 x 256 (416 B) are out.
_TENSOR_CORE_SHAPES = [(128, 64, 256, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 8, 3), (64, 128, 32, 4, 4),
                       (32, 128, 32, 4, 3)]
_FMA_SHAPES = [(64, 64, 32, 4, 3), (64, 128, 32, 8, 3), (64, 64, 64, 4, 3)]


def _search_configs():
    if _interpreting():
        # One small config: the interpreter is slow and CI must stay fast; 32-wide tiles still
        # exercise partial tiles and multi-tile loops at the test shapes.
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 16}, num_warps=4, num_stages=1)]
    shapes = _TENSOR_CORE_SHAPES + _FMA_SHAPES
    if not _options.current().triton_autotune:
        # No autotuning (fast test runs): the first tile of each family.
        shapes = [_TENSOR_CORE_SHAPES[0], _FMA_SHAPES[0]]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bk, bd, w, s in shapes
    ]


_FMA_KEYS = {(bn, bk, bd, w, s) for bn, bk, bd, w, s in _FMA_SHAPES}


def _prune_configs(configs, named_args, **kwargs):
    if len(configs) == 1:
        return configs
    precision = kwargs.get("DOT_PRECISION", named_args.get("DOT_PRECISION"))
    ieee = precision == "ieee"
    # A BLOCK_D wider than D only loads zeros; tl.dot needs at least 16.
    cap = max(16, triton.next_power_of_2(named_args["D"]))
    centred = kwargs.get("CENTER_IN_KERNEL", named_args.get("CENTER_IN_KERNEL")) or precision == "tf32x3"
    if centred:
        # float32 operands: 3 stages of [128, 64] + [128, 64] float32 tiles plus the 3xTF32
        # splits need 197-263 KB of shared memory on sm_90 (ptxas, offline), over the 227 KB a
        # block may have; BLOCK_D = 32 halves it.
        cap = min(cap, 32)
    small_d = named_args["D"] <= 16
    seen, out = set(), []
    for c in configs:
        kw = dict(c.kwargs)
        family = (kw["BLOCK_N"], kw["BLOCK_K"], kw["BLOCK_D"], c.num_warps, c.num_stages) in _FMA_KEYS
        if family != ieee:
            continue
        kw["BLOCK_D"] = min(kw["BLOCK_D"], cap)
        if small_d and not ieee and not centred and kw["BLOCK_N"] == 128:
            # D <= 16: the dot is nothing, the per-tile epilogue is everything; 256 codes a tile
            # halve the number of its reductions and block-wide tests.
            kw["BLOCK_K"] = 256
        key = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    return out


@triton.jit
def _operand_tile(ptr, mu_ptr, row_off, offs_d, mask, CENTER_IN_KERNEL: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """One [rows, BLOCK_D] dot operand: the prepared candidate values, or (CENTER_IN_KERNEL) the
    raw rows centred here in float32 (the same fl(v - mu) as the prologue computed)."""
    t = tl.load(ptr + row_off[:, None] + offs_d[None, :], mask=mask, other=0.0)
    if CENTER_IN_KERNEL:
        mu = tl.load(mu_ptr + offs_d)  # zero-padded past D
        t = tl.where(mask, t.to(tl.float32) - mu[None, :], 0.0)
    elif DOT_IN_FP32:
        # The interpreter's bf16 / fp16 dot is wrong; their products are exact in fp32 anyway.
        t = t.to(tl.float32)
    return t


@triton.autotune(
    configs=_search_configs(),
    # One tuning per width and use, and per N_BUCKET: a re-search of the few uncertified tokens
    # (bucket 0) and a full pass over many tokens want different tiles (32 tokens a program
    # spreads a handful over the SMs; 128 feeds the tensor cores).
    key=["D", "GROUPED", "DOT_PRECISION", "CENTER_IN_KERNEL", "N_BUCKET"],
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.heuristics({"X_RESIDENT": lambda args: args["D"] <= args["BLOCK_D"]})
@triton.jit(do_not_specialize=["N", "K", "NB", "N_BUCKET"])
def _nearest_code_search_kernel(
    xa_ptr,  # [N, D] x operands: candidate dtype (prepared) or the raw x (CENTER_IN_KERNEL)
    ea_ptr,  # [K, D] code operands, likewise
    mu_ptr,  # [D + 256] float32 centre, zero-padded (CENTER_IN_KERNEL)
    x_ptr,  # [N, D] raw x, for the re-score
    e_ptr,  # [K, D] raw codebook, for the re-score
    enorm2_ptr,  # [K] float32 fl||e'_k||^2
    xx_ptr,  # [N] float32 fl||x'||^2
    margin_ptr,  # [N] float32 E of this pass
    perm_ptr,  # [N] int64 token order, sorted by bucket
    bucket_count_ptr,  # [NB] int32 tokens per bucket; bucket 0 = label -1, bucket c+1 = class c
    offsets_ptr,  # [C+1] int64 class code offsets ([0, K] without labels)
    index_ptr,  # [N] int64 out
    sqdist_ptr,  # [N] float32 out
    need_ptr,  # [N] int32 out, per sorted position: 1 = not certified, a later pass decides
    N,
    K,
    D,
    NB,
    N_BUCKET,  # the autotune key's size class (`_n_bucket`); not read by the kernel
    GROUPED: tl.constexpr,
    NB_P2: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    CENTER_IN_KERNEL: tl.constexpr,
    LIST_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    X_RESIDENT: tl.constexpr,
    RESCORE_D: tl.constexpr = 4,  # the re-score gathers [BLOCK_N, LIST_R, 4]: no spills with Triton 3.6
):
    pid = tl.program_id(0)
    if GROUPED:
        # Work unit pid -> (bucket, token block within the bucket). The grid is an upper bound on
        # the number of units (cdiv(N, BLOCK_N) + NB), so the host never reads the bucket sizes.
        rb = tl.arange(0, NB_P2)
        cnt = tl.load(bucket_count_ptr + rb, mask=rb < NB, other=0)
        tiles = (cnt + BLOCK_N - 1) // BLOCK_N
        tile_end = tl.cumsum(tiles, 0)
        seg_end = tl.cumsum(cnt, 0)
        b = tl.sum((tile_end <= pid).to(tl.int32), 0)
        sel = rb == b
        first_tile = tl.sum(tl.where(sel, tile_end - tiles, 0), 0)
        s_end = tl.sum(tl.where(sel, seg_end, 0), 0)
        s_start = s_end - tl.sum(tl.where(sel, cnt, 0), 0)
        t0 = s_start + (pid - first_tile) * BLOCK_N
        t1 = s_end
        cls = tl.maximum(tl.minimum(b - 1, NB - 2), 0)  # clamped: b >= NB loads in bounds too
        k0 = tl.where(b == 0, 0, tl.load(offsets_ptr + cls).to(tl.int32))
        k1 = tl.where(b == 0, K, tl.load(offsets_ptr + cls + 1).to(tl.int32))
        k1 = tl.where(b >= NB, k0, k1)  # programs past the real work: empty code loop, no stores
        t1 = tl.where(b >= NB, t0, t1)
    else:
        t0 = pid * BLOCK_N
        t1 = N
        k0 = 0
        k1 = K

    pos = t0 + tl.arange(0, BLOCK_N)
    tok_mask = pos < t1
    if GROUPED:
        rows = tl.load(perm_ptr + pos, mask=tok_mask, other=0)
    else:
        rows = pos.to(tl.int64)
    x_off = rows * D
    cols = tl.arange(0, BLOCK_K)
    offs_d0 = tl.arange(0, BLOCK_D)
    slots = tl.arange(0, LIST_R)

    margin = tl.load(margin_ptr + rows, mask=tok_mask, other=0.0)
    # A code enters the list only within `window` of the list's best: any code left out beyond it
    # is provably farther than the best (2E, plus slack for the rounding of the comparisons).
    window = margin * 2.0625
    lv = tl.full([BLOCK_N, LIST_R], _INF, tl.float32)  # candidate scores (unsorted)
    li = tl.full([BLOCK_N, LIST_R], -1, tl.int32)  # candidate codes
    v_excl = tl.full([BLOCK_N], _INF, tl.float32)  # smallest score of any code not in the list

    if X_RESIDENT:
        # D fits one chunk: the token tile stays in registers for the whole code loop, and the
        # code loop itself is what the compiler software-pipelines (num_stages).
        dmask_r = offs_d0 < D
        x_res = _operand_tile(xa_ptr, mu_ptr, x_off, offs_d0, tok_mask[:, None] & dmask_r[None, :],
                              CENTER_IN_KERNEL, DOT_IN_FP32)

    for kb in range(k0, k1, BLOCK_K):
        offs_k = kb + cols
        kmask = offs_k < k1
        e_off = offs_k.to(tl.int64) * D
        if X_RESIDENT:
            et = _operand_tile(ea_ptr, mu_ptr, e_off, offs_d0, kmask[:, None] & dmask_r[None, :],
                               CENTER_IN_KERNEL, DOT_IN_FP32)
            acc = tl.dot(x_res, tl.trans(et), input_precision=DOT_PRECISION)
        else:
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            for db in range(0, D, BLOCK_D):
                offs_d = db + offs_d0
                dmask = offs_d < D
                xt = _operand_tile(xa_ptr, mu_ptr, x_off, offs_d, tok_mask[:, None] & dmask[None, :],
                                   CENTER_IN_KERNEL, DOT_IN_FP32)
                et = _operand_tile(ea_ptr, mu_ptr, e_off, offs_d, kmask[:, None] & dmask[None, :],
                                   CENTER_IN_KERNEL, DOT_IN_FP32)
                acc = tl.dot(xt, tl.trans(et), acc, input_precision=DOT_PRECISION)
        en = tl.load(enorm2_ptr + offs_k, mask=kmask, other=0.0)
        # ||x' - e'||^2 - ||x'||^2 = ||e'||^2 - 2 x'.e': ||x'||^2 is common to the row.
        s = tl.where(kmask[None, :], en[None, :] - 2.0 * acc, _INF)
        m, a = tl.min(s, 1, return_indices=True, return_indices_tie_break_left=True)
        worst, wslot = tl.max(lv, 1, return_indices=True, return_indices_tie_break_left=True)
        thr = tl.minimum(worst, tl.min(lv, 1) + window)
        # Per row, the codes of this tile under its threshold (list's worst, or best + 2E): an
        # upper bound on what can enter its list here, since each entry only lowers the threshold.
        # ONE block-wide test per code tile (the max over rows) sets the number of insertion rounds,
        # usually 0 (most tiles) or 1; the rounds themselves are masked, branch-free per row.
        # Unrolled with a uniform `if` rather than a loop of `rounds` trips: Triton's software
        # pipeliner skips a loop that holds another loop (no cp.async for the code tiles then).
        hits = tl.sum((s < thr[:, None]).to(tl.int32), 1)
        rounds = tl.max(hits, 0)
        for _j in tl.static_range(LIST_R):
            if _j < rounds:
                active = m < thr
                # The row's tile minimum replaces its worst listed code, which becomes excluded.
                put = active[:, None] & (slots[None, :] == wslot[:, None])
                v_excl = tl.minimum(v_excl, tl.where(active, worst, _INF))
                lv = tl.where(put, m[:, None], lv)
                li = tl.where(put, (kb + a)[:, None], li)
                s = tl.where(active[:, None] & (cols[None, :] == a[:, None]), _INF, s)
                m, a = tl.min(s, 1, return_indices=True, return_indices_tie_break_left=True)
                worst, wslot = tl.max(lv, 1, return_indices=True, return_indices_tie_break_left=True)
                thr = tl.minimum(worst, tl.min(lv, 1) + window)
        # Every code of the tile not listed scores >= m.
        v_excl = tl.minimum(v_excl, m)

    # Re-score the listed codes with the direct float32 distance on the original inputs, only
    # those inside the window of the list's best: a listed code with s_k >= min s + 2E has
    # f_k >= s_k + ||x'||^2 - E > f(best) and cannot win; it counts as excluded instead (the
    # certificate below then holds for it as for any code outside the list).
    listed = (li >= 0) & tok_mask[:, None]
    near = lv <= (tl.min(lv, 1) + window)[:, None]
    v_excl = tl.minimum(v_excl, tl.min(tl.where(listed & ~near, lv, _INF), 1))
    has = listed & near
    lc = tl.maximum(li, 0).to(tl.int64) * D
    dist = tl.zeros([BLOCK_N, LIST_R], dtype=tl.float32)
    offs_r0 = tl.arange(0, RESCORE_D)
    for db in range(0, D, RESCORE_D):
        offs_d = db + offs_r0
        dmask = offs_d < D
        xt = tl.load(x_ptr + x_off[:, None] + offs_d[None, :],
                     mask=tok_mask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        et = tl.load(e_ptr + lc[:, :, None] + offs_d[None, None, :],
                     mask=has[:, :, None] & dmask[None, None, :], other=0.0).to(tl.float32)
        t = xt[:, None, :] - et
        dist += tl.sum(t * t, 2)
    dist = tl.where(has, dist, _INF)
    bd = tl.min(dist, 1)
    best = tl.min(tl.where(has & (dist == bd[:, None]), li, _INT_MAX), 1)  # ties: lowest index
    xx = tl.load(xx_ptr + rows, mask=tok_mask, other=0.0)
    # Certified: a code k outside the list has f_k >= s_k + ||x'||^2 - E >= v_excl + ||x'||^2 - E
    # > bd, so the float32 argmin is listed. v_excl = inf (every code listed) certifies trivially.
    certified = (bd + margin < v_excl + xx) & (best < _INT_MAX)
    tl.store(index_ptr + rows, best.to(tl.int64), mask=tok_mask)
    tl.store(sqdist_ptr + rows, bd, mask=tok_mask)
    tl.store(need_ptr + pos, (~certified).to(tl.int32), mask=tok_mask)


@triton.jit(do_not_specialize=["K"])
def _nearest_code_fallback_kernel(
    x_ptr,  # [N, D]
    e_ptr,  # [K, D]
    labels_ptr,  # [N] int64 (GROUPED only)
    offsets_ptr,  # [C+1] int64 (GROUPED only)
    todo_ptr,  # [N + 1] int64: original rows of the uncertified tokens, first n_todo valid
    n_todo_ptr,  # [1] int32/int64 count of uncertified tokens
    index_ptr,  # [N] int64 in/out
    sqdist_ptr,  # [N] float32 in/out
    K,
    D,
    GROUPED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_todo = tl.load(n_todo_ptr)
    j = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    jm = j < n_todo  # all false for programs past the work: empty loop, no stores
    rows = tl.load(todo_ptr + j, mask=jm, other=0)
    if GROUPED:
        lab = tl.load(labels_ptr + rows, mask=jm, other=-1)
        cls = tl.maximum(lab, 0)
        lo = tl.where(lab < 0, 0, tl.load(offsets_ptr + cls, mask=jm, other=0).to(tl.int32))
        hi = tl.where(lab < 0, K, tl.load(offsets_ptr + cls + 1, mask=jm, other=0).to(tl.int32))
    else:
        lo = tl.zeros([BLOCK_N], dtype=tl.int32)
        hi = tl.zeros([BLOCK_N], dtype=tl.int32) + K
    k_lo = tl.min(tl.where(jm, lo, K), 0)
    k_hi = tl.max(tl.where(jm, hi, 0), 0)
    cols = tl.arange(0, BLOCK_K)
    offs_d0 = tl.arange(0, BLOCK_D)
    best = tl.full([BLOCK_N], _INF, tl.float32)
    best_i = tl.full([BLOCK_N], -1, tl.int32)
    for kb in range(k_lo, k_hi, BLOCK_K):
        offs_k = kb + cols
        valid = (offs_k[None, :] >= lo[:, None]) & (offs_k[None, :] < hi[:, None]) & jm[:, None]
        kmask = offs_k < k_hi
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for db in range(0, D, BLOCK_D):
            offs_d = db + offs_d0
            dmask = offs_d < D
            xt = tl.load(x_ptr + rows[:, None] * D + offs_d[None, :],
                         mask=jm[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            et = tl.load(e_ptr + offs_k[:, None].to(tl.int64) * D + offs_d[None, :],
                         mask=kmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            diff = xt[:, None, :] - et[None, :, :]
            acc += tl.sum(diff * diff, 2)
        acc = tl.where(valid, acc, _INF)
        m, a = tl.min(acc, 1, return_indices=True, return_indices_tie_break_left=True)
        take = m < best  # strict: earlier tiles (lower indices) win ties
        best = tl.where(take, m, best)
        best_i = tl.where(take, kb + a, best_i)
    tl.store(index_ptr + rows, best_i.to(tl.int64), mask=jm)
    tl.store(sqdist_ptr + rows, best, mask=jm)


# --------------------------------------------------------------------------------------------
# Host launcher
# --------------------------------------------------------------------------------------------
_FALLBACK_BLOCKS = dict(BLOCK_N=32, BLOCK_K=32, BLOCK_D=8)
_PREP_BLOCKS = dict(BLOCK_R=16, BLOCK_D=64)
CANDIDATE_KINDS = ("bf16", "tf32", "fp16", "fp32")


def candidate_kind(dtype: torch.dtype, D: int, mode: str) -> str:
    """The operands of the first search pass: "bf16", "tf32", "fp16" (rounded, centred copies) or
    "fp32" (the float32-grade pass on its own).

    float32 inputs: bfloat16 for D >= 32 (twice the TF32 rate; the margin list absorbs its larger
    rounding), TF32 below (the epilogue dominates there, and TF32's 8x tighter margin keeps the
    lists short); the option triton_candidates overrides ("bf16" or "tf32"; SGCVQ_TRITON_CANDIDATES,
    `sgcvq.set_options`). bfloat16 / float16 inputs:
    their own dtype (their products are exact in float32; bfloat16 data far from the origin is
    centred and rounded again, float16 never, whose centred values could overflow).
    """
    if mode == "exact_fp32":
        return "fp32"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    forced = _options.current().triton_candidates  # validated by sgcvq.options
    if forced != "auto":
        return forced
    return "bf16" if D >= 32 else "tf32"


_CAND_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}


def _n_bucket(N: int) -> int:
    """The search's autotune size class of a pass over every token: 1 below 16384 tokens (test
    and inference batches), 2 from there (training batches). 0 is the re-search of the tokens a
    pass left uncertified (a count only the device knows: usually a few)."""
    return 1 if N < 16384 else 2


def _centre(e: torch.Tensor, kind: str, D: int) -> torch.Tensor:
    """mu [D] float32: the codebook mean, or zeros where centring would not pay. Both passes use
    the same mu (they share ||x'||^2 and ||e'||^2).

    float32 data and the float32-grade pass alone ("fp32") are always centred (in float32: it
    moves the distances by 4u (xn + me)^2 only). float16 data never (its centred values could
    overflow float16). bfloat16 data is exact as bfloat16 candidates uncentred (no rounding
    residual), so it is centred only where the offset dominates: the uncentred margin grows like
    g (||mu|| + s)^2, the centred one like 2^-9 s^2 (s the spread of the codes), so centre when
    ||mu|| > (sqrt(2^-9 / g) - 1) s. Decided on the device: no host sync.
    """
    if kind == "fp16":
        return torch.zeros(D, dtype=torch.float32, device=e.device)
    mu = e.mean(0, dtype=torch.float32)
    if e.dtype == torch.float32 or kind != "bf16":
        return mu
    n_raw = torch.linalg.vector_norm(e, dim=1, dtype=torch.float32)
    spread2 = (n_raw * n_raw).mean() - (mu * mu).sum()
    f = math.sqrt(2.0**-9 / _sum_error(D)) - 1.0
    use = (mu * mu).sum() > (f * f) * spread2.clamp(min=0.0)
    return mu * use.to(torch.float32)


def _compact(need: torch.Tensor, order: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows order[p] of the positions p < n with need[p] = 1, packed to the front (same order).

    Returns todo [n + 1] int64 (the first n_todo entries valid) and n_todo [1] int64, without a
    host sync: the others scatter into the spare slot n.
    """
    flag = need.to(torch.bool)
    slot = torch.cumsum(need, 0) - 1  # int64
    todo = torch.empty(n + 1, dtype=torch.int64, device=need.device)
    todo.scatter_(0, torch.where(flag, slot, n), order)
    return todo, (slot[-1:] + 1)


def nearest_code_with_stats(
    x: torch.Tensor,
    codebook: torch.Tensor,
    labels: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    mode: str = "exact",
    *,
    force_fallback: bool = False,
    stats: dict | None = None,
    exact_fp32_dot: str | None = None,
    candidates: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`nearest_code` plus n_todo [1] int64 (device): the tokens the direct fallback searched.

    force_fallback sends every token through the direct fallback (tests use it to check it).
    stats, when given, receives "uncertified_per_pass" (a list of [] int64 device tensors: the
    tokens each search pass left uncertified; read them after the call, that syncs),
    "candidates" (the first pass's operand kind), "margin" ([N] float32, the first pass's E),
    "centre" ([D] float32 mu) and "candidate_operands" (the rounded copies of x and the codes).
    exact_fp32_dot: the dot of the float32-grade pass, "tf32x3" (default) or "ieee"; None: the
    option triton_exact_fp32_dot (`sgcvq.options`). candidates: force the first pass's kind (see `candidate_kind`).
    """
    if mode not in ("exact", "fast_exact", "exact_fp32"):
        raise ValueError(f"nearest_code (triton): mode must be 'exact', 'fast_exact' or 'exact_fp32', got {mode!r}")
    N, D = x.shape
    K = codebook.shape[0]
    device = x.device
    index = torch.empty(N, dtype=torch.int64, device=device)
    sqdist = torch.empty(N, dtype=torch.float32, device=device)
    if N == 0:
        return index, sqdist, torch.zeros(1, dtype=torch.int64, device=device)
    if max(K, N) * D >= 2**31:
        raise ValueError(f"nearest_code (triton): N * D and K * D must stay below 2^31, got N = {N}, K = {K}, D = {D}")
    if exact_fp32_dot is None:
        exact_fp32_dot = _options.current().triton_exact_fp32_dot
    if exact_fp32_dot not in ("ieee", "tf32x3"):
        raise ValueError(f"nearest_code (triton): exact_fp32_dot must be 'ieee' or 'tf32x3', got {exact_fp32_dot!r}")
    kind = candidates or candidate_kind(x.dtype, D, mode)
    if kind not in CANDIDATE_KINDS:
        raise ValueError(f"nearest_code (triton): candidates must be one of {CANDIDATE_KINDS}, got {kind!r}")
    if kind == "fp16" and x.dtype != torch.float16:
        raise ValueError("nearest_code (triton): float16 candidates are for float16 inputs only")
    x = x.contiguous()
    e = codebook.contiguous()
    interp = _interpreting()

    # ---- prologue -------------------------------------------------------------------------
    g = _sum_error(D)
    mu = _centre(e, kind, D)
    mu_pad = torch.nn.functional.pad(mu, (0, 256))  # the kernels load whole BLOCK_D chunks (<= 256)
    cand = None if kind == "fp32" else kind
    prep_kind = cand or "none"
    enorm2 = torch.empty(K, dtype=torch.float32, device=device)
    bound = torch.zeros(2, dtype=torch.int32, device=device)  # float bits of two maxima, >= 0
    e_cand = torch.empty((K, D) if cand else (1,), dtype=_CAND_DTYPE.get(cand, torch.float32), device=device)
    pb = _PREP_BLOCKS
    dp1, passes1 = _PRODUCT_ERROR["exact_products" if cand else exact_fp32_dot]
    dp2, passes2 = _PRODUCT_ERROR[exact_fp32_dot]
    _prepare_rows_kernel[(triton.cdiv(K, pb["BLOCK_R"]),)](
        e, mu_pad, e_cand, enorm2, bound, enorm2, enorm2, K, D, g, dp1, passes1, dp2, passes2,
        CAND=prep_kind, WRITE_MARGINS=False, **pb)
    xx = torch.empty(N, dtype=torch.float32, device=device)
    margin1 = torch.empty(N, dtype=torch.float32, device=device)
    margin2 = torch.empty(N, dtype=torch.float32, device=device)
    x_cand = torch.empty((N, D) if cand else (1,), dtype=_CAND_DTYPE.get(cand, torch.float32), device=device)
    _prepare_rows_kernel[(triton.cdiv(N, pb["BLOCK_R"]),)](
        x, mu_pad, x_cand, xx, bound, margin1, margin2, N, D, g, dp1, passes1, dp2, passes2,
        CAND=prep_kind, WRITE_MARGINS=True, **pb)

    ones = torch.ones(1, dtype=torch.int32, device=device).expand(N)  # a view: no [N] fill
    grouped = labels is not None
    if grouped:
        NB = offsets.shape[0]  # C + 1 buckets
        lab = labels.to(torch.int64)
        offs = offsets.to(torch.int64).contiguous()
        bucket = lab + 1  # 0 = label -1 (all codes), c + 1 = class c
        # NOTE: scatter_add on int32 instead of bincount: bincount reads max() on the host.
        counts = torch.zeros(NB, dtype=torch.int32, device=device).scatter_add_(0, bucket, ones)
        order = torch.argsort(bucket, stable=True)  # counting-sort order, token order kept
    else:
        NB = 1
        lab = index  # placeholder, unused without labels
        offs = torch.tensor([0, K], dtype=torch.int64, device=device)  # bucket 0 = all codes
        counts = torch.full((1,), N, dtype=torch.int32, device=device)
        order = torch.arange(N, device=device)

    def launch(rows, bucket_counts, need, first: bool, is_grouped: bool):
        if first and cand:
            xa, ea, precision, margin, centre = x_cand, e_cand, "ieee" if interp else "tf32", margin1, False
            in_fp32 = interp and cand in ("bf16", "fp16")
        else:
            xa, ea, precision, margin, centre = x, e, exact_fp32_dot, margin2, True
            in_fp32 = False

        def grid(meta):
            tiles = triton.cdiv(N, meta["BLOCK_N"])
            return (tiles + NB if is_grouped else tiles,)

        _nearest_code_search_kernel[grid](
            xa, ea, mu_pad, x, e, enorm2, xx, margin, rows, bucket_counts, offs, index, sqdist, need,
            N, K, D, NB, _n_bucket(N) if first else 0,
            GROUPED=is_grouped,
            NB_P2=triton.next_power_of_2(NB),
            DOT_PRECISION=precision,
            DOT_IN_FP32=in_fp32,
            CENTER_IN_KERNEL=centre,
            LIST_R=LIST_R,
        )

    # Pass 1: every token. `need` is indexed by position in `order`.
    need = torch.empty(N, dtype=torch.int32, device=device)
    launch(order, counts, need, True, grouped)
    uncertified = [need.sum()] if stats is not None else []
    if cand:
        # Pass 2: the uncertified tokens only, still grouped by bucket (compaction keeps the sorted
        # order), through the grouped launch with the device-side bucket counts.
        todo, _ = _compact(need, order, N)
        if grouped:
            counts = torch.zeros(NB, dtype=torch.int32, device=device).scatter_add_(0, bucket[order], need)
        else:
            counts = need.sum(0, dtype=torch.int32).reshape(1)
        order = todo[:N]
        need = torch.zeros(N, dtype=torch.int32, device=device)  # positions past the count stay 0
        launch(order, counts, need, False, True)
        if stats is not None:
            uncertified.append(need.sum())
    if stats is not None:
        stats["uncertified_per_pass"] = uncertified
        stats["candidates"] = kind
        stats["margin"] = margin1 if cand else margin2  # [N] E of the first pass
        stats["centre"] = mu
        stats["candidate_operands"] = (x_cand, e_cand) if cand else None

    if force_fallback:
        need = torch.ones(N, dtype=torch.int32, device=device)
        order = torch.arange(N, device=device)
    todo, n_todo = _compact(need, order, N)
    fb = _FALLBACK_BLOCKS
    _nearest_code_fallback_kernel[(triton.cdiv(N, fb["BLOCK_N"]),)](
        x, e, lab, offs, todo, n_todo, index, sqdist, K, D,
        GROUPED=grouped, num_warps=4, **fb,
    )
    return index, sqdist, n_todo


def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    labels: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    mode: str = "exact",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every token (Triton). Inputs are validated by `sgcvq.nearest_code`.

    Args:
        x: [N, D] float32 / bfloat16 / float16.
        codebook: [K, D], same dtype and device.
        labels: optional [N] int32/int64 in [-1, C); token i searches codes
            [offsets[labels[i]], offsets[labels[i] + 1]), label -1 all K codes.
        offsets: [C+1] int32/int64 class code offsets (with labels).
        mode: "exact" (default: the fastest certified path, low-precision candidates first),
            "fast_exact" (the same path, by name) or "exact_fp32" (float32-grade candidates).

    Returns:
        index [N] int64 (float32 argmin, ties to the lowest index), sqdist [N] float32, the
        direct float32 ||x_i - e_index||^2.
    """
    index, sqdist, _ = nearest_code_with_stats(x, codebook, labels, offsets, mode)
    return index, sqdist
