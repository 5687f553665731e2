"""nearest_code on the GPU in Triton: a fused tiled search that never materialises N x K.

Pipeline (no host synchronisation anywhere):

1. O(K) prologue in torch: code norms ||e_k|| in float32 and their maximum; with labels, a
   counting sort of the tokens by class (int32 scatter_add counts + stable argsort).
2. `_nearest_code_fwd_kernel`: a program owns BLOCK_N tokens (with labels: BLOCK_N tokens of one
   class; the grid is the upper bound cdiv(N, BLOCK_N) + C + 1 and surplus programs do nothing)
   and loops over its class's code range in BLOCK_K tiles. Per tile, `tl.dot` over D (an inner
   loop of BLOCK_D, or one resident token tile when D <= BLOCK_D) gives x.e; the score
   ||e||^2 - 2 x.e is reduced into a running top-2 (value, index) plus the third-best value, in
   registers. After the loop the two candidates are re-scored with the direct float32 sum of
   squared differences, and the token is *certified* when a rigorous error bound on the scores
   proves that no other code can be as close (`error_bound_eta`). Writes index [N], sqdist [N]
   and an "uncertified" flag [N].
3. fast_exact on float32 only: the tokens 1xTF32 could not certify (compacted on the device) are
   searched again by the same kernel with 3xTF32 dots.
4. `_nearest_code_fallback_kernel`: tokens still uncertified (compacted on the device; the grid
   is sized by N and programs past the device-side count do nothing) are searched again with the
   direct float32 distance over their whole code range (a CPU simulation of the bound
   on random data puts ~0.1% of the tokens here at D = 256).

Modes: "exact" computes x.e in float32 (`input_precision="ieee"`, FMA) for float32 inputs, or
with 3xTF32 when asked (`exact_fp32_dot`); "fast_exact" uses 1xTF32 tensor cores, then 3xTF32
for the uncertified tokens. bfloat16 / float16 inputs always use the tensor cores in their own
dtype: their products are exact in float32, so both modes are the same single pass there. In
every mode the index is the float32 argmin, ties to the lowest index: certified candidates are
re-scored in float32, and the fallback computes the rest directly.

Extra memory: O(N + K) (norms, flags, compacted token lists, the class sort).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["nearest_code", "nearest_code_with_stats", "error_bound_eta"]

_INF = tl.constexpr(float("inf"))  # a global the kernels may read: it must be a constexpr


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------------------------
# Error bound
# --------------------------------------------------------------------------------------------
_U = 2.0**-24  # float32 unit roundoff
# NOTE: tensor cores may truncate instead of rounding while accumulating in float32, so every
# accumulation step is charged a full ulp (2u) rather than u.
_U_ACC = 2.0**-23
# Per precision: (relative error of one product x_d * e_d as the dot sees it, products summed
# per x.e). TF32 keeps 10 mantissa bits and the hardware may truncate the low 13 bits of each
# operand: (1 + 2^-10)^2 - 1 <= 2^-9 + 2^-20. 3xTF32 splits a = big + small (both TF32) and sums
# big*big + big*small + small*big: the split leaves <= 2^-20 |a| per operand and the dropped
# small*small term <= 2^-20 |ab|, so <= 2^-18 in all, over 3D accumulated products.
_PRODUCT_ERROR = {
    "ieee": (_U, 1),
    "exact_products": (_U, 1),
    "tf32": (2.0**-9 + 2.0**-19, 1),
    "tf32x3": (2.0**-18, 3),
}


def error_bound_eta(D: int, precision: str) -> float:
    """Relative bound eta: |computed - true| of every quantity the certification compares is at
    most eta * (||x|| + max_k ||e_k||)^2.

    With M = (||x|| + e_max)^2: the dot error is <= (delta + (P D + 1) u_acc) ||x|| ||e_k|| for
    P D accumulated products (any summation order), the score ||e||^2 - 2 x.e doubles it
    (2 ||x|| ||e|| <= M), the norms, the direct re-score and ||x||^2 each add <= (D+3) u M, a few
    roundings add u M each. The factor 2 covers the rounding of M itself and leaves slack.
    `precision` is "ieee" (float32 FMA), "tf32", "tf32x3" or "exact_products" (bfloat16/float16
    operands: their products are exact in float32).
    """
    delta, passes = _PRODUCT_ERROR[precision]
    return 2.0 * (delta + (passes * D + 1) * _U_ACC + (3 * D + 10) * _U)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
# (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages). Tensor-core tiles (bf16/fp16/tf32) are
# H100-oriented: 64-128 tokens x 64-128 codes, D in 32-64 chunks, 3-4 stages. ptxas (sm_90,
# Triton 3.6 and 3.9, compiled offline) reports no spills for bf16/fp16/tf32 and at most a few
# hundred bytes for some 3xTF32 tiles (the last one has none). The float32 FMA dot ("ieee") holds
# its operands in registers, so it gets smaller tiles (128 x 128 spills there).
_TENSOR_CORE_SHAPES = [(128, 64, 64, 8, 3), (128, 128, 64, 8, 3), (64, 128, 64, 8, 3), (128, 128, 32, 8, 4),
                       (64, 64, 32, 4, 4)]
_FMA_SHAPES = [(64, 64, 32, 4, 3), (64, 128, 32, 8, 3), (64, 64, 64, 4, 3)]


def _search_configs():
    if _interpreting():
        # One small config: the interpreter is slow and CI must stay fast; 32-wide tiles still
        # exercise partial tiles and multi-tile loops at the test shapes.
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 16}, num_warps=4, num_stages=1)]
    shapes = _TENSOR_CORE_SHAPES + _FMA_SHAPES
    if os.environ.get("SGCVQ_TRITON_AUTOTUNE", "1") == "0":
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
    ieee = kwargs.get("DOT_PRECISION", named_args.get("DOT_PRECISION")) == "ieee"
    # A BLOCK_D wider than D only loads zeros; tl.dot needs at least 16.
    cap = max(16, triton.next_power_of_2(named_args["D"]))
    seen, out = set(), []
    for c in configs:
        kw = dict(c.kwargs)
        family = (kw["BLOCK_N"], kw["BLOCK_K"], kw["BLOCK_D"], c.num_warps, c.num_stages) in _FMA_KEYS
        if family != ieee:
            continue
        kw["BLOCK_D"] = min(kw["BLOCK_D"], cap)
        key = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    return out


@triton.autotune(
    configs=_search_configs(),
    key=["D", "GROUPED", "DOT_PRECISION"],  # not K: one tuning per feature width
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.heuristics({"X_RESIDENT": lambda args: args["D"] <= args["BLOCK_D"]})
@triton.jit
def _nearest_code_fwd_kernel(
    x_ptr,  # [N, D] float32/bfloat16/float16
    e_ptr,  # [K, D] same dtype
    enorm2_ptr,  # [K] float32, ||e_k||^2
    emax_ptr,  # [1] float32, max_k ||e_k||
    perm_ptr,  # [N] int64 token order sorted by bucket (GROUPED only)
    bucket_count_ptr,  # [NB] int32 tokens per bucket; bucket 0 = label -1, bucket c+1 = class c
    offsets_ptr,  # [C+1] int64 class code offsets (GROUPED only)
    index_ptr,  # [N] int64 out
    sqdist_ptr,  # [N] float32 out
    need_ptr,  # [N] int32 out, per sorted position: 1 = not certified, the fallback decides
    N,
    K,
    D,
    NB,
    eta,
    GROUPED: tl.constexpr,
    NB_P2: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    X_RESIDENT: tl.constexpr,
    RESCORE_D: tl.constexpr = 16,
):
    pid = tl.program_id(0)
    if GROUPED:
        # Tile pid -> (bucket, tile within bucket). The grid is an upper bound on the tile count
        # (cdiv(N, BLOCK_N) + NB), so the host never reads the bucket sizes.
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
    cols = tl.arange(0, BLOCK_K)
    offs_d0 = tl.arange(0, BLOCK_D)

    v1 = tl.full([BLOCK_N], _INF, tl.float32)
    v2 = tl.full([BLOCK_N], _INF, tl.float32)
    v3 = tl.full([BLOCK_N], _INF, tl.float32)
    i1 = tl.full([BLOCK_N], -1, tl.int32)
    i2 = tl.full([BLOCK_N], -1, tl.int32)

    if X_RESIDENT:
        # D fits one chunk: the token tile stays in registers for the whole code loop, and the
        # code loop itself is what the compiler software-pipelines (num_stages).
        dmask_r = offs_d0 < D
        x_res = tl.load(x_ptr + rows[:, None] * D + offs_d0[None, :],
                        mask=tok_mask[:, None] & dmask_r[None, :], other=0.0)
        if DOT_IN_FP32:
            x_res = x_res.to(tl.float32)

    for kb in range(k0, k1, BLOCK_K):
        offs_k = kb + cols
        kmask = offs_k < k1
        if X_RESIDENT:
            et = tl.load(e_ptr + offs_k[:, None] * D + offs_d0[None, :],
                         mask=kmask[:, None] & dmask_r[None, :], other=0.0)
            if DOT_IN_FP32:
                et = et.to(tl.float32)
            acc = tl.dot(x_res, tl.trans(et), input_precision=DOT_PRECISION)
        else:
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            for db in range(0, D, BLOCK_D):
                offs_d = db + offs_d0
                dmask = offs_d < D
                xt = tl.load(x_ptr + rows[:, None] * D + offs_d[None, :],
                             mask=tok_mask[:, None] & dmask[None, :], other=0.0)
                et = tl.load(e_ptr + offs_k[:, None] * D + offs_d[None, :],
                             mask=kmask[:, None] & dmask[None, :], other=0.0)
                if DOT_IN_FP32:
                    # The interpreter's bf16 dot is wrong; bf16 products are exact in fp32 anyway.
                    xt = xt.to(tl.float32)
                    et = et.to(tl.float32)
                acc = tl.dot(xt, tl.trans(et), acc, input_precision=DOT_PRECISION)
        en = tl.load(enorm2_ptr + offs_k, mask=kmask, other=0.0)
        # ||x - e||^2 - ||x||^2 = ||e||^2 - 2 x.e: ||x||^2 is common to the row, added back later.
        s = tl.where(kmask[None, :], en[None, :] - 2.0 * acc, _INF)
        m1, a1 = tl.min(s, 1, return_indices=True, return_indices_tie_break_left=True)
        # Only tiles that can change some row's top 3 pay for the 2nd and 3rd extraction.
        if tl.max((m1 < v3).to(tl.int32), 0) > 0:
            s = tl.where(cols[None, :] == a1[:, None], _INF, s)
            m2, a2 = tl.min(s, 1, return_indices=True, return_indices_tie_break_left=True)
            s = tl.where(cols[None, :] == a2[:, None], _INF, s)
            m3 = tl.min(s, 1)
            g1 = kb + a1
            g2 = kb + a2
            # Merge two sorted 3-lists. Running entries come from earlier tiles (lower indices),
            # so they win ties: strict '<' keeps the lowest index among equal scores.
            b1 = m1 < v1
            o1 = tl.where(b1, m1, v1)
            oi1 = tl.where(b1, g1, i1)
            ha = tl.where(b1, v1, v2)
            hia = tl.where(b1, i1, i2)
            hb = tl.where(b1, m2, m1)
            hib = tl.where(b1, g2, g1)
            b2 = hb < ha
            o2 = tl.where(b2, hb, ha)
            oi2 = tl.where(b2, hib, hia)
            nb = b1.to(tl.int32) + b2.to(tl.int32)
            next_a = tl.where(nb == 0, v3, tl.where(nb == 1, v2, v1))
            next_b = tl.where(nb == 0, m1, tl.where(nb == 1, m2, m3))
            v3 = tl.minimum(next_a, next_b)
            v1 = o1
            i1 = oi1
            v2 = o2
            i2 = oi2

    # Re-score both candidates with the direct float32 distance; ||x||^2 for the bound.
    has1 = tok_mask & (i1 >= 0)
    has2 = tok_mask & (i2 >= 0)
    c1 = tl.maximum(i1, 0)
    c2 = tl.maximum(i2, 0)
    d1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    d2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    xn2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    # Narrow D chunks here: three [BLOCK_N, RESCORE_D] gathers of 64-bit pointers are live at once.
    offs_r0 = tl.arange(0, RESCORE_D)
    for db in range(0, D, RESCORE_D):
        offs_d = db + offs_r0
        dmask = offs_d < D
        xt = tl.load(x_ptr + rows[:, None] * D + offs_d[None, :],
                     mask=tok_mask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        e1 = tl.load(e_ptr + c1[:, None] * D + offs_d[None, :],
                     mask=has1[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        e2 = tl.load(e_ptr + c2[:, None] * D + offs_d[None, :],
                     mask=has2[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        t = xt - e1
        d1 += tl.sum(t * t, 1)
        t = xt - e2
        d2 += tl.sum(t * t, 1)
        xn2 += tl.sum(xt * xt, 1)
    pick2 = has2 & ((d2 < d1) | ((d2 == d1) & (i2 < i1)))
    best = tl.where(pick2, i2, i1)
    bd = tl.where(pick2, d2, d1)
    # Certified: every other code k has true distance >= v3 + ||x||^2 - err > bd + err >= the true
    # distance of `best`, so the fp32 argmin is one of the two candidates. v3 = inf (fewer than
    # three codes in range) certifies trivially.
    emax = tl.load(emax_ptr)
    root = tl.sqrt(xn2) + emax
    certified = (bd + eta * root * root < v3 + xn2) & has1
    tl.store(index_ptr + rows, best.to(tl.int64), mask=tok_mask)
    tl.store(sqdist_ptr + rows, bd, mask=tok_mask)
    tl.store(need_ptr + pos, (~certified).to(tl.int32), mask=tok_mask)


@triton.jit
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
            et = tl.load(e_ptr + offs_k[:, None] * D + offs_d[None, :],
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


def _search_passes(dtype: torch.dtype, mode: str, exact_fp32_dot: str) -> list[tuple[str, str]]:
    """The search passes, as (tl.dot input_precision, error-bound class) pairs.

    Each pass after the first searches again only the tokens the previous one left uncertified;
    the direct float32 fallback kernel then takes whatever is left.
    """
    if dtype != torch.float32:
        # bf16/fp16 operands: products are exact in fp32 (input_precision only affects fp32), so
        # the bound is as tight as the fp32 FMA path's: one pass, both modes.
        return [("ieee" if _interpreting() else "tf32", "exact_products")]
    if mode == "exact":
        # "ieee" (float32 FMA, the default) or "tf32x3" (tensor cores); both certified, so both
        # return the same index: which one is faster on a given GPU is for the benchmarks to say.
        return [(exact_fp32_dot, exact_fp32_dot)]
    # fast_exact: 1xTF32 leaves 5-40% of random tokens uncertified (CPU simulation of the bound),
    # so those go through 3xTF32 (fp32-grade products at ~1/3 of the TF32 rate), not the slow
    # CUDA-core fallback.
    return [("tf32", "tf32"), ("tf32x3", "tf32x3")]


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`nearest_code` plus n_todo [1] int64 (device): the tokens the direct fallback searched.

    force_fallback sends every token through the fallback (tests use it to check that path).
    stats, when given, receives "uncertified_per_pass": a list of [] int64 device tensors, the
    tokens each search pass left uncertified (read them after the call; that syncs).
    exact_fp32_dot: the dot of mode "exact" on float32 inputs, "ieee" or "tf32x3"; None reads
    SGCVQ_TRITON_EXACT_FP32_DOT (default "ieee").
    """
    N, D = x.shape
    K = codebook.shape[0]
    device = x.device
    index = torch.empty(N, dtype=torch.int64, device=device)
    sqdist = torch.empty(N, dtype=torch.float32, device=device)
    if N == 0:
        return index, sqdist, torch.zeros(1, dtype=torch.int64, device=device)
    if K * D >= 2**31:
        raise ValueError(f"nearest_code (triton): K * D = {K * D} must stay below 2^31")
    x = x.contiguous()
    e = codebook.contiguous()
    enorm = torch.linalg.vector_norm(e, dim=1, dtype=torch.float32)  # [K]
    enorm2 = enorm * enorm
    emax = enorm.max().reshape(1)
    ones = torch.ones(N, dtype=torch.int32, device=device)

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

    def launch(rows, bucket_counts, need, precision, bound_class, is_grouped):
        def grid(meta):
            tiles = triton.cdiv(N, meta["BLOCK_N"])
            return (tiles + NB if is_grouped else tiles,)

        _nearest_code_fwd_kernel[grid](
            x, e, enorm2, emax, rows, bucket_counts, offs, index, sqdist, need,
            N, K, D, NB, error_bound_eta(D, bound_class),
            GROUPED=is_grouped,
            NB_P2=triton.next_power_of_2(NB),
            DOT_PRECISION=precision,
            DOT_IN_FP32=_interpreting() and x.dtype == torch.bfloat16,
        )

    if exact_fp32_dot is None:
        exact_fp32_dot = os.environ.get("SGCVQ_TRITON_EXACT_FP32_DOT", "ieee")
    if exact_fp32_dot not in ("ieee", "tf32x3"):
        raise ValueError(f"nearest_code (triton): exact_fp32_dot must be 'ieee' or 'tf32x3', got {exact_fp32_dot!r}")
    passes = _search_passes(x.dtype, mode, exact_fp32_dot)
    # Pass 1: every token. `need` is indexed by position in `order`.
    need = torch.empty(N, dtype=torch.int32, device=device)
    launch(order, counts, need, *passes[0], grouped)
    uncertified = [need.sum()]
    # Later passes: the uncertified tokens only, still grouped by bucket (compaction keeps the
    # sorted order), through the grouped launch with the device-side bucket counts.
    for precision, bound_class in passes[1:]:
        todo, _ = _compact(need, order, N)
        if grouped:
            sorted_bucket = bucket[order]
            counts = torch.zeros(NB, dtype=torch.int32, device=device).scatter_add_(0, sorted_bucket, need)
        else:
            counts = need.sum(0, dtype=torch.int32).reshape(1)
        order = todo[:N]
        need = torch.zeros(N, dtype=torch.int32, device=device)  # positions past the count stay 0
        launch(order, counts, need, precision, bound_class, True)
        uncertified.append(need.sum())
    if stats is not None:
        stats["uncertified_per_pass"] = uncertified

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
        mode: "exact" (float32 dot for float32 inputs) or "fast_exact" (TF32 candidates, certified
            and re-scored in float32: the same index).

    Returns:
        index [N] int64 (float32 argmin, ties to the lowest index), sqdist [N] float32, the
        direct float32 ||x_i - e_index||^2.
    """
    index, sqdist, _ = nearest_code_with_stats(x, codebook, labels, offsets, mode)
    return index, sqdist
