"""The AVX2 CPU kernels (csrc/cpu/avx2/): the float32 small-D scan (D <= 16) and the certified int16
candidates for D > 16 (SGCVQ_CPU_BF16 path "avx2int16").

They run by default on x86-64 CPUs with AVX2 + FMA + F16C and no AVX-512; SGCVQ_CPU_AVX2=1 forces
them on a CPU that has AVX-512 as well (every test here sets it), SGCVQ_CPU_AVX2=0 turns them off
(the portable loops). Every mode must return the float32 argmin of every token, ties to the lowest
index, never a code outside the token's group: the same index and distance as the portable path,
and the float64 reference's index up to float32 near-ties. Skipped on CPUs without AVX2.
"""
from __future__ import annotations

import os

import pytest
import torch

import sgcvq
from cpu_kind import avx2_here, cpu_setting
from sgcvq import nearest_code_reference, ops

N = 600  # the int16 path needs at least 256 tokens (kBf16MinTokens)


pytestmark = pytest.mark.skipif(not avx2_here(), reason="needs an x86-64 CPU with AVX2 + FMA + F16C")


@pytest.fixture(autouse=True)
def avx2(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_AVX2", "1")
    monkeypatch.delenv("SGCVQ_CPU_BF16", raising=False)


def nearest(x, codebook, labels, offsets, mode, avx2="1"):
    with cpu_setting("SGCVQ_CPU_AVX2", avx2):
        return torch.ops.sgcvq.nearest_code(x, codebook, labels, offsets, mode)


def check_exact(x, codebook, labels=None, offsets=None, oracle=True):
    """Every mode on the AVX2 kernels gives the portable path's index and distance; those are the
    float32 argmin (the float64 reference's index up to float32 near-ties), inside the group.
    oracle=False: the caller checks against the float64 search itself."""
    want_i, want_d = nearest(x, codebook, labels, offsets, "exact_fp32", avx2="0")
    for mode in ("exact", "fast_exact", "exact_fp32"):
        got_i, got_d = nearest(x, codebook, labels, offsets, mode)
        bad = (got_i != want_i).nonzero()[:5, 0].tolist()
        assert not bad, f"mode {mode}: tokens {bad} got {got_i[bad].tolist()}, portable {want_i[bad].tolist()}"
        # The same float32 distances bit for bit (NaN for non-finite tokens on both).
        torch.testing.assert_close(got_d, want_d, rtol=0, atol=0, equal_nan=True, msg=f"mode {mode}: distances differ")
    if labels is not None:
        lab = labels.long()
        own = lab >= 0
        lo, hi = offsets.long()[lab.clamp(min=0)], offsets.long()[lab.clamp(min=0) + 1]
        assert bool(((want_i >= lo) & (want_i < hi))[own].all()), "a token left its code group"
    if not oracle:
        return want_i
    finite = torch.isfinite(x.float()).all(1)
    ref_i = nearest_code_reference(x.double(), codebook.double(), labels, offsets)[0]
    xd, ed = x.double(), codebook.double()
    d_got = (xd - ed[want_i]).square().sum(1)
    d_ref = (xd - ed[ref_i]).square().sum(1)
    D = x.shape[1]
    # float32 rounding of the direct sum of D terms: (2D + 8) 2^-24 relative covers it.
    tol = (2 * D + 8) * 2.0**-24
    assert bool((d_got <= d_ref * (1 + tol) + 1e-30)[finite].all()), "not the nearest code"


def redo_share(x, codebook, labels=None, offsets=None):
    """The share of tokens the int16 candidates left to the float32 search (-1: path not taken)."""
    calls = sgcvq._C.bf16_search_calls()
    nearest(x, codebook, labels, offsets, "fast_exact")
    if sgcvq._C.bf16_search_calls() == calls:
        return -1.0
    return sgcvq._C.last_fast_exact_redo() / len(x)


DS = [1, 2, 3, 5, 8, 9, 15, 16, 17, 31, 64, 100, 255, 300]


@pytest.mark.parametrize("D", DS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_random_tokens_grouped_and_ungrouped(D, dtype):
    g = torch.Generator().manual_seed(D)
    K = 1000 + D
    x = torch.randn(N, D, generator=g).to(dtype)
    codebook = torch.randn(K, D, generator=g).to(dtype)
    check_exact(x, codebook)
    # Groups that start and end inside 8- and 16-code vectors (and one of a single code), the
    # ignore label -1 searching every code.
    offsets = torch.tensor([0, 7, 8, 300, 301, 777, K])
    labels = torch.randint(-1, len(offsets) - 1, (N,), generator=g)
    check_exact(x, codebook, labels, offsets)


@pytest.mark.parametrize("D", [17, 64, 256])
def test_int16_candidates_certify_most_tokens(D):
    # The path is taken (a bf16_search_call) and its margin is tight enough: randn tokens almost
    # all settle from their lists. A bound that were too loose (or a path silently off) fails here.
    g = torch.Generator().manual_seed(5 + D)
    x, codebook = torch.randn(2048, D, generator=g), torch.randn(1024, D, generator=g)
    share = redo_share(x, codebook)
    assert 0.0 <= share <= 0.02, f"redo share {share}"
    check_exact(x, codebook)


@pytest.mark.parametrize("D", [8, 64, 256])
def test_post_relu_offsets(D):
    # Post-ReLU features plus a common offset: centring on the codebook's mean keeps the int16
    # margin small (without it every token went to the float32 search).
    g = torch.Generator().manual_seed(70 + D)
    x = torch.relu(torch.randn(N, D, generator=g)) + 1.0
    codebook = torch.relu(torch.randn(1500, D, generator=g)) + 1.0
    check_exact(x, codebook)
    if D > 16:
        assert 0.0 <= redo_share(x, codebook) <= 0.1


@pytest.mark.parametrize("D", [4, 8, 16, 64, 300])
def test_tokens_near_codes(D):
    g = torch.Generator().manual_seed(30 + D)
    codebook = torch.randn(3000, D, generator=g)
    x = codebook[torch.randint(3000, (N,), generator=g)] + 1e-3 * torch.randn(N, D, generator=g)
    check_exact(x, codebook)
    offsets = torch.tensor([0, 1000, 1001, 3000])
    check_exact(x, codebook, torch.randint(-1, 3, (N,), generator=g), offsets)


@pytest.mark.parametrize("D", [3, 8, 16, 40])
@pytest.mark.parametrize("K", [1, 16, 37, 1000, 4100])
def test_identical_codes_tie_to_the_lowest_index(K, D):
    x = torch.randn(N, D)
    codebook = torch.randn(1, D).expand(K, D).contiguous()
    for mode in ("exact", "exact_fp32"):
        assert bool((nearest(x, codebook, None, None, mode)[0] == 0).all())
    # Two copies of every code: the first copy wins.
    codebook = torch.randn(K, D).repeat(2, 1)
    assert bool((nearest(x, codebook, None, None, "exact")[0] < K).all())
    check_exact(x, codebook)


@pytest.mark.parametrize("D", [8, 64])
def test_near_duplicate_codes(D):
    g = torch.Generator().manual_seed(7)
    centres = torch.randn(4, D, generator=g)
    codebook = centres.repeat_interleave(300, 0) + 1e-3 * torch.randn(1200, D, generator=g)
    x = centres[torch.randint(4, (N,), generator=g)] + 1e-2 * torch.randn(N, D, generator=g)
    check_exact(x, codebook)


@pytest.mark.parametrize("D", [8, 64])
def test_runner_up_in_the_same_lane(D):
    # Best, runner-up and third code 8 and 16 codes apart (the same lane of the small-D window's
    # vectors) and within each other's margin.
    g = torch.Generator().manual_seed(50 + D)
    K = 2048
    codebook = torch.randn(K, D, generator=g)
    spots = torch.tensor([5, 700, 1500, K - 40])
    for p in spots.tolist():
        for j in (8, 16):
            codebook[p + j] = codebook[p] + 1e-4 * torch.randn(D, generator=g)
    x = codebook[spots[torch.randint(len(spots), (N,), generator=g)]] + 1e-3 * torch.randn(N, D, generator=g)
    check_exact(x, codebook)


@pytest.mark.parametrize("D", [8, 64])
def test_groups_of_small_codes(D):
    # One group's codes are 100x the others': each token's bound takes its own group's maxima.
    g = torch.Generator().manual_seed(7 + D)
    K, n = 2048, 2048
    codebook = torch.randn(K, D, generator=g)
    codebook[:512] *= 100.0
    offsets = torch.tensor([0, 512, 1280, K])
    labels = torch.randint(1, 3, (n,), generator=g)
    x = codebook[offsets[labels] + torch.randint(0, 768, (n,), generator=g)] + 0.5 * torch.randn(n, D, generator=g)
    check_exact(x, codebook, labels, offsets)
    if D > 16:
        assert 0.0 <= redo_share(x, codebook, labels, offsets) <= 0.02
    labels[:300] = 0
    labels[300:400] = -1
    x[:400] = 100.0 * torch.randn(400, D, generator=g)
    check_exact(x, codebook, labels, offsets)


@pytest.mark.parametrize("D", [8, 64])
@pytest.mark.parametrize("scale", [1e-30, 1e15, 1e17])
def test_extreme_magnitudes_and_non_finite_tokens(D, scale):
    # Scales far from 1 (the int16 scales are powers of two down to 2^-126; 1e17 keeps the squared
    # distances finite in float32, where the argmin is defined), and NaN / inf tokens: those get
    # the first code of their range, as on every path.
    g = torch.Generator().manual_seed(3)
    x = scale * torch.randn(N, D, generator=g)
    codebook = scale * torch.randn(3000, D, generator=g)
    check_exact(x, codebook)
    x[3, 2] = float("nan")
    x[4, 0] = float("inf")
    check_exact(x, codebook)


def test_non_finite_codes():
    g = torch.Generator().manual_seed(4)
    x, codebook = torch.randn(N, 40, generator=g), torch.randn(500, 40, generator=g)
    codebook[7, 3] = float("nan")
    codebook[9, 0] = float("inf")
    index = check_exact(x, codebook, oracle=False)
    # The float64 search with NaN distances never the nearest (as in the float32 argmin).
    d64 = (x.double()[:, None] - codebook.double()[None]).square().sum(-1).nan_to_num(nan=float("inf"))
    got = d64.gather(1, index[:, None])[:, 0]
    assert bool((got <= d64.min(1).values * (1 + 88 * 2.0**-24)).all()), "not the nearest finite code"


def test_bad_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_AVX2", "yes")
    with pytest.raises(RuntimeError, match="SGCVQ_CPU_AVX2 must be '1' .* or '0' .*, got 'yes'"):
        torch.ops.sgcvq.nearest_code(torch.randn(N, 8), torch.randn(100, 8), None, None, "exact")


def test_forced_path_is_reported():
    caps = sgcvq._C.cpu_capabilities()
    assert caps["avx512"] is False  # the AVX-512 scans stand down under SGCVQ_CPU_AVX2=1
    assert caps["bf16_path"] == "avx2int16"


def portable_sqdist(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The portable direct_sqdist in torch float32 ops (each correctly rounded, as in C++): lane
    d % 16 sums t_d * t_d (a multiply, then an add), then the tree 8, 4, 2, 1."""
    t = x - e
    q = t * t
    q = torch.nn.functional.pad(q, (0, (-q.shape[1]) % 16))
    acc = torch.zeros(q.shape[0], 16)
    for c in range(0, q.shape[1], 16):
        acc = acc + q[:, c : c + 16]
    for w in (8, 4, 2, 1):
        acc = acc[:, :w] + acc[:, w : 2 * w]
    return acc[:, 0]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "AVX512",
                    reason="an AVX-512 CPU keeps its own distance sums (FMA), whatever kernels run")
@pytest.mark.parametrize("D", [1, 3, 8, 15, 16, 17, 40, 64, 300])
def test_distances_have_the_portable_bits(D):
    # On CPUs without AVX-512 the returned distances come from direct_sqdist_avx2, which must give
    # the portable loop's bits (every caller in a process, and the portable fallback, agree).
    g = torch.Generator().manual_seed(D)
    x, codebook = torch.randn(N, D, generator=g), torch.randn(2000, D, generator=g)
    index, sqdist = nearest(x, codebook, None, None, "exact")
    want = portable_sqdist(x, codebook[index])
    assert torch.equal(sqdist, want)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "AVX512",
                    reason="an AVX-512 CPU keeps its own distance sums (FMA), whatever kernels run")
@pytest.mark.parametrize("D", [17, 40, 256, 300])
def test_exact_search_of_near_identical_codes_has_the_portable_bits(D):
    # taming-transformers' init: every code within 1/K of 0, so many tokens cannot be certified and
    # go to the exact search (exact_rows_avx2 for D > 16: four codes a pass, L1 blocks). Its
    # answer must be the argmin of the portable distance's bits, ties to the lowest index.
    g = torch.Generator().manual_seed(D)
    K = 301
    codebook = torch.empty(K, D).uniform_(-1 / 8192, 1 / 8192, generator=g)  # K = 8192 in taming
    codebook[200] = codebook[17]  # an exact tie: the lower index wins
    x = torch.cat([torch.randn(40, D, generator=g), codebook[17:18].clone()])
    index, dist = torch.ops.sgcvq.nearest_code(x, codebook, None, None, "exact_fp32")
    assert sgcvq._C.last_float32_uncertified() >= 10  # of 41: these go to the exact search
    d = torch.stack([portable_sqdist(x, codebook[k].expand_as(x)) for k in range(K)], 1)
    want_d, want_i = d.min(1)  # torch's min: the first index of the smallest value
    assert torch.equal(index, want_i), (index != want_i).nonzero()[:5, 0].tolist()
    assert torch.equal(dist, want_d)
    assert index[-1].item() == 17
