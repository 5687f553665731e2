"""The CPU bf16 search's two small-D scans (D <= 16) and the bf16 tiles' fused epilogue (D > 16).

csrc/cpu/bf16_tile_avx512.h: at D <= 16 the bf16 candidates come from the branchy list scan
(bf16_small_scan_avx512) or the branch-free window (bf16_small_window_avx512: a per-lane top-2 whose
values carry their code's place in the low mantissa bits, and a second look at any lane holding two
codes near the best); SGCVQ_CPU_SMALLD=window / branchy forces
one, and SGCVQ_CPU_SMALLD_SEED=cells / first how the branchy scan over every code seeds each
token's best (its orthant cell, the default, or the first 256 codes). Each must give the float32 argmin of every token (ties to the lowest index, never a code
outside the token's group): the same index and distance as the float32 candidates (mode
"exact_fp32"), which the oracle tests in test_ops_nearest_code.py pin to the float64 reference.
Needs a CPU with AVX512_BF16; skipped elsewhere.
"""
from __future__ import annotations

import pytest
import torch

import sgcvq
from sgcvq import nearest_code_reference, ops

CAPS = sgcvq._C.cpu_capabilities() if ops.HAS_CPU_EXTENSION else {}
pytestmark = pytest.mark.skipif("avx512bf16" not in CAPS.get("bf16_paths", ()),
                                reason="needs the AVX512_BF16 path (csrc/cpu/bf16_tile_avx512.h)")

SCANS = ["window", "branchy", "branchy/first"]  # scan[/seed]: SGCVQ_CPU_SMALLD[, SGCVQ_CPU_SMALLD_SEED]
N_BF16 = 600  # the bf16 path needs at least 256 tokens (kBf16MinTokens)


