"""Tests of the Triton kernels (sgcvq.kernels) against the pure-torch references.

Without a GPU they run on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py before triton is
imported); the interpreter is slow, so the shapes here are small and odd (N <= 200, K <= 70). With
a GPU the same tests run on CUDA tensors, and the `gpu` tests add large shapes and torch.compile.
Every test name contains "triton": `pytest -k triton` selects them.
"""
from __future__ import annotations

import importlib
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peers import require  # noqa: E402

triton = require("triton", "triton")  # a test dependency: missing or drifted fails, never skips

import sgcvq  # noqa: E402
from sgcvq import kernels  # noqa: E402
from sgcvq.kernels.nearest_code import LIST_R, nearest_code_with_stats, token_margin  # noqa: E402
from sgcvq.reference import cluster_stats_reference, ema_update_reference, nearest_code_reference  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton needs a GPU, or TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (large shapes, compiled kernels)")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["exact", "fast_exact", "exact_fp32"]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def sample_inputs(N, K, D, dtype=torch.float32, offsets=None, ignore_frac=0.2, device=DEVICE):
    """x [N, D], codebook [K, D] (fresh random data) and, with offsets, labels [N] in [-1, C).

    Labels only point to non-empty groups; about ignore_frac of them are -1.
    """
    x = torch.randn(N, D, device=device).to(dtype)
    codebook = torch.randn(K, D, device=device).to(dtype)
    if offsets is None:
        return x, codebook, None, None
    offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
    sizes = offsets[1:] - offsets[:-1]
    nonempty = torch.nonzero(sizes > 0).flatten()
    labels = nonempty[torch.randint(len(nonempty), (N,), device=device)]
    labels = torch.where(torch.rand(N, device=device) < ignore_frac, -1, labels)
    return x, codebook, labels, offsets


def group_bounds(labels, offsets, N, K, device):
    if labels is None:
        return torch.zeros(N, dtype=torch.int64, device=device), torch.full((N,), K, device=device)
    lab = labels.to(torch.int64)
    lo = torch.where(lab < 0, 0, offsets[lab.clamp(min=0)])
    hi = torch.where(lab < 0, K, offsets[lab.clamp(min=0) + 1])
    return lo, hi


def assert_nearest_matches(x, codebook, labels, offsets, index, sqdist):
    """The kernel's answer against the float64 reference (docs/method.md §2 numerics).

    The index must equal the reference's except where the two are within 1e-6 relative distance
    (the allowed near-tie), lie in the token's group, and sqdist must be its distance. Every
    element is checked, so an unwritten output fails.
    """
    N, K = x.shape[0], codebook.shape[0]
    assert index.shape == (N,) and index.dtype == torch.int64
    assert sqdist.shape == (N,) and sqdist.dtype == torch.float32
    ref_index, ref_sqdist = nearest_code_reference(x, codebook, labels, offsets)
    if N == 0:
        return
    lo, hi = group_bounds(labels, offsets, N, K, x.device)
    assert bool(((index >= lo) & (index < hi)).all()), "an index lies outside its token's code group"
    x64, e64 = x.double(), codebook.double()
    d_chosen = ((x64 - e64[index]) ** 2).sum(1)
    d_best = ((x64 - e64[ref_index]) ** 2).sum(1)
    differs = index != ref_index
    near_tie = d_chosen <= d_best * (1 + 1e-6) + 1e-12
    bad = differs & ~near_tie
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {N} indices differ from the reference beyond a 1e-6 near-tie, "
        f"e.g. token {int(torch.nonzero(bad)[0])}"
    )
    torch.testing.assert_close(sqdist, d_chosen.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sqdist, ref_sqdist, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# nearest_code
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_nearest_code_matches_reference(dtype, mode):
    x, codebook, _, _ = sample_inputs(151, 67, 37, dtype)
    index, sqdist = kernels.nearest_code(x, codebook, None, None, mode)
    assert_nearest_matches(x, codebook, None, None, index, sqdist)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(N=st.integers(0, 40), K=st.integers(1, 40), D=st.integers(1, 20), C=st.integers(0, 4),
       dtype=st.sampled_from(DTYPES), mode=st.sampled_from(MODES), seed=st.integers(0, 2**31 - 1))
def test_triton_nearest_code_hypothesis(N, K, D, C, dtype, mode, seed):
    torch.manual_seed(seed)
    offsets = None
    if C:  # C groups from random cut points (some may be empty)
        cuts = sorted(torch.randint(0, K + 1, (C - 1,)).tolist())
        offsets = [0] + cuts + [K]
    x, codebook, labels, offs = sample_inputs(N, K, D, dtype, offsets=offsets)
    index, sqdist = kernels.nearest_code(x, codebook, labels, offs, mode)
    assert_nearest_matches(x, codebook, labels, offs, index, sqdist)


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 2), (200, 70, 24), (33, 17, 65)], ids=str)
def test_triton_nearest_code_odd_shapes(shape):
    N, K, D = shape
    x, codebook, _, _ = sample_inputs(N, K, D)
    index, sqdist = kernels.nearest_code(x, codebook, None, None, "exact")
    assert_nearest_matches(x, codebook, None, None, index, sqdist)


