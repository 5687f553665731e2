"""The k-d leaf search (csrc/cpu/code_leaves.h, csrc/cpu/avx2/leaf_search_avx2.cpp): D <= 16 on the
AVX2 kernels, all codes, whole 64-code leaves skipped when a box bound proves they hold no code
below the token's running second best.

SGCVQ_CPU_LEAVES=1 forces it wherever it can run (two leaves or more), =0 turns it off. It must
return what the register-blocked scan returns, bit for bit (the float32 argmin, ties to the lowest
index), and the float64 oracle's index wherever float32 can tell the codes apart, on data built to
sit on the leaves' boxes: tokens on codes, on box faces and corners, duplicated codes, post-ReLU
offsets, tokens far from every code (where the search gives way to the scan), non-finite values.
Skipped on CPUs without AVX2.
"""
from __future__ import annotations

import os

import pytest
import torch

import sgcvq
from cpu_kind import avx2_here, cpu_setting
from sgcvq.reference import exact_index_required, nearest_code_oracle


pytestmark = pytest.mark.skipif(not avx2_here(), reason="needs an x86-64 CPU with AVX2 + FMA + F16C")


@pytest.fixture(autouse=True)
def avx2(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_AVX2", "1")


def search(x, codebook, leaves: str, mode="exact"):
    with cpu_setting("SGCVQ_CPU_LEAVES", leaves):
        return torch.ops.sgcvq.nearest_code(x, codebook, None, None, mode)


def check(x, codebook, oracle=True):
    """The leaf search gives the scan's indices and distances bit for bit, in both float32 modes,
    and the float64 oracle's index wherever float32 can tell the best code from the runner-up."""
    for mode in ("exact", "exact_fp32"):
        want_i, want_d = search(x, codebook, "0", mode)
        calls = sgcvq._C.leaf_search_calls()
        got_i, got_d = search(x, codebook, "1", mode)
        assert sgcvq._C.leaf_search_calls() == calls + 1, "the leaf search did not serve"
        bad = (got_i != want_i).nonzero()[:5, 0].tolist()
        assert not bad, f"{mode}: tokens {bad} got {got_i[bad].tolist()}, the scan {want_i[bad].tolist()}"
        torch.testing.assert_close(got_d, want_d, rtol=0, atol=0, equal_nan=True)
    if oracle:
        ref_i, best, runner_up = nearest_code_oracle(x, codebook)
        # Where the squared distances fall below float32's normal range they round alike (1e-30
        # scale: every distance is 0 in float32) and the float32 argmin is the lowest index.
        must = exact_index_required(best, runner_up, x.shape[1]) & torch.isfinite(x.float()).all(1) & (best > 1e-30)
        wrong = (must & (got_i != ref_i)).nonzero()[:5, 0].tolist()
        assert not wrong, f"tokens {wrong}: got {got_i[wrong].tolist()}, float64 argmin {ref_i[wrong].tolist()}"
    return got_i


@pytest.mark.parametrize("D", [1, 2, 3, 5, 8, 11, 16])
@pytest.mark.parametrize("K", [128, 1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_random_tokens(D, K, dtype):
    g = torch.Generator().manual_seed(D * 7919 + K)
    x = torch.randn(777, D, generator=g).to(dtype)
    codebook = torch.randn(K, D, generator=g).to(dtype)
    check(x, codebook)


@pytest.mark.parametrize("D", [2, 8, 16])
def test_post_relu_offsets_and_tokens_near_codes(D):
    g = torch.Generator().manual_seed(11)
    codebook = torch.randn(3000, D, generator=g).relu() + 1
    check(torch.randn(900, D, generator=g).relu() + 1, codebook)
    near = codebook[torch.randint(0, 3000, (900,), generator=g)] + 1e-3 * torch.randn(900, D, generator=g)
    check(near, codebook)


@pytest.mark.parametrize("D", [1, 3, 8])
def test_tokens_on_codes_box_faces_and_corners(D):
    # The box bound is tight where a token sits on a face or a corner of a leaf's box (its
    # coordinates are the leaf's extreme codes' coordinates): a code there is at exactly the bound.
    g = torch.Generator().manual_seed(12)
    K = 2048
    codebook = torch.randn(K, D, generator=g)
    on_codes = codebook[torch.randint(0, K, (400,), generator=g)]
    # Coordinates drawn from the codes' own values, feature by feature: box faces and corners.
    faces = codebook[torch.randint(0, K, (400, D), generator=g), torch.arange(D)]
    # Midpoints between two codes: exact ties of the expansion's exact value.
    a, b = torch.randint(0, K, (2, 400), generator=g)
    mid = (codebook[a] + codebook[b]) / 2
    check(torch.cat([on_codes, faces, mid]), codebook)


@pytest.mark.parametrize("D", [1, 4, 8])
def test_duplicated_codes_tie_to_the_lowest_index(D):
    # Copies of a code land in different leaves (the split orders ties by index): the lowest index
    # must win, as in the scan, though the leaves are visited in another order.
    g = torch.Generator().manual_seed(13)
    base = torch.randn(700, D, generator=g)
    codebook = torch.cat([base, base, base[:300]])
    x = torch.cat([codebook[torch.randint(0, len(codebook), (600,), generator=g)], torch.randn(600, D, generator=g)])
    index = check(x, codebook)
    on = torch.arange(600)
    assert bool((index[on] < 700).all()), "a copy won over the lowest index"


@pytest.mark.parametrize("shift", [5.0, 30.0, 1e4])
def test_tokens_far_from_every_code(shift):
    # Every leaf is about as far as every other: the search visits most leaves and gives way to
    # the scan after its first work items; the answers stay exact either way.
    g = torch.Generator().manual_seed(14)
    codebook = torch.randn(4096, 8, generator=g)
    check(torch.randn(3000, 8, generator=g) + shift, codebook)


@pytest.mark.parametrize("scale", [1e-30, 1e15])
def test_extreme_magnitudes_and_non_finite_values(scale):
    g = torch.Generator().manual_seed(15)
    x = scale * torch.randn(800, 8, generator=g)
    codebook = scale * torch.randn(2500, 8, generator=g)
    check(x, codebook)
    x[3, 2] = float("nan")
    x[4, 0] = float("inf")
    x[5] = float("-inf")
    check(x, codebook)
    codebook[7, 3] = float("nan")  # its leaf is never skipped; NaN distances never win
    codebook[900, 0] = float("inf")
    check(x, codebook, oracle=False)


def visits_share(x, codebook, leaves=""):
    calls = sgcvq._C.leaf_search_calls()
    search(x, codebook, leaves)
    if sgcvq._C.leaf_search_calls() == calls:
        return None
    visits, possible = sgcvq._C.last_leaf_visits()
    return visits / possible


def test_it_skips_most_leaves_on_randn_and_serves_by_size():
    g = torch.Generator().manual_seed(16)
    codebook = torch.randn(16384, 8, generator=g)
    x = torch.randn(4096, 8, generator=g)
    share = visits_share(x, codebook)
    assert share is not None and 0 < share < 0.3, share  # ~0.17 of 256 leaves; a scan is all of them
    # Below 2048 codes or 512 tokens the scan serves unless forced.
    calls = sgcvq._C.leaf_search_calls()
    search(x[:511], codebook, "")
    search(x, codebook[:2047], "")
    assert sgcvq._C.leaf_search_calls() == calls
    search(x, codebook[:2047], "1")
    assert sgcvq._C.leaf_search_calls() == calls + 1
    assert "f32_small_d_leaves" in sgcvq._C.cpu_options()["collectors"]


def test_far_tokens_hand_over_to_the_scan():
    g = torch.Generator().manual_seed(17)
    codebook = torch.randn(4096, 8, generator=g)
    search(torch.randn(8192, 8, generator=g) + 1e4, codebook, "1")
    visits, possible = sgcvq._C.last_leaf_visits()
    # The first work items (512 tokens each, one per thread) visit most leaves; then the scan takes
    # the rest, which counts in neither figure.
    assert visits > 0.35 * possible and 0 < possible < 8192 * 64, (visits, possible)


@pytest.mark.parametrize("D", [1, 3, 8])
@pytest.mark.parametrize("scale", [1.0, 3.7, 1e3])
def test_nearest_code_just_across_a_box_face(D, scale):
    # Two leaves along feature 0: 64 codes in [-0.063, 0] (the left leaf; the cut is 0) and 64 in
    # [2.0002, 2.0128] (the right). A token at x0 = 1 is on the right of the cut, so its own leaf is
    # the right one, whose two best codes sit 1.0002 and 1.0004 away; the nearest code is 0, in the
    # left leaf, 1 away: exactly the left box's bound. The left leaf may be skipped only if the
    # bound were over-estimated by more than 0.08% (a scale of 1.001 instead of 1 - (2D + 8)u
    # returns code 64, and the certificate, whose error bound is small next to the 0.0004 gaps
    # with these small norms, accepts it); float32 tells 1 from 1.0002^2 apart, so the index must
    # be the oracle's.
    left = torch.zeros(64, D)
    left[:, 0] = -0.001 * torch.arange(64.0).flip(0)  # code 63 at 0
    right = torch.zeros(64, D)
    right[:, 0] = 2.0002 + 0.0002 * torch.arange(64.0)
    codebook = scale * torch.cat([left, right])
    x = torch.zeros(4, D)
    x[:, 0] = 1.0
    x = scale * x
    index = check(x, codebook)
    assert index.tolist() == [63] * 4