@pytest.fixture
def scan(request, monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx512bf16")
    name, _, seed = request.param.partition("/")
    monkeypatch.setenv("SGCVQ_CPU_SMALLD", name)
    monkeypatch.setenv("SGCVQ_CPU_SMALLD_SEED", seed or "cells")
    return request.param


def check_exact(x, codebook, labels=None, offsets=None):
    """Every mode gives exact_fp32's index and distance; the index stays inside the token's group
    and is the float64 reference's up to float32 near-ties."""
    want_i, want_d = torch.ops.sgcvq.nearest_code(x, codebook, labels, offsets, "exact_fp32")
    for mode in ("fast_exact", "exact"):
        got_i, got_d = torch.ops.sgcvq.nearest_code(x, codebook, labels, offsets, mode)
        bad = (got_i != want_i).nonzero()[:5, 0].tolist()
        assert not bad, f"mode {mode}: tokens {bad} got {got_i[bad].tolist()}, exact_fp32 {want_i[bad].tolist()}"
        assert torch.equal(got_d, want_d), f"mode {mode}: distances differ"
    if labels is not None:
        lab = labels.long()
        own = lab >= 0
        lo, hi = offsets.long()[lab.clamp(min=0)], offsets.long()[lab.clamp(min=0) + 1]
        assert bool(((want_i >= lo) & (want_i < hi))[own].all()), "a token left its code group"
    ref_i = nearest_code_reference(x.double(), codebook.double(), labels, offsets)[0]
    xd, ed = x.double(), codebook.double()
    d_got = (xd - ed[want_i]).square().sum(1)
    d_ref = (xd - ed[ref_i]).square().sum(1)
    # float32 rounding of the direct sum: a relative 2^-20 covers D <= 16 terms generously.
    assert bool((d_got <= d_ref * (1 + 2.0**-20) + 1e-30).all()), "not the nearest code"


@pytest.mark.parametrize("scan", SCANS, indirect=True)
@pytest.mark.parametrize("D", [1, 2, 3, 5, 8, 9, 15, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_small_d_scans_match_float32_candidates(D, dtype, scan):
    g = torch.Generator().manual_seed(D)
    K = 1000 + D
    x = torch.randn(N_BF16, D, generator=g).to(dtype)
    codebook = torch.randn(K, D, generator=g).to(dtype)
    check_exact(x, codebook)
    # Groups that start and end inside 16-code vectors (and one of a single code), the ignore
    # label -1 searching every code.
    offsets = torch.tensor([0, 7, 8, 300, 301, 777, K])
    labels = torch.randint(-1, len(offsets) - 1, (N_BF16,), generator=g)
    check_exact(x, codebook, labels, offsets)


@pytest.mark.parametrize("scan", SCANS, indirect=True)
@pytest.mark.parametrize("D", [4, 8, 16])
def test_runner_up_in_the_same_lane_of_the_window(D, scan):
    # The window keeps two values a lane: a token whose best, runner-up and third code all sit in
    # one lane (16 codes apart) and within the bf16 margin of each other must still get the exact
    # answer (the window searches that lane again, lane_below, for every code inside the margin).
    g = torch.Generator().manual_seed(50 + D)
    K = 2048
    codebook = torch.randn(K, D, generator=g)
    spots = torch.tensor([5, 700, 1500, K - 40])
    for p in spots.tolist():
        for j in (16, 32):
            codebook[p + j] = codebook[p] + 1e-4 * torch.randn(D, generator=g)
    x = codebook[spots[torch.randint(len(spots), (N_BF16,), generator=g)]] + 1e-3 * torch.randn(N_BF16, D, generator=g)
    check_exact(x, codebook)
    offsets = torch.tensor([0, 3, 1024, K])
    check_exact(x, codebook, torch.randint(0, 3, (N_BF16,), generator=g), offsets)


@pytest.mark.parametrize("scan", SCANS, indirect=True)
@pytest.mark.parametrize("D", [3, 8, 16])
def test_lanes_with_two_codes_near_the_best_stay_in_bf16(D, scan):
    # Every code has a near twin 16 codes on (the same lane of the window's next vector): every
    # token's lane holds two codes inside the margin. The window searches those lanes again from the
    # lane-by-lane codes instead of sending the token to the float32 search: exact answers, and
    # at most a few tokens re-searched (genuine near-ties at D = 3: 10 of 600), where every token
    # was before. Groups start and end inside vectors and lane blocks.
    g = torch.Generator().manual_seed(90 + D)
    K = 1600
    codebook = torch.randn(K, D, generator=g)
    twin = (torch.arange(K) % 32) >= 16
    codebook[twin] = codebook[torch.arange(K)[twin] - 16] + 1e-4 * torch.randn(int(twin.sum()), D, generator=g)
    base = torch.arange(K)[~twin]
    x = codebook[base[torch.randint(len(base), (N_BF16,), generator=g)]] + 3e-3 * torch.randn(N_BF16, D, generator=g)
    offsets = torch.tensor([0, 5, 261, 262, 1001, K])
    labels = torch.randint(0, len(offsets) - 1, (N_BF16,), generator=g)
    for lab, off in ((None, None), (labels, offsets)):
        check_exact(x, codebook, lab, off)
        torch.ops.sgcvq.nearest_code(x, codebook, lab, off, "fast_exact")
        assert sgcvq._C.last_fast_exact_redo() <= 0.02 * N_BF16


@pytest.mark.parametrize("scan", ["window", "branchy"], indirect=True)
@pytest.mark.parametrize("D", [8, 64])
def test_groups_of_small_codes_take_their_own_bound(D, scan):
    # One group's codes are 100x the others'. Each token's bf16 bound (margin) grows with the
    # largest code it may meet: with the codebook's maximum, every token of the small groups
    # listed dozens of codes and went to the float32 search; with its own group's maximum (a
    # code split searches one group), almost none does. Exact either way; the large group and
    # the ignore label -1 (all codes) keep the codebook's bound. D = 64 takes the bf16 tiles.
    g = torch.Generator().manual_seed(7 + D)
    K, N = 2048, 2048
    codebook = torch.randn(K, D, generator=g)
    codebook[:512] *= 100.0
    offsets = torch.tensor([0, 512, 1280, K])
    labels = torch.randint(1, 3, (N,), generator=g)
    x = codebook[offsets[labels] + torch.randint(0, 768, (N,), generator=g)] + 0.5 * torch.randn(N, D, generator=g)
    check_exact(x, codebook, labels, offsets)
    torch.ops.sgcvq.nearest_code(x, codebook, labels, offsets, "fast_exact")
    assert sgcvq._C.last_fast_exact_redo() <= 0.02 * N
    # The large group's tokens and the ignore label: still exact.
    labels[:300] = 0
    labels[300:400] = -1
    x[:400] = 100.0 * torch.randn(400, D, generator=g)
    check_exact(x, codebook, labels, offsets)


@pytest.mark.parametrize("scan", SCANS, indirect=True)
@pytest.mark.parametrize("K", [16, 37, 1000, 4100])
def test_identical_codes_tie_to_the_lowest_index(K, scan):
    x = torch.randn(N_BF16, 8)
    codebook = torch.randn(1, 8).expand(K, 8).contiguous()
    index = torch.ops.sgcvq.nearest_code(x, codebook, None, None, "fast_exact")[0]
    assert bool((index == 0).all())
    # Two copies of every code: the first copy wins.
    codebook = torch.randn(K, 8).repeat(2, 1)
    index = torch.ops.sgcvq.nearest_code(x, codebook, None, None, "fast_exact")[0]
    assert bool((index < K).all())
    check_exact(x, codebook)


@pytest.mark.parametrize("scan", SCANS, indirect=True)
def test_near_duplicate_codes(scan):
    g = torch.Generator().manual_seed(7)
    centres = torch.randn(4, 8, generator=g)
    codebook = (centres.repeat_interleave(300, 0) + 1e-3 * torch.randn(1200, 8, generator=g))
    x = centres[torch.randint(4, (N_BF16,), generator=g)] + 1e-2 * torch.randn(N_BF16, 8, generator=g)
    check_exact(x, codebook)


@pytest.mark.parametrize("scan", SCANS, indirect=True)
def test_large_values_and_non_finite_tokens(scan):
    # Values far from 1 (the mantissa tag is relative), and a NaN / inf token: those get the first
    # code of their range, as on every path.
    g = torch.Generator().manual_seed(3)
    x = 1e15 * torch.randn(N_BF16, 8, generator=g)
    codebook = 1e15 * torch.randn(3000, 8, generator=g)
    check_exact(x, codebook)
    x[3, 2] = float("nan")
    x[4, 0] = float("inf")
    want = torch.ops.sgcvq.nearest_code(x, codebook, None, None, "exact_fp32")[0]
    got = torch.ops.sgcvq.nearest_code(x, codebook, None, None, "fast_exact")[0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", ["cells", "first"])
@pytest.mark.parametrize("D", [2, 8, 13])
def test_orthant_seed_with_lopsided_cells(D, seed, monkeypatch):
    # The default exact search at K > 4096 (the branchy scan). Codes crowded into a few orthant
    # cells (one cell far over the seed's 256 codes, most cells empty) and tokens from every
    # orthant, so many tokens seed from an empty cell; K not a multiple of 16.
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx512bf16")
    monkeypatch.setenv("SGCVQ_CPU_SMALLD_SEED", seed)
    g = torch.Generator().manual_seed(90 + D)
    K = 5003
    codebook = torch.randn(K, D, generator=g)
    codebook[: K // 2] = codebook[: K // 2].abs() + 0.5  # half the codes in the all-positive orthant
    codebook[K // 2 : K // 2 + 40] = -codebook[K // 2 : K // 2 + 40].abs()  # a few in the negative one
    # 2100 tokens on one thread: five runs of 512 tokens, so no item splits the codes (the seed
    # needs every code in the item's range); on the default threads the codes may be split.
    N = 2100
    x = 2.0 * torch.randn(N, D, generator=g)
    x[:50] = codebook[K // 2 : K // 2 + 50] + 1e-3 * torch.randn(50, D, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check_exact(x, codebook)
        check_exact(x.to(torch.bfloat16), codebook.to(torch.bfloat16))
    finally:
        torch.set_num_threads(threads)
    check_exact(x, codebook)


@pytest.mark.parametrize("seed", ["cells", "first"])
def test_seeded_lists_certify_gaussian_tokens(seed, monkeypatch):
    # A wrong seed cannot give a wrong answer (the certificate sends such tokens to the float32
    # search), so this watches the redo count: a seed below every code's value would send them all.
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx512bf16")
    monkeypatch.setenv("SGCVQ_CPU_SMALLD_SEED", seed)
    g = torch.Generator().manual_seed(11)
    x, codebook = torch.randn(2100, 8, generator=g), torch.randn(5003, 8, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one item per 512 tokens over every code (see above)
    try:
        check_exact(x, codebook)
        torch.ops.sgcvq.nearest_code(x, codebook, None, None, "exact")
        assert sgcvq._C.last_fast_exact_redo() <= 0.02 * len(x)
    finally:
        torch.set_num_threads(threads)


def test_unknown_seed_is_an_error(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx512bf16")
    monkeypatch.setenv("SGCVQ_CPU_SMALLD", "branchy")
    monkeypatch.setenv("SGCVQ_CPU_SMALLD_SEED", "best")
    with pytest.raises(RuntimeError, match="SGCVQ_CPU_SMALLD_SEED must be 'cells' or 'first', got 'best'"):
        torch.ops.sgcvq.nearest_code(torch.randn(N_BF16, 8), torch.randn(5000, 8), None, None, "exact")


def test_unknown_scan_is_an_error(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx512bf16")
    monkeypatch.setenv("SGCVQ_CPU_SMALLD", "fast")
    with pytest.raises(RuntimeError, match="SGCVQ_CPU_SMALLD must be 'window' or 'branchy', got 'fast'"):
        torch.ops.sgcvq.nearest_code(torch.randn(N_BF16, 8), torch.randn(100, 8), None, None, "fast_exact")


@pytest.mark.parametrize("D", [17, 64, 65])
def test_tile_epilogue_with_groups_inside_blocks(D, monkeypatch):
    # D > 16: the AVX512_BF16 tiles add the norms and give each row's minimum over the item's codes
    # only; groups that start and end inside 64-code blocks (and inside 16-code vectors) must not
    # see their neighbours' codes.
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx512bf16")
    g = torch.Generator().manual_seed(D)
    K = 1500
    x = torch.randn(N_BF16, D, generator=g)
    codebook = torch.randn(K, D, generator=g)
    offsets = torch.tensor([0, 1, 70, 71, 600, 1100, K])
    labels = torch.randint(-1, len(offsets) - 1, (N_BF16,), generator=g)
    # Each token's overall nearest code just outside its group: the group's edge decides.
    check_exact(x, codebook, labels, offsets)
    near = codebook[offsets[1:-1]] + 1e-2 * torch.randn(len(offsets) - 2, D, generator=g)
    x[: len(near)] = near
    labels[: len(near)] = torch.arange(len(near))  # group c ends where the code near token c sits
    check_exact(x, codebook, labels, offsets)
    check_exact(x, codebook)


def test_batched_bounds_match_the_scalar_bound():
    # bf16_bounds_avx512 (eight tokens a register) repeats bf16_bound's operations in its order:
    # the same bits for every token, from zero and subnormals to overflow, +inf and NaN.
    assert sgcvq._C.bf16_bounds_mismatches() == 0
