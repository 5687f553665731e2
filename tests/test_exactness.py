"""Tests that demand the exact answer from the CPU search (docs/numerics.md).

The oracle is `sgcvq.reference.nearest_code_oracle` (the float64 argmin); wherever
`exact_index_required` holds (the runner-up farther than float32's summation error can reach) the
index must equal it exactly, with no near-tie allowance. The inputs sit where the certificate
matters: near-ties inside the candidates' margin, at a common offset that makes the approximate
distances ||e||^2 - 2 x.e far less precise than the direct one.
"""
from __future__ import annotations

import math

import pytest
import torch

import sgcvq
from sgcvq import ops
from sgcvq.reference import exact_index_required, float32_certificate, nearest_code_oracle, sum_error

pytestmark = pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="needs the compiled CPU extension")

# D <= 16 takes the register-blocked scan, larger D the GEMM tiles (csrc/cpu/collector.h).
SCAN_D, GEMM_D = 8, 40


def f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def fl_sum_squares(t: torch.Tensor) -> torch.Tensor:
    """fl(||t_i||^2) in float32 (any order is within the certificate's g)."""
    return (t.float() * t.float()).sum(-1)


# --------------------------------------------------------------------------------------------
# White box: the compiled float32 certificate against its float64 model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rounds", [False, True], ids=["fp32-gemm", "bf32-gemm"])
@pytest.mark.parametrize("D", [1, 3, 8, 16, 17, 64, 255, 1024])
def test_float32_certificate_matches_the_float64_model(D, rounds):
    gen = torch.Generator().manual_seed(D)
    for _ in range(25):
        scale = 10.0 ** float(torch.randint(-3, 7, (1,), generator=gen))
        max_norm2 = f32(float(torch.rand(1, generator=gen)) * scale)
        xx = f32(float(torch.rand(1, generator=gen)) * scale)
        thr = f32(-xx + float(torch.rand(1, generator=gen)) * scale * 0.1)
        best = f32(float(torch.rand(1, generator=gen)) * scale * 0.1)
        got = sgcvq._C.float32_certificate(D, max_norm2, rounds, xx, thr, best)
        want = float32_certificate(D, max_norm2, xx, thr, best, rounds)
        for key in ("g", "max_e2", "delta"):
            assert math.isclose(got[key], want[key], rel_tol=1e-12), (key, got, want)
        assert math.isclose(got["floor"], want["floor"], rel_tol=1e-9, abs_tol=1e-9 * scale), (got, want)
        if abs(want["floor"] - best) > 1e-6 * scale:
            assert got["holds"] == want["holds"], (got, want)
        assert got["delta"] >= 2 * sum_error(D) * got["max_e2"] > 0  # the error term is there


def test_float32_certificate_decides_at_its_floor():
    # Just below the floor certifies, just above does not; non-finite values never do.
    D, max_norm2, xx, thr = 32, 4096.0, 5000.0, -4990.0
    floor = float32_certificate(D, max_norm2, xx, thr, 0.0)["floor"]
    below, above = f32(floor * (1 - 1e-5)), f32(floor * (1 + 1e-5))
    assert sgcvq._C.float32_certificate(D, max_norm2, False, xx, thr, below)["holds"]
    assert not sgcvq._C.float32_certificate(D, max_norm2, False, xx, thr, above)["holds"]
    assert not sgcvq._C.float32_certificate(D, max_norm2, False, float("nan"), thr, below)["holds"]
    assert not sgcvq._C.float32_certificate(D, max_norm2, False, xx, float("inf"), below)["holds"]