# Groups: two single-code groups, an empty group (no label points to it), uneven sizes.
GROUP_OFFSETS = [0, 1, 2, 19, 19, 40, 67]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_nearest_code_grouped(dtype, mode):
    x, codebook, labels, offsets = sample_inputs(173, 67, 29, dtype, offsets=GROUP_OFFSETS)
    assert bool((labels == -1).any()) and bool((labels == 0).any())
    index, sqdist = kernels.nearest_code(x, codebook, labels, offsets, mode)
    assert_nearest_matches(x, codebook, labels, offsets, index, sqdist)


def test_triton_nearest_code_grouped_int32_all_ignore_and_one_class():
    x, codebook, labels, offsets = sample_inputs(90, 40, 16, offsets=[0, 40], ignore_frac=0.5)
    for lab in (labels.to(torch.int32), torch.full_like(labels, -1), torch.zeros_like(labels)):
        index, sqdist = kernels.nearest_code(x, codebook, lab, offsets.to(torch.int32), "exact")
        assert_nearest_matches(x, codebook, lab, offsets, index, sqdist)


def test_triton_nearest_code_exact_ties_go_to_lowest_index():
    # Three copies of every code, tokens placed exactly on codes: distance 0 three times over.
    base = torch.randn(20, 24, device=DEVICE)
    codebook = torch.cat([base, base, base])  # code j == code j + 20 == code j + 40
    pick = torch.randint(0, 60, (100,), device=DEVICE)
    x = codebook[pick].clone()
    for mode in MODES:
        index, sqdist = kernels.nearest_code(x, codebook, None, None, mode)
        assert torch.equal(index, pick % 20)
        assert torch.equal(sqdist, torch.zeros_like(sqdist))
    # Grouped: a group holding only the later copies answers with its own lowest copy.
    offsets = torch.tensor([0, 20, 40, 60], device=DEVICE)
    labels = torch.randint(-1, 3, (100,), device=DEVICE)
    index, sqdist = kernels.nearest_code(x, codebook, labels, offsets, "exact")
    expect = torch.where(labels < 0, pick % 20, pick % 20 + 20 * labels.clamp(min=0))
    assert torch.equal(index, expect)
    assert torch.equal(sqdist, torch.zeros_like(sqdist))


def test_triton_nearest_code_certified_tie_between_two_copies():
    # Exactly two copies of every code, far apart: the two candidates tie exactly, the third best
    # is far, so the main kernel certifies and its own re-score must pick the lower copy.
    base = torch.randn(20, 24, device=DEVICE) * 4
    codebook = torch.cat([base, base])
    pick = torch.randint(0, 40, (100,), device=DEVICE)
    x = codebook[pick] + 0.01 * torch.randn(100, 24, device=DEVICE)
    for mode in MODES:
        index, sqdist, n_todo = nearest_code_with_stats(x, codebook, None, None, mode)
        assert int(n_todo) == 0
        assert torch.equal(index, pick % 20)
        assert_nearest_matches(x, codebook, None, None, index, sqdist)


def test_triton_nearest_code_ties_between_distinct_codes():
    # Codes symmetric around the token: equal distances from different vectors.
    D = 16
    x = torch.zeros(40, D, device=DEVICE)
    v = torch.zeros(D, device=DEVICE)
    v[3] = 1.0
    codebook = torch.stack([2 * v, v, -v, 3 * v, -v, v])  # codes 1, 2, 4, 5 at distance 1
    index, sqdist = kernels.nearest_code(x, codebook, None, None, "exact")
    assert torch.equal(index, torch.ones_like(index))
    assert torch.equal(sqdist, torch.ones_like(sqdist))


@pytest.mark.parametrize("grouped", [False, True])
def test_triton_nearest_code_empty_input(grouped):
    x, codebook, labels, offsets = sample_inputs(0, 7, 5, offsets=[0, 3, 7] if grouped else None)
    index, sqdist = kernels.nearest_code(x, codebook, labels, offsets, "exact")
    assert index.shape == (0,) and index.dtype == torch.int64
    assert sqdist.shape == (0,) and sqdist.dtype == torch.float32