# --------------------------------------------------------------------------------------------
# Near-ties at a common offset
# --------------------------------------------------------------------------------------------
def offset_near_ties(N: int, D: int, offset: float, gaps: torch.Tensor, far: int, seed: int):
    """Tokens around a point at `offset`, each with its own pair of codes at float64 distances 1
    and 1 + gap (gap per token), and `far` codes far from every token; all rounded to float32.

    The tokens are ~10 apart per feature, so a token's pair are its two nearest codes (the others'
    pairs are ~200 D away). The pair of token i is codes 2i and 2i + 1, in random order.
    """
    gen = torch.Generator().manual_seed(seed)
    p = offset + torch.randn(D, generator=gen, dtype=torch.float64)
    x = p + 10.0 * torch.randn(N, D, generator=gen, dtype=torch.float64)
    w = torch.nn.functional.normalize(torch.randn(N, 2, D, generator=gen, dtype=torch.float64), dim=-1)
    radius = torch.stack([torch.ones_like(gaps), (1.0 + gaps)], 1).sqrt()  # [N, 2]
    swap = torch.rand(N, generator=gen) < 0.5
    radius = torch.where(swap[:, None], radius.flip(1), radius)
    pairs = x[:, None, :] + radius[..., None] * w  # [N, 2, D]
    far_codes = p + 1000.0 * torch.nn.functional.normalize(torch.randn(far, D, generator=gen, dtype=torch.float64), dim=-1)
    codebook = torch.cat([pairs.reshape(2 * N, D), far_codes])
    return x.float(), codebook.float()


def oracle_and_required(x, codebook):
    index, best, runner = nearest_code_oracle(x, codebook)
    return index, exact_index_required(best, runner, x.shape[1])


def expansion_allowance(x, codebook):
    """Per token: the float32 certificate's delta and the slack g fl||x||^2 of its floor, float64."""
    D = x.shape[1]
    xx = fl_sum_squares(x).double()
    max_norm2 = float(fl_sum_squares(codebook).max())
    delta = torch.tensor([float32_certificate(D, max_norm2, float(v), 0.0, 0.0)["delta"] for v in xx])
    return delta, sum_error(D) * xx


@pytest.mark.parametrize("D", [SCAN_D, GEMM_D], ids=["scan", "gemm"])
def test_near_ties_inside_the_margin_give_the_float64_argmin(D):
    # Gaps from 1e-4 to 1e-1 of the distance: far above float32's summation error (~1e-6 here)
    # but well inside the approximate distances' error at this offset, so the top-2 cannot tell
    # the pair apart and the certificate must send them to the exact search.
    N = 300
    gaps = torch.logspace(-4, -1, N, dtype=torch.float64)
    x, codebook = offset_near_ties(N, D, 300.0, gaps, far=37, seed=D)
    want, required = oracle_and_required(x, codebook)
    assert required.float().mean() > 0.95  # the test demands exactness almost everywhere
    for mode in ("exact", "exact_fp32"):
        index, _ = sgcvq.nearest_code(x, codebook, mode=mode, backend="cpu")
        bad = (index != want) & required
        assert not bad.any(), f"{mode}: {int(bad.sum())} tokens miss the float64 argmin, e.g. {bad.nonzero()[:3, 0].tolist()}"
    delta, _ = expansion_allowance(x, codebook)
    assert float(delta.min()) > float(gaps.max())  # every pair is inside the certificate's margin


@pytest.mark.parametrize("D", [SCAN_D, GEMM_D], ids=["scan", "gemm"])
def test_uncertified_tokens_are_counted_and_searched_exactly(D):
    # Between typical and worst-case rounding: each runner-up is farther than the floor's own
    # slack g fl||x||^2 (so typical rounding orders the pair right and a certificate without its
    # error term would accept it) but closer than the bound delta on the approximate distances'
    # error. The certificate cannot prove these: every token must go to the exact search.
    N = 200
    x0, cb0 = offset_near_ties(N, D, 300.0, torch.zeros(N, dtype=torch.float64), far=23, seed=100 + D)
    delta, slack = expansion_allowance(x0, cb0)
    gaps = (slack + 0.3 * (delta - slack)).clamp(min=0)  # in distance units; the pair's base distance is 1
    assert bool((delta > 3 * slack).all())  # room between the two at this offset
    x, codebook = offset_near_ties(N, D, 300.0, gaps, far=23, seed=100 + D)
    want, required = oracle_and_required(x, codebook)
    assert bool(required.all())
    index, _ = sgcvq.nearest_code(x, codebook, mode="exact_fp32", backend="cpu")
    assert torch.equal(index, want)
    assert sgcvq._C.last_float32_uncertified() == N

    # The same tokens with their runner-up beyond the bound: every one certified at once.
    gaps = 3.0 * delta
    x, codebook = offset_near_ties(N, D, 300.0, gaps, far=23, seed=100 + D)
    want, required = oracle_and_required(x, codebook)
    index, _ = sgcvq.nearest_code(x, codebook, mode="exact_fp32", backend="cpu")
    assert torch.equal(index, want) and bool(required.all())
    assert sgcvq._C.last_float32_uncertified() == 0


def test_spread_data_is_mostly_certified():
    # The count is not stuck at N: on randn data the float32 candidates settle nearly every token.
    x, codebook = torch.randn(1000, GEMM_D), torch.randn(300, GEMM_D)
    index, _ = sgcvq.nearest_code(x, codebook, mode="exact_fp32", backend="cpu")
    want, required = oracle_and_required(x, codebook)
    assert torch.equal(index[required], want[required])
    assert 0 <= sgcvq._C.last_float32_uncertified() < 50


@pytest.mark.parametrize("D", [SCAN_D, GEMM_D], ids=["scan", "gemm"])
def test_nan_token_without_labels_gets_the_first_code(D):
    # check=False reaches the kernel: a NaN token takes the exact search, which finds no finite
    # distance and reports code 0 with a NaN distance; the other tokens are untouched.
    x, codebook = torch.randn(300, D), torch.randn(70, D)
    x[5, 1] = float("nan")
    index, sqdist = sgcvq.nearest_code(x, codebook, backend="cpu", check=False)
    assert int(index[5]) == 0 and math.isnan(float(sqdist[5]))
    keep = torch.arange(300) != 5
    want, required = oracle_and_required(x[keep], codebook)
    assert torch.equal(index[keep][required], want[required])
    assert bool(torch.isfinite(sqdist[keep]).all())


@pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="needs the compiled CPU extension")
def test_bf32_gemm_near_ties_give_the_float64_argmin():
    # Where oneDNN honours torch's float32 matmul precision "medium" (CPUs with bf16 dot products)
    # the GEMM rounds its inputs to bfloat16: the approximate distances are off by ~2^-8 ||x|| ||e||
    # and only the certificate's g_dot term keeps the wrong codes out.
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        a = torch.full((4, GEMM_D), 1.0 + 2.0**-10)
        if float((a @ torch.ones(GEMM_D, 4)).max()) == GEMM_D * (1.0 + 2.0**-10):
            pytest.skip("this CPU's float32 GEMM does not round to bfloat16 under precision 'medium'")
        N = 300
        x, codebook = offset_near_ties(N, GEMM_D, 8.0, torch.logspace(-3, 0, N, dtype=torch.float64), far=37, seed=5)
        want, required = oracle_and_required(x, codebook)
        index, _ = sgcvq.nearest_code(x, codebook, mode="exact_fp32", backend="cpu")
        assert not ((index != want) & required).any()
    finally:
        torch.set_float32_matmul_precision(prev)


# --------------------------------------------------------------------------------------------
# The CPU search's options, read in one place (csrc/cpu/options.cpp)
# --------------------------------------------------------------------------------------------
def test_cpu_options_report_what_the_search_reads(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_RESEARCH", "loop")
    monkeypatch.delenv("SGCVQ_CPU_F32_GEMM", raising=False)
    got = sgcvq._C.cpu_options()
    assert got["env"]["SGCVQ_CPU_RESEARCH"] == "loop"
    assert got["env"]["SGCVQ_CPU_F32_GEMM"] is None
    assert set(got["env"]) == {"SGCVQ_CPU_PORTABLE", "SGCVQ_CPU_BF16", "SGCVQ_CPU_F32_GEMM", "SGCVQ_CPU_SMALLD",
                               "SGCVQ_CPU_SMALLD_SEED", "SGCVQ_CPU_RESEARCH", "SGCVQ_CPU_AVX2",
                               "SGCVQ_CPU_LEAVES"}
    # The dispatch table, tried in order: the low-precision lists first, at::mm (serves every call) last.
    assert got["collectors"][0] == "bf16" and got["collectors"][-1] == "f32_mm"