def test_triton_fast_exact_returns_the_exact_indices():
    x, codebook, labels, offsets = sample_inputs(190, 70, 48, offsets=GROUP_OFFSETS[:-1] + [70])
    for lab, off in ((None, None), (labels, offsets)):
        exact = kernels.nearest_code(x, codebook, lab, off, "exact_fp32")
        for mode in ("fast_exact", "exact"):
            fast = kernels.nearest_code(x, codebook, lab, off, mode)
            assert torch.equal(fast[0], exact[0])
            torch.testing.assert_close(fast[1], exact[1], rtol=1e-6, atol=1e-6)


def _crowded_codebook(K, D, copies, step, device=DEVICE):
    """Codes: `copies` codes v + t_j u (u a unit vector, t_j^2 = step * j) first, then random
    codes. A token at v has distances ||v - e_j||^2 = step * j to the crowd: gaps of `step`."""
    v = torch.randn(D, device=device)
    u = torch.randn(D, device=device)
    u = u / u.norm()
    t = torch.sqrt(step * torch.arange(1, copies + 1, device=device, dtype=torch.float32))
    crowd = v + t[:, None] * u
    return torch.cat([crowd, torch.randn(K - copies, D, device=device)]), v


@pytest.mark.parametrize("grouped", [False, True])
def test_triton_second_pass_takes_the_crowded_tokens(grouped):
    # 12 codes 0.03 apart in distance from the tokens: more than LIST_R within the bf16 margin
    # (~0.5 here), far apart for the float32-grade one (~0.01), so every token near v goes to the
    # 3xTF32 re-search, which certifies it; the direct fallback runs for none.
    N, K, D = 96, 70, 48
    codebook, v = _crowded_codebook(K, D, 12, 0.03)
    x = v + 1e-4 * torch.randn(N, D, device=DEVICE)
    labels = offsets = None
    if grouped:
        offsets = torch.tensor([0, 30, K], device=DEVICE)
        labels = torch.where(torch.rand(N, device=DEVICE) < 0.3, -1, 0)
    stats = {}
    index, sqdist, n_todo = nearest_code_with_stats(x, codebook, labels, offsets, "exact", stats=stats)
    first, second = (int(n) for n in stats["uncertified_per_pass"])
    assert stats["candidates"] == "bf16"
    assert first > N // 2, "too few tokens reached the second pass for the test to exercise it"
    assert second == 0 and int(n_todo) == 0
    assert bool((index == 0).all())
    assert_nearest_matches(x, codebook, labels, offsets, index, sqdist)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_many_exact_copies_go_to_the_direct_fallback(dtype):
    # 12 exact copies of a code, tokens on it: a 12-way tie that no margin separates. Both search
    # passes leave these tokens; the direct fallback answers the lowest copy.
    N, K, D = 40, 50, 20
    codebook = torch.randn(K, D, device=DEVICE).to(dtype)
    copies = torch.tensor([3, 5, 8, 13, 21, 22, 30, 31, 40, 44, 47, 49], device=DEVICE)
    codebook[copies] = codebook[3].clone()
    x = codebook[torch.full((N,), 3, device=DEVICE)].clone()
    x[N // 2:] = torch.randn(N - N // 2, D, device=DEVICE).to(dtype)  # and some ordinary tokens
    for mode in MODES:
        stats = {}
        index, sqdist, n_todo = nearest_code_with_stats(x, codebook, None, None, mode, stats=stats)
        assert int(n_todo) >= N // 2
        assert bool((index[: N // 2] == 3).all())
        assert bool((sqdist[: N // 2] == 0).all())
        assert_nearest_matches(x, codebook, None, None, index, sqdist)


@pytest.mark.parametrize("dot", ["tf32x3", "ieee"])
@pytest.mark.parametrize("grouped", [False, True])
def test_triton_exact_fp32_matches_reference(grouped, dot):
    x, codebook, labels, offsets = sample_inputs(130, 67, 40, offsets=GROUP_OFFSETS if grouped else None)
    stats = {}
    index, sqdist, _ = nearest_code_with_stats(x, codebook, labels, offsets, "exact_fp32", exact_fp32_dot=dot,
                                               stats=stats)
    assert stats["candidates"] == "fp32" and len(stats["uncertified_per_pass"]) == 1
    assert_nearest_matches(x, codebook, labels, offsets, index, sqdist)
    with pytest.raises(ValueError, match="exact_fp32_dot"):
        nearest_code_with_stats(x, codebook, labels, offsets, "exact", exact_fp32_dot="tf32")
    with pytest.raises(ValueError, match="mode"):
        nearest_code_with_stats(x, codebook, labels, offsets, "fastest")


DATA = {  # the hard data of the issue: post-ReLU, a common offset, near-duplicate codes
    "randn": lambda n, d: torch.randn(n, d, device=DEVICE),
    "relu": lambda n, d: torch.relu(torch.randn(n, d, device=DEVICE)),
    "offset": lambda n, d: torch.randn(n, d, device=DEVICE) + 30.0,
    "near_duplicates": lambda n, d: 3.0 + 1e-3 * torch.randn(n, d, device=DEVICE),
}


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_hard_data_stays_exact(data, dtype):
    torch.manual_seed(hash(data) % 1000)
    x, codebook = DATA[data](140, 44).to(dtype), DATA[data](90, 44).to(dtype)
    for mode in ("exact", "exact_fp32"):
        index, sqdist = kernels.nearest_code(x, codebook, None, None, mode)
        assert_nearest_matches(x, codebook, None, None, index, sqdist)


@pytest.mark.parametrize("candidates", ["bf16", "tf32"])
@pytest.mark.parametrize("D", [8, 64])
def test_triton_candidate_kinds_for_float32(candidates, D):
    # Both candidate dtypes at both widths (the default picks TF32 below D = 32, bf16 above).
    for data in ("randn", "relu"):
        x, codebook = DATA[data](120, D), DATA[data](75, D)
        stats = {}
        index, sqdist, _ = nearest_code_with_stats(x, codebook, None, None, "exact", candidates=candidates,
                                                   stats=stats)
        assert stats["candidates"] == candidates
        assert_nearest_matches(x, codebook, None, None, index, sqdist)


def test_triton_certifies_random_tokens_in_the_first_pass():
    # The design's premise at a small scale: on random data the bf16 candidate pass with the
    # centred operands and LIST_R candidates certifies (almost) every token.
    x, codebook, _, _ = sample_inputs(200, 300, 64)
    stats = {}
    nearest_code_with_stats(x, codebook, None, None, "exact", stats=stats)
    assert int(stats["uncertified_per_pass"][0]) <= 2


def test_triton_nearest_code_certifies_well_separated_tokens_without_fallback():
    # Tokens close to distinct, well separated codes: the main kernel must certify them all, so
    # this checks its own answer (the fallback does not run for any token).
    codebook = torch.randn(64, 32, device=DEVICE) * 4
    pick = torch.randint(0, 64, (150,), device=DEVICE)
    x = codebook[pick] + 0.01 * torch.randn(150, 32, device=DEVICE)
    for mode in MODES:
        index, sqdist, n_todo = nearest_code_with_stats(x, codebook, None, None, mode)
        assert int(n_todo) == 0
        assert torch.equal(index, pick)
        assert_nearest_matches(x, codebook, None, None, index, sqdist)


@pytest.mark.parametrize("grouped", [False, True])
def test_triton_nearest_code_fallback_path(grouped):
    # Every token through the direct float32 fallback search.
    x, codebook, labels, offsets = sample_inputs(120, 67, 21, offsets=GROUP_OFFSETS if grouped else None)
    index, sqdist, n_todo = nearest_code_with_stats(x, codebook, labels, offsets, "exact", force_fallback=True)
    assert int(n_todo) == 120
    assert_nearest_matches(x, codebook, labels, offsets, index, sqdist)


def _tf32_round(t):
    bits = t.view(torch.int32)
    return ((bits + 0x1000) & -8192).view(torch.float32)


@pytest.mark.parametrize("candidates", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("data", ["randn", "relu", "offset"])
def test_triton_token_margin_bounds_the_score_error(candidates, data):
    # The certificate's premise, checked in float64: |s_k + fl||x'||^2 - f_k| <= E for every token
    # and code, with s_k computed as the kernels do (centred, rounded operands whose products are
    # exact; the float32 accumulation's own error is far below E's share for it).
    torch.manual_seed(7)
    D = 64
    x, e = DATA[data](300, D).cpu(), DATA[data](500, D).cpu()
    mu = e.mean(0)
    xc, ec = x - mu, e - mu
    rnd = {"bf16": lambda t: t.bfloat16().float(), "tf32": _tf32_round, "fp32": lambda t: t}[candidates]
    xr, er = rnd(xc), rnd(ec)
    xx = (xc * xc).sum(1)
    n = (ec * ec).sum(1)
    s = n.double()[None, :] - 2.0 * xr.double() @ er.double().T
    f = ((x[:, None, :] - e[None, :, :]) ** 2).sum(2)  # float32, as the re-score
    err = (s + xx.double()[:, None] - f.double()).abs()
    r2 = ((xc - xr) ** 2).sum(1)
    max_e2 = float(n.max()) * (1 + 1e-4)
    max_err = float(((ec - er) ** 2).sum(1).max().sqrt()) * (1 + 1e-4)
    dot = "exact_products" if candidates != "fp32" else "ieee"
    margin = torch.tensor([token_margin(float(a), float(b), max_e2, max_err, D, dot) for a, b in zip(xx, r2)],
                          dtype=torch.float64)
    ratio = (err / margin[:, None]).max()
    assert ratio < 1.0, f"the score error reaches {float(ratio):.3f} of the margin"
    assert ratio > 1e-3, "the margin is far looser than it needs to be"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_kernel_margin_matches_token_margin(dtype):
    # The prologue kernel computes E in float32 with the formula of token_margin (float64): the two
    # agree to float32 rounding, and the kernel's is never smaller beyond it.
    D = 40
    x, e = (torch.randn(90, D, device=DEVICE) + 2).to(dtype), (torch.randn(60, D, device=DEVICE) + 2).to(dtype)
    stats = {}
    nearest_code_with_stats(x, e, None, None, "exact", stats=stats)
    mu = stats["centre"].cpu()
    xc, ec = x.float().cpu() - mu, e.float().cpu() - mu
    # The rounded copies the kernel made (the interpreter's bf16 cast does not round like torch's).
    xr, er = (t.float().cpu() for t in stats["candidate_operands"])
    assert float((xr - xc).abs().max()) <= 2.0**-7 * float(xc.abs().max())  # a bf16 rounding of x'
    g = (2 * D + 16) * 2.0**-24
    xx, r2 = (xc * xc).sum(1), ((xc - xr) ** 2).sum(1)
    max_e2 = float((ec * ec).sum(1).max()) * (1 + g) * 1.0001
    max_err = float(((ec - er) ** 2).sum(1).max() * (1 + g)) ** 0.5 * 1.0001
    want = torch.tensor([token_margin(float(a), float(b), max_e2, max_err, D, "exact_products")
                         for a, b in zip(xx, r2)], dtype=torch.float64)
    got = stats["margin"].cpu().double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)
    if dtype == torch.bfloat16:
        assert float(mu.abs().max()) == 0.0  # bf16 data at this offset stays uncentred (exact)


def test_triton_token_margin_orders_precisions():
    args = (100.0, 0.0, 120.0, 0.0)
    for D in (1, 8, 256):
        exact = token_margin(*args, D, "exact_products")
        assert 0 < exact < token_margin(*args, D, "ieee") < token_margin(*args, D, "tf32x3")
        assert token_margin(100.0, 1e-4, 120.0, 1e-2, D, "exact_products") > exact  # residuals count
    assert token_margin(*args, 8, "ieee") < token_margin(*args, 256, "ieee")


def test_triton_margin_matches_the_float64_model():
    # The Triton copy of the bound (token_margin, and the prologue kernel's float32 _margin) is the
    # float64 model sgcvq.reference.centred_margin, the formula the Hopper kernel takes from
    # csrc/include/sgcvq/certificate.h.
    from sgcvq.reference import accumulation_error, centred_margin

    D = 48
    x, e = torch.randn(70, D, device=DEVICE) * 3 + 1, torch.randn(50, D, device=DEVICE) * 3 + 1
    stats = {}
    nearest_code_with_stats(x, e, None, None, "exact", stats=stats)
    mu = stats["centre"].cpu()
    xc, ec = x.cpu() - mu, e.cpu() - mu
    xr, er = (t.float().cpu() for t in stats["candidate_operands"])
    g = accumulation_error(D)
    xx, r2 = (xc * xc).sum(1), ((xc - xr) ** 2).sum(1)
    max_e2 = float((ec * ec).sum(1).max()) * (1 + g) * 1.0001
    max_err = float(((ec - er) ** 2).sum(1).max() * (1 + g)) ** 0.5 * 1.0001
    want = torch.tensor([centred_margin(float(a), float(b), max_e2, max_err, D) for a, b in zip(xx, r2)],
                        dtype=torch.float64)
    torch.testing.assert_close(stats["margin"].cpu().double(), want, rtol=1e-4, atol=0)
    for dot in ("exact_products", "ieee", "tf32x3"):
        assert token_margin(3.0, 1e-4, 5.0, 1e-2, D, dot) >= centred_margin(3.0, 1e-4, 5.0, 1e-2, D)


def test_triton_runner_up_at_one_and_a_half_margins_is_certified_in_the_first_pass():
    # The candidate window must be 2E: the best code's own score may sit up to E below its
    # distance. Here it sits ~E below: x and the best code are the same vector, every feature
    # 1 + 2^-11 + 2^-20, which the TF32 rounding (to nearest, in the kernel, the same on a GPU and
    # in the interpreter) moves up by almost half an ulp, so the residuals are as large and as
    # aligned as the bound allows. The runner-up (TF32-exact features t) scores ~1.5E above the
    # best: a window of E would leave it out, and with the best's score that low the token could
    # not be certified without it.
    D = 16
    v = 1.0 + 2.0**-11 + 2.0**-20
    c = 1.0 + 2.0**-10  # tf32(v)
    margin_args = (D * v * v, D * (c - v) ** 2, D * v * v * (1 + 1e-3), math.sqrt(D) * (c - v) * 1.001, D,
                   "exact_products")
    E_model = token_margin(*margin_args)

    def score_gap(t):  # s(t) - s(best), the kernel's scores in exact arithmetic
        return D * (t - c) ** 2 + D * (c * c - v * v)

    assert 2 * D * (c * c - v * v) > 0.9 * E_model  # the best's score sits ~E below its distance
    # t below c: the codebook's largest norm stays that of x
    t = min((c - step * 2.0**-10 for step in range(1, 200)), key=lambda t: abs(score_gap(t) / E_model - 1.5))
    codebook = torch.tensor([[v] * D, [t] * D, [-v] * D, [-t] * D], device=DEVICE)  # mean 0: nothing to centre
    x = torch.full((1, D), v, device=DEVICE)
    stats = {}
    index, sqdist, _ = nearest_code_with_stats(x, codebook, None, None, "exact", stats=stats, candidates="tf32")
    assert float(stats["centre"].abs().max()) == 0.0
    E = float(stats["margin"][0])
    assert 1.4 < score_gap(t) / E < 1.6
    assert int(index[0]) == 0 and float(sqdist[0]) == 0.0
    assert int(stats["uncertified_per_pass"][0]) == 0, "the runner-up fell outside the candidate window"


def test_triton_autotune_configs_split_by_dot_family():
    # The module (the package attribute of the same name is the function).
    nc = importlib.import_module("sgcvq.kernels.nearest_code")
    configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=st)
               for bn, bk, bd, w, st in nc._TENSOR_CORE_SHAPES + nc._FMA_SHAPES]
    fma = nc._prune_configs(configs, {"D": 256}, DOT_PRECISION="ieee")
    tc = nc._prune_configs(configs, {"D": 256}, DOT_PRECISION="tf32")
    assert len(fma) == len(nc._FMA_SHAPES) and len(tc) == len(nc._TENSOR_CORE_SHAPES)
    assert all(c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 8192 for c in fma)
    # D = 8: BLOCK_D shrinks to tl.dot's minimum 16 and duplicates collapse.
    small = nc._prune_configs(configs, {"D": 8}, DOT_PRECISION="tf32")
    assert {c.kwargs["BLOCK_D"] for c in small} == {16}
    assert len(small) == len({(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) for c in small})


requires_interpreter = pytest.mark.skipif(HAS_CUDA, reason="counts compile keys under TRITON_INTERPRET=1")


@requires_interpreter
@pytest.mark.parametrize("grouped", [False, True])
def test_triton_compiles_once_per_shape_family(grouped):
    # Triton compiles once per specialisation: constexprs and, for each int argument it may
    # specialise, "== 1" / "divisible by 16". N, K, the group count and the pass counts are
    # do_not_specialize, so a new batch or codebook size of the same D, dtype and mode reuses every
    # compiled kernel (2026-11-28 on an H100: each (N, K) divisibility class compiled the search
    # kernel again, ~3.4 s of CPU each).
    from sgcvq.kernels.compile_count import CompileCounter

    def call(N, K, C=3):
        offsets = [round(K * c / C) for c in range(C + 1)] if grouped else None
        x, codebook, labels, offs = sample_inputs(N, K, 24, offsets=offsets)
        sgcvq.nearest_code(x, codebook, labels, offs, backend="triton")

    with CompileCounter() as first:
        call(37, 21)
    # the prologue twice (codes, tokens), the search twice (candidates, re-search), the fallback
    assert first.by_kernel() == {"_prepare_rows_kernel": 2, "_nearest_code_search_kernel": 2,
                                 "_nearest_code_fallback_kernel": 1}, first.by_kernel()
    with CompileCounter() as more:
        for N, K in [(1, 5), (128, 64), (16, 48), (97, 33)]:  # == 1, divisible by 16, neither
            call(N, K)
    new = [k[0] for k in more.keys if k not in first.keys]
    assert not new, f"new sizes of the same shape family compiled again: {new}"


def test_triton_backend_through_the_op_layer():
    assert "triton" in sgcvq.ops.available_backends(DEVICE)
    x, codebook, labels, offsets = sample_inputs(64, 30, 12, offsets=[0, 10, 30])
    index, sqdist = sgcvq.nearest_code(x, codebook, labels, offsets, backend="triton")
    assert_nearest_matches(x, codebook, labels, offsets, index, sqdist)
    idx = torch.randint(0, 9, (64,), device=DEVICE)
    counts, sums = sgcvq.cluster_stats(idx, x, 9, backend="triton")
    ref_counts, ref_sums = cluster_stats_reference(idx, x, 9)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# cluster_stats
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_cluster_stats_matches_reference(dtype, deterministic):
    N, D, K = 187, 37, 23
    x = torch.randn(N, D, device=DEVICE).to(dtype)
    index = torch.randint(0, K - 3, (N,), device=DEVICE)  # the last codes stay empty
    index[:40] = 5  # one hot code, longer than a chunk
    counts, sums = kernels.cluster_stats(index, x, K, deterministic)
    ref_counts, ref_sums = cluster_stats_reference(index, x, K)
    assert counts.dtype == torch.float32 and sums.dtype == torch.float32 and sums.shape == (K, D)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)
    assert torch.equal(sums[K - 3 :], torch.zeros(3, D, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_cluster_stats_deterministic_splits_hot_codes_into_pieces(monkeypatch, dtype):
    # Segments longer than a piece are summed piece by piece, then the pieces in order.
    cs_module = importlib.import_module("sgcvq.kernels.cluster_stats")
    monkeypatch.setattr(cs_module, "_PIECE", 16)
    N, D, K = 150, 11, 9
    x = torch.randn(N, D, device=DEVICE).to(dtype)
    index = torch.randint(0, K, (N,), device=DEVICE)
    index[::2] = 3  # 75+ tokens in code 3: five pieces and more
    index[1::7] = K - 1
    counts, sums = kernels.cluster_stats(index, x, K, True)
    ref_counts, ref_sums = cluster_stats_reference(index, x, K)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)
    again = kernels.cluster_stats(index, x, K, True)[1]
    assert torch.equal(sums.view(torch.int32), again.view(torch.int32))


def test_triton_cluster_stats_deterministic_is_bit_identical():
    N, D, K = 200, 19, 7
    x = torch.randn(N, D, device=DEVICE)
    index = torch.randint(0, K, (N,), device=DEVICE)
    first = kernels.cluster_stats(index, x, K, True)
    second = kernels.cluster_stats(index, x, K, True)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1].view(torch.int32), second[1].view(torch.int32))
    # Segment order is token order: sequential float32 sums per code, chunk by chunk.
    ref_counts, ref_sums = cluster_stats_reference(index, x, K)
    torch.testing.assert_close(first[1], ref_sums, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_cluster_stats_empty_and_single(deterministic):
    x = torch.randn(0, 6, device=DEVICE)
    counts, sums = kernels.cluster_stats(torch.zeros(0, dtype=torch.int64, device=DEVICE), x, 4, deterministic)
    assert torch.equal(counts, torch.zeros(4, device=DEVICE))
    assert torch.equal(sums, torch.zeros(4, 6, device=DEVICE))
    x = torch.randn(1, 1, device=DEVICE)
    counts, sums = kernels.cluster_stats(torch.tensor([2], device=DEVICE), x, 3, deterministic)
    assert torch.equal(counts, torch.tensor([0.0, 0.0, 1.0], device=DEVICE))
    assert torch.equal(sums, torch.cat([torch.zeros(2, 1, device=DEVICE), x]))


# --------------------------------------------------------------------------------------------
# ema_update
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [0.0, 0.8, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (13, 37), (70, 130)], ids=str)
def test_triton_ema_update_matches_reference(shape, decay):
    K, D = shape
    eps = 1e-5
    cluster_size = torch.rand(K, device=DEVICE) + 0.1
    embed_sum = torch.randn(K, D, device=DEVICE)
    codebook = torch.randn(K, D, device=DEVICE)
    counts = torch.randint(0, 5, (K,), device=DEVICE).float()
    counts[0] = 1.0  # a non-zero total even at decay 0 (a zero total divides by zero everywhere)
    sums = torch.randn(K, D, device=DEVICE)
    ours = [cluster_size.clone(), embed_sum.clone(), codebook.clone()]
    ref = [cluster_size.clone(), embed_sum.clone(), codebook.clone()]
    assert kernels.ema_update(*ours, counts, sums, decay, eps) is None
    ema_update_reference(*ref, counts, sums, decay, eps)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6)


def test_triton_ema_update_noncontiguous_codebook_is_written_back():
    K, D = 9, 8
    storage = torch.randn(D, K, device=DEVICE)
    codebook = storage.t()  # [K, D] view, not contiguous
    cluster_size, embed_sum = torch.rand(K, device=DEVICE) + 0.5, torch.randn(K, D, device=DEVICE)
    counts, sums = torch.ones(K, device=DEVICE), torch.randn(K, D, device=DEVICE)
    ref = [cluster_size.clone(), embed_sum.clone(), codebook.clone()]
    kernels.ema_update(cluster_size, embed_sum, codebook, counts, sums, 0.9, 1e-5)
    ema_update_reference(*ref, counts, sums, 0.9, 1e-5)
    torch.testing.assert_close(storage.t(), ref[2], rtol=2e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# GPU only: large shapes, every dtype, compiled kernels, torch.compile
# --------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(4099, 1031, 64), (3001, 2048, 8), (1500, 1024, 256)], ids=str)
def test_triton_gpu_nearest_code_large(shape, dtype, mode):
    N, K, D = shape
    x, codebook, _, _ = sample_inputs(N, K, D, dtype, device="cuda")
    index, sqdist = kernels.nearest_code(x, codebook, None, None, mode)
    assert_nearest_matches(x, codebook, None, None, index, sqdist)


@requires_cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_gpu_nearest_code_grouped_large(dtype, mode):
    C, K = 16, 1024
    offsets = [round(K * (c / C) ** 1.3) for c in range(C + 1)]  # uneven group sizes
    offsets[1] = 1  # a single-code group
    x, codebook, labels, offs = sample_inputs(5003, K, 64, dtype, offsets=offsets, device="cuda")
    index, sqdist = kernels.nearest_code(x, codebook, labels, offs, mode)
    assert_nearest_matches(x, codebook, labels, offs, index, sqdist)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_gpu_cluster_stats_large(dtype):
    N, D, K = 70001, 96, 4096
    x = torch.randn(N, D, device="cuda").to(dtype)
    index = torch.randint(0, K, (N,), device="cuda")
    ref_counts, ref_sums = cluster_stats_reference(index, x, K)
    for deterministic in (False, True):
        counts, sums = kernels.cluster_stats(index, x, K, deterministic)
        assert torch.equal(counts, ref_counts)
        torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-4)
    a = kernels.cluster_stats(index, x, K, True)[1]
    b = kernels.cluster_stats(index, x, K, True)[1]
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@requires_cuda
def test_triton_gpu_ema_update_large():
    K, D = 16384, 256
    args = [torch.rand(K, device="cuda") + 0.1, torch.randn(K, D, device="cuda"), torch.randn(K, D, device="cuda")]
    counts, sums = torch.randint(0, 9, (K,), device="cuda").float(), torch.randn(K, D, device="cuda")
    ref = [a.clone() for a in args]
    kernels.ema_update(*args, counts, sums, 0.99, 1e-5)
    ema_update_reference(*ref, counts, sums, 0.99, 1e-5)
    for a, b in zip(args, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@requires_cuda
def test_triton_gpu_torch_compile_fullgraph():
    # The Triton launcher as an opaque custom op (how sgcvq.ops registers it for CUDA), compiled
    # with fullgraph=True together with the surrounding quantizer arithmetic.
    @torch.library.custom_op("sgcvq_test::nearest_code_triton", mutates_args=(),
                             schema="(Tensor x, Tensor codebook) -> (Tensor, Tensor)")
    def nearest_code_triton(x, codebook):
        index, sqdist = kernels.nearest_code(x, codebook, None, None, "exact")
        return index, sqdist

    @nearest_code_triton.register_fake
    def _(x, codebook):
        return x.new_empty(x.shape[0], dtype=torch.int64), x.new_empty(x.shape[0], dtype=torch.float32)

    def quantize(x, codebook):
        index, sqdist = nearest_code_triton(x, codebook)
        q = codebook[index]
        return x + (q - x).detach(), index, sqdist.mean()

    x, codebook, _, _ = sample_inputs(2048, 512, 64, device="cuda")
    compiled = torch.compile(quantize, fullgraph=True)
    q, index, loss = compiled(x, codebook)
    ref_index, ref_sqdist = nearest_code_reference(x, codebook)
    assert_nearest_matches(x, codebook, None, None, index, (q - x).pow(2).sum(1))
    torch.testing.assert_close(loss, ref_sqdist.mean(), rtol=1e-5, atol=1e-5)
