"""nearest_code on the "auto" path and the "cpu" / "reference" backends.

The oracle is a float64 argmin. A compiled backend works in float32, so where two codes are
closer than float32 can tell apart the chosen index may differ from the oracle's; the tests then
require the two float64 distances to agree within the float32 error bound (a near-tie), and
exact equality everywhere else. Exact ties (duplicated code rows) must go to the lowest index.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sgcvq
from sgcvq import nearest_code_reference, ops

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("auto", "cpu", "reference")
# The same answer in every mode. On the CPU "exact" and "fast_exact" take certified bf16 candidates
# where the CPU has bf16 dot products (AMX or AVX512_BF16) and at least 256 tokens come in;
# "exact_fp32" always takes float32 candidates.
MODES = ("exact", "fast_exact", "exact_fp32")
DIRECT_MAX_D = 16  # csrc/cpu/collectors.cpp: D <= 16 takes the small-D scan, larger D the GEMM tiles

# (N, K, D): every N in {1, 7, 1023}, K in {1, 3, 1000}, D in {1, 3, 8, 65, 256} appears, on both
# sides of DIRECT_MAX_D, without the full cross product (the float64 oracle is the slow part).
SHAPES = [
    (1, 1, 1),
    (7, 3, 3),
    (7, 1, 8),
    (1023, 3, 1),
    (1023, 1000, 8),
    (1023, 1, 65),
    (7, 1000, 65),
    (1023, 1000, 65),
    (1, 1000, 256),
    (1023, 3, 256),
]

def group_sizes(K: int, generator: torch.Generator) -> list[int]:
    """Unequal class groups summing to K, with a single-code group and an empty group when K allows."""
    if K == 1:
        return [1]
    if K < 4:
        return [1, 0, K - 1]
    cuts = torch.randperm(K - 2, generator=generator)[:2].add(1).sort().values.tolist()
    return [1, cuts[0], 0, cuts[1] - cuts[0], K - 1 - cuts[1]]


def sample_inputs(
    N: int,
    K: int,
    D: int,
    dtype: torch.dtype = torch.float32,
    *,
    labelled: bool = False,
    generator: torch.Generator | None = None,
) -> dict:
    """Fresh random inputs: x [N, D], codebook [K, D] in `dtype`, and with `labelled` int64
    labels [N] in [-1, C) (about a fifth -1, none on an empty group) and offsets [C+1]."""
    g = generator
    x = torch.randn(N, D, generator=g).to(dtype)
    codebook = torch.randn(K, D, generator=g).to(dtype)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    if labelled:
        sizes = group_sizes(K, torch.Generator().manual_seed(K))
        offsets = torch.tensor([0] + sizes).cumsum(0)
        non_empty = torch.tensor([c for c, s in enumerate(sizes) if s > 0])
        labels = non_empty[torch.randint(len(non_empty), (N,), generator=g)]
        labels[torch.rand(N, generator=g) < 0.2] = -1
        inputs.update(labels=labels, offsets=offsets)
    return inputs


def oracle(x, codebook, labels=None, offsets=None) -> torch.Tensor:
    """float64 argmin computed independently of sgcvq.reference (cdist without the GEMM trick)."""
    d = torch.cdist(x.double(), codebook.double(), compute_mode="donot_use_mm_for_euclid_dist")
    if labels is not None:
        k = torch.arange(codebook.shape[0])
        lab = labels.long()
        lo = torch.where(lab < 0, 0, offsets.long()[lab.clamp(min=0)])
        hi = torch.where(lab < 0, codebook.shape[0], offsets.long()[lab.clamp(min=0) + 1])
        d = d.masked_fill((k[None] < lo[:, None]) | (k[None] >= hi[:, None]), float("inf"))
    return d.argmin(1)


def sqdist64(x, codebook, index) -> torch.Tensor:
    """float64 ||x_i - codebook[index_i]||^2 of the (low-precision) input values."""
    return (x.double() - codebook.double()[index]).pow(2).sum(1)


def fp32_rtol(D: int) -> float:
    """Relative error bound of a float32 sum of D squares (and never tighter than 1e-6)."""
    return max(1e-6, 2.0 * D * 2.0**-24)


def assert_nearest(inputs: dict, index: torch.Tensor, sqdist: torch.Tensor, expected: torch.Tensor) -> None:
    """index equals `expected` except at near-ties; sqdist is the distance of the chosen code."""
    x, codebook = inputs["x"], inputs["codebook"]
    N, D = x.shape
    assert index.dtype == torch.int64 and index.shape == (N,)
    assert sqdist.dtype == torch.float32 and sqdist.shape == (N,)
    d_got, d_want = sqdist64(x, codebook, index), sqdist64(x, codebook, expected)
    differ = index != expected
    if differ.any():
        gap = (d_got - d_want).abs()[differ]
        allowed = fp32_rtol(D) * d_want[differ] + 1e-12
        worst = int(differ.nonzero()[(gap / allowed).argmax()])
        assert bool((gap <= allowed).all()), (
            f"{int(differ.sum())} indices differ; token {worst}: got code {int(index[worst])} at "
            f"{float(d_got[worst])!r}, expected code {int(expected[worst])} at {float(d_want[worst])!r}"
        )
    torch.testing.assert_close(sqdist.double(), d_got, rtol=fp32_rtol(D), atol=1e-6)
    labels, offsets = inputs["labels"], inputs["offsets"]
    if labels is not None:
        assert_in_group(index, labels, offsets, codebook.shape[0])


def assert_in_group(index, labels, offsets, K) -> None:
    """The semantic guarantee: a labelled token's code lies in its class group."""
    lab, off = labels.long(), offsets.long()
    lo = torch.where(lab < 0, 0, off[lab.clamp(min=0)])
    hi = torch.where(lab < 0, K, off[lab.clamp(min=0) + 1])
    outside = (index < lo) | (index >= hi)
    assert not outside.any(), f"tokens {outside.nonzero()[:5, 0].tolist()} got codes outside their group"


# The CPU's bf16 paths (csrc/cpu/nearest_code_bf16.h): SGCVQ_CPU_BF16 forces one. Every path this
# CPU runs is tested; the others are skipped (the AMX path needs an Intel CPU with AMX).
CPU_CAPS = sgcvq._C.cpu_capabilities() if ops.HAS_CPU_EXTENSION else {}
CPU_PATHS = CPU_CAPS.get("bf16_paths", ("off",))
ALL_PATHS = ("amx", "avx512bf16", "off")
BF16_PATHS = [p for p in ALL_PATHS if p != "off"]


def path_param(path: str):
    return pytest.param(path, id=f"path={path}", marks=pytest.mark.skipif(
        path not in CPU_PATHS, reason=f"this CPU runs the bf16 paths {CPU_PATHS}, not {path}"))


# (backend, forced CPU path): the CPU backends on every path, the reference once.
BACKEND_PATHS = [pytest.param(b, p.values[0], id=f"{b}-{p.values[0]}", marks=p.marks)
                 for b in ("auto", "cpu") for p in map(path_param, ALL_PATHS)] + [
    pytest.param("reference", None, id="reference")]


@pytest.fixture
def force_path(monkeypatch):
    """force_path(p) makes the CPU kernels take bf16 path p (None: the default) for this test."""
    def force(path):
        if path is None:
            monkeypatch.delenv("SGCVQ_CPU_BF16", raising=False)
        else:
            monkeypatch.setenv("SGCVQ_CPU_BF16", path)
    return force


def run(inputs: dict, backend: str, **kw):
    return sgcvq.nearest_code(
        inputs["x"], inputs["codebook"], inputs["labels"], inputs["offsets"], backend=backend, **kw
    )


def expected_index(inputs: dict, backend: str) -> torch.Tensor:
    # The reference is the spec for the compiled backends; the reference itself meets the oracle.
    args = (inputs["x"], inputs["codebook"], inputs["labels"], inputs["offsets"])
    return oracle(*args) if backend == "reference" else nearest_code_reference(*args)[0]


# --------------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------------
def shape_cases(largest: bool) -> list:
    """(N, K, D, dtype) cases; the shapes above 1e7 N*K*D (float64 reference ~1 s each) run in
    float32 only, and only when `largest`."""
    return [
        pytest.param(N, K, D, dtype, id=f"{N}-{K}-{D}-{str(dtype)[6:]}")
        for N, K, D in SHAPES
        for dtype in DTYPES
        if N * K * D <= 10**7 or (largest and dtype == torch.float32)
    ]


@pytest.mark.parametrize("path", [path_param(p) for p in ALL_PATHS])
@pytest.mark.parametrize("labelled", [False, True], ids=["all-codes", "labels"])
@pytest.mark.parametrize("N,K,D,dtype", shape_cases(largest=True))
def test_compiled_backends_match_reference(N, K, D, dtype, labelled, path, force_path):
    force_path(path)
    inputs = sample_inputs(N, K, D, dtype, labelled=labelled)
    expected = expected_index(inputs, "cpu")  # one float64 reference for both backends and modes
    for backend in ("auto", "cpu"):
        for mode in MODES:
            index, sqdist = run(inputs, backend, mode=mode)
            assert_nearest(inputs, index, sqdist, expected)


@pytest.mark.parametrize("labelled", [False, True], ids=["all-codes", "labels"])
@pytest.mark.parametrize("N,K,D,dtype", shape_cases(largest=False))
def test_reference_backend_matches_oracle(N, K, D, dtype, labelled):
    inputs = sample_inputs(N, K, D, dtype, labelled=labelled)
    index, sqdist = run(inputs, "reference")
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "reference"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [3, 65])
def test_fast_exact_mode_gives_the_exact_answer(D, backend):
    inputs = sample_inputs(300, 700, D, labelled=True)
    index, sqdist = run(inputs, backend, mode="fast_exact")
    assert_nearest(inputs, index, sqdist, expected_index(inputs, backend))


# The CPU's bf16 paths themselves (D > 16: GEMM tiles; D <= 16: a fused AVX512_BF16 scan).
bf16_paths = pytest.mark.parametrize("path", [path_param(p) for p in BF16_PATHS])
needs_bf16 = pytest.mark.skipif(not CPU_CAPS.get("bf16_gemm"), reason="no bf16 dot products (AMX, AVX512_BF16) here")


@bf16_paths
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,D", [(2000, 1000, 256), (300, 3000, 65), (1500, 700, 17), (600, 2000, 130),
                                   (1000, 3000, 8), (700, 2000, 16), (500, 999, 1), (300, 1000, 5)])
def test_bf16_search_certifies_most_tokens(N, K, D, dtype, path, force_path):
    # Exact answers, and on spread-out data the bf16 candidates prove nearly all of them: only
    # near-ties closer than a token's margin go to the exact search. N = 300 (one run of tokens)
    # also splits the code range across work items. (The path starts at 256 tokens.)
    force_path(path)
    inputs = sample_inputs(N, K, D, dtype, labelled=True)
    expected = expected_index(inputs, "cpu")
    # ("exact" takes the bf16 path only where it is the faster: at D <= 16 from 4096 codes a token.)
    for mode in ("exact", "fast_exact"):
        calls = sgcvq._C.bf16_search_calls()
        index, sqdist = run(inputs, "cpu", mode=mode)
        assert_nearest(inputs, index, sqdist, expected)
        if mode == "exact":
            continue
        assert sgcvq._C.bf16_search_calls() == calls + 1, f"{mode}: the bf16 path did not run"
        # At D = 1 most of a token's codes lie within its margin: the candidate lists overflow.
        assert 0 <= sgcvq._C.last_fast_exact_redo() <= (N if D < 4 else max(2, 0.05 * N))


@bf16_paths
@pytest.mark.parametrize("labelled", [False, True], ids=["all-codes", "labels"])
@pytest.mark.parametrize("D", range(1, DIRECT_MAX_D + 1))
def test_bf16_small_d_runner_up_nearby(D, labelled, path, force_path):
    # The fused small-D scan: each token's runner-up is a code 1e-3 away from its best, 16 codes
    # (the same vector lane) or 1 code after it, inside the seed window, past it, and in the last
    # vector; bf16 cannot tell the two apart, so both must reach the float32 re-score.
    force_path(path)
    K, N = 3000, 400
    g = torch.Generator().manual_seed(2000 + D)
    codebook = torch.randn(K, D, generator=g)
    spots = [3, 250, 257, 1800, K - 20]
    for p in spots:
        codebook[p + (16 if p % 2 else 1)] = codebook[p] + 1e-3 * torch.randn(D, generator=g)
    x = codebook[torch.tensor(spots)[torch.randint(len(spots), (N,), generator=g)]]
    x = x + 1e-2 * torch.randn(N, D, generator=g)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    if labelled:  # group 1 starts and ends inside a vector of 16 codes and holds every spot's pair
        inputs["offsets"] = torch.tensor([0, 2, K - 2, K])
        inputs["labels"] = torch.where(torch.rand(N, generator=g) < 0.3, -1, 1)
    calls = sgcvq._C.bf16_search_calls()
    index, sqdist = run(inputs, "cpu", mode="fast_exact")
    assert sgcvq._C.bf16_search_calls() == calls + 1
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@bf16_paths
def test_bf16_search_sends_what_it_cannot_resolve_to_the_exact_path(path, force_path):
    force_path(path)
    # Codes 1e-3 apart: bf16 cannot tell them apart, so every token is re-searched in float32.
    centres = torch.randn(4, 64)
    codebook = centres.repeat_interleave(100, 0) + 1e-3 * torch.randn(400, 64)
    x = centres[torch.randint(4, (300,))] + 1e-3 * torch.randn(300, 64)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, sqdist = run(inputs, "cpu", mode="fast_exact")
    assert sgcvq._C.last_fast_exact_redo() == 300
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@bf16_paths
@pytest.mark.parametrize("D", [8, 64])
def test_bf16_search_gives_up_early_on_near_duplicate_codes(D, path, force_path):
    # Near-duplicate codes for every token: after the first 2048 tokens the bf16 search stops and
    # sends the rest straight to the float32 search, instead of searching them twice.
    force_path(path)
    centres = torch.randn(4, D)
    codebook = centres.repeat_interleave(100, 0) + 1e-3 * torch.randn(400, D)
    x = centres[torch.randint(4, (8192,))] + 1e-3 * torch.randn(8192, D)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, sqdist = run(inputs, "cpu", mode="fast_exact")
    assert sgcvq._C.last_fast_exact_redo() == 8192
    assert 2048 <= sgcvq._C.last_bf16_searched() <= 4096
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@bf16_paths
@pytest.mark.parametrize("D", [8, 64])
def test_bf16_search_centres_a_common_offset(D, path, force_path):
    # Features 100 standard deviations from the origin: bf16 of the raw values cannot separate the
    # codes, but the path centres x and the codes on the codebook's mean before rounding.
    force_path(path)
    centre = 100 * torch.randn(D)
    x, codebook = centre + torch.randn(3000, D), centre + torch.randn(1000, D)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, sqdist = run(inputs, "cpu", mode="fast_exact")
    # Uncentred, nearly every token would be redone.
    assert sgcvq._C.last_fast_exact_redo() <= (0.02 if D > 16 else 0.06) * 3000
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@bf16_paths
@pytest.mark.parametrize("mode", ["exact", "fast_exact"])
def test_bf16_input_near_ties_go_to_the_float32_path(mode, path, force_path):
    # bfloat16 codes that tie or nearly tie for every token: the bf16 path sends every token to the
    # float32 search, once, as one batch.
    force_path(path)
    centres = torch.randn(3, 48)
    codebook = centres.repeat_interleave(50, 0).bfloat16()
    codebook[1::50] += 2**-6  # a near twin next to each centre's first copy
    x = (centres[torch.randint(3, (400,))] + 1e-3 * torch.randn(400, 48)).bfloat16()
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    calls = sgcvq._C.bf16_search_calls()
    index, sqdist = run(inputs, "cpu", mode=mode)
    assert sgcvq._C.bf16_search_calls() == calls + 1
    assert sgcvq._C.last_fast_exact_redo() == 400
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@needs_bf16
@pytest.mark.parametrize("D", [8, 64])
def test_exact_mode_takes_the_bf16_path_and_exact_fp32_does_not(D):
    if D <= 16 and CPU_PATHS[0] == "avx2int16":
        pytest.skip("AVX2 CPUs search D <= 16 with the float32 scan (tests/test_cpu_avx2.py)")
    inputs = sample_inputs(2000, 5000, D)  # at D <= 16 "exact" takes bf16 from 4096 codes a token
    expected = expected_index(inputs, "cpu")
    for mode, took in (("exact", 1), ("exact_fp32", 0)):
        calls = sgcvq._C.bf16_search_calls()
        index, sqdist = run(inputs, "cpu", mode=mode)
        assert sgcvq._C.bf16_search_calls() == calls + took, mode
        assert_nearest(inputs, index, sqdist, expected)


@pytest.mark.parametrize("value", ["off", "0"])
def test_bf16_path_can_be_turned_off(value, monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_BF16", value)
    caps = sgcvq._C.cpu_capabilities()
    assert caps["bf16_gemm"] is False and caps["bf16_path"] == "off"
    inputs = sample_inputs(400, 300, 40)
    calls = sgcvq._C.bf16_search_calls()
    index, sqdist = run(inputs, "cpu", mode="fast_exact")
    assert sgcvq._C.bf16_search_calls() == calls  # the bf16 search did not run
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@pytest.mark.parametrize("path", [path_param(p) for p in ALL_PATHS])
def test_cpu_capabilities_report_the_forced_path(path, monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_BF16", path)
    caps = sgcvq._C.cpu_capabilities()
    assert caps["bf16_path"] == path and caps["bf16_gemm"] is (path != "off")
    monkeypatch.delenv("SGCVQ_CPU_BF16")
    assert sgcvq._C.cpu_capabilities()["bf16_path"] == CPU_PATHS[0]  # the default: the fastest here


@pytest.mark.parametrize("path", BF16_PATHS)
def test_forcing_a_path_this_cpu_cannot_run_is_an_error(path, monkeypatch):
    if path in CPU_PATHS:
        pytest.skip(f"this CPU runs the {path} path")
    monkeypatch.setenv("SGCVQ_CPU_BF16", path)
    with pytest.raises(RuntimeError, match=f"SGCVQ_CPU_BF16={path} but this CPU"):
        sgcvq._C.cpu_capabilities()
    with pytest.raises(RuntimeError, match=f"SGCVQ_CPU_BF16={path} but this CPU"):
        run(sample_inputs(300, 100, 32), "cpu")


def test_unknown_bf16_path_is_an_error(monkeypatch):
    monkeypatch.setenv("SGCVQ_CPU_BF16", "avx10")
    with pytest.raises(RuntimeError, match="SGCVQ_CPU_BF16 must be 'amx', 'avx512bf16', 'avx2int16' or 'off', got 'avx10'"):
        run(sample_inputs(300, 100, 32), "cpu")


@pytest.mark.parametrize("backend,path", BACKEND_PATHS)
@pytest.mark.parametrize("D", [8, 65])
@pytest.mark.parametrize("mode", MODES)
def test_near_duplicate_codes(D, backend, mode, path, force_path):
    force_path(path)
    # Codes 1e-3 apart around a few centres, tokens near the centres: many near-ties.
    centres = torch.randn(4, D)
    codebook = (centres.repeat_interleave(150, 0) + 1e-3 * torch.randn(600, D))[torch.randperm(600)]
    x = centres[torch.randint(4, (500,))] + 1e-3 * torch.randn(500, D)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, sqdist = run(inputs, backend, mode=mode)
    assert_nearest(inputs, index, sqdist, expected_index(inputs, backend))


@pytest.mark.parametrize("backend,path", BACKEND_PATHS)
@pytest.mark.parametrize("D", [8, 65, 256])
@pytest.mark.parametrize("mode", MODES)
def test_large_common_offset(D, backend, mode, path, force_path):
    force_path(path)
    # Tokens and codes 100 standard deviations from the origin: ||e||^2 - 2 x.e cancels badly, so
    # a search that trusts the expansion picks the wrong code; the answer must still be exact.
    centre = 100 * torch.randn(D)
    x, codebook = centre + torch.randn(300, D), centre + torch.randn(1000, D)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, sqdist = run(inputs, backend, mode=mode)
    assert_nearest(inputs, index, sqdist, expected_index(inputs, backend))


@pytest.mark.parametrize("backend,path", BACKEND_PATHS)
@pytest.mark.parametrize("D", [8, 65])
@pytest.mark.parametrize("mode", MODES)
def test_exact_ties_go_to_lowest_index(D, backend, mode, path, force_path):
    force_path(path)
    # Each source code is copied to later positions in other 64-code blocks, 512-code GEMM tiles
    # and code-range splits: the copies tie exactly and the first copy must win.
    K = 3000
    codebook = torch.randn(K, D)
    for src, dst in [(5, 70), (5, 1500), (5, 2999), (600, 601), (600, 2100), (1000, 1063)]:
        codebook[dst] = codebook[src]
    sources = torch.tensor([5, 600, 1000])
    x = codebook[sources[torch.randint(3, (300,))]] + 0.05 * torch.randn(300, D)  # >= 256: bf16 runs
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, _ = run(inputs, backend, mode=mode)
    torch.testing.assert_close(index, oracle(x, codebook), rtol=0, atol=0)


@pytest.mark.parametrize("backend,path", BACKEND_PATHS)
@pytest.mark.parametrize("K", [16, 63, 1000, 3000])
@pytest.mark.parametrize("D", [3, 8, 16, 17])
@pytest.mark.parametrize("mode", MODES)
def test_identical_codes_all_tie_to_code_zero(D, K, backend, mode, path, force_path):
    force_path(path)
    # Every code is the same row (a stride-0 codebook): wherever a code sits in a SIMD block, tile
    # or split, its distance must round the same, so every token gets code 0.
    x = torch.randn(300, D)  # >= 256 tokens: the bf16 paths run too
    codebook = torch.randn(1, D).expand(K, D)
    index, sqdist = sgcvq.nearest_code(x, codebook, backend=backend, mode=mode)
    assert index.tolist() == [0] * 300
    torch.testing.assert_close(sqdist.double(), sqdist64(x, codebook, index), rtol=fp32_rtol(D), atol=1e-6)


@pytest.mark.parametrize("labelled", [False, True], ids=["all-codes", "labels"])
@pytest.mark.parametrize("D", range(1, DIRECT_MAX_D + 1))
def test_runner_up_in_the_same_simd_lane(D, labelled):
    # The D <= 16 scan keeps a per-lane top-2 over a range's first codes (the window, about 40 KB
    # of codes, nearest_code_scan.cpp) and a running top-2 after it. Each token's runner-up sits
    # 16 codes (one block, the same lane) after its best: early in the window, across its end, and
    # in the branchy part, for every D the scan is specialised for.
    K, N = 6000, 96
    g = torch.Generator().manual_seed(1000 + D)
    codebook = torch.randn(K, D, generator=g)
    window = 40960 // (64 * (D + 1)) * 16
    spots = [3, window - 16 + 5, window + 37, K - 20]
    for p in spots:
        codebook[p + 16] = codebook[p] + 1e-3 * torch.randn(D, generator=g)
    x = codebook[torch.tensor(spots)[torch.randint(len(spots), (N,), generator=g)]]
    x = x + 1e-2 * torch.randn(N, D, generator=g)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    if labelled:  # group 1 starts and ends inside a block and holds every spot's pair
        inputs["offsets"] = torch.tensor([0, 2, K - 2, K])
        inputs["labels"] = torch.where(torch.rand(N, generator=g) < 0.3, -1, 1)
    index, sqdist = run(inputs, "cpu")
    assert_nearest(inputs, index, sqdist, expected_index(inputs, "cpu"))


@pytest.mark.parametrize("backend,path", BACKEND_PATHS)
@pytest.mark.parametrize("D", [8, 65])
@pytest.mark.parametrize("mode", MODES)
def test_duplicated_codes_inside_a_group(D, backend, mode, path, force_path):
    force_path(path)
    # A group whose codes are all the same row: its tokens get the group's first code.
    K = 700
    codebook = torch.randn(K, D)
    codebook[100:400] = torch.randn(1, D)
    offsets = torch.tensor([0, 100, 400, K])
    x = torch.randn(257, D)
    labels = torch.randint(-1, 3, (257,))
    inputs = {"x": x, "codebook": codebook, "labels": labels, "offsets": offsets}
    index, _ = run(inputs, backend, mode=mode)
    assert (index[labels == 1] == 100).all()
    torch.testing.assert_close(index, oracle(x, codebook, labels, offsets), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Labels, layouts, empty input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [3, 65])
def test_ignore_label_searches_all_codes(D, backend):
    inputs = sample_inputs(500, 400, D, labelled=True)
    index, _ = run(inputs, backend)
    free = inputs["labels"] == -1
    assert free.any()
    global_best = oracle(inputs["x"], inputs["codebook"])
    torch.testing.assert_close(index[free], global_best[free], rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=str)
def test_int32_labels_and_offsets(label_dtype, backend):
    inputs = sample_inputs(200, 300, 20, labelled=True)
    inputs["labels"] = inputs["labels"].to(label_dtype)
    inputs["offsets"] = inputs["offsets"].to(label_dtype)
    index, sqdist = run(inputs, backend)
    assert_nearest(inputs, index, sqdist, expected_index(inputs, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [6, 130])
def test_non_contiguous_inputs(D, backend):
    base = sample_inputs(301, 257, D, labelled=True)
    wide_labels = torch.stack([base["labels"], base["labels"]], 1)
    inputs = {
        "x": torch.randn(301, 2 * D)[:, ::2],  # strided columns
        "codebook": base["codebook"].t().contiguous().t(),  # column-major
        "labels": wide_labels[:, 1],  # stride 2
        "offsets": base["offsets"],
    }
    assert not any(inputs[k].is_contiguous() for k in ("x", "codebook", "labels"))
    index, sqdist = run(inputs, backend)
    assert_nearest(inputs, index, sqdist, expected_index(inputs, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [5, 40])
def test_expanded_inputs(D, backend):
    # x: one token repeated (stride 0 rows) -> one answer for all; codebook: stride-0 columns.
    x = torch.randn(1, D).expand(333, D)
    codebook = torch.randn(500, 1).expand(500, D)
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    index, sqdist = run(inputs, backend)
    assert (index == index[0]).all()
    assert_nearest(inputs, index, sqdist, expected_index(inputs, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labelled", [False, True])
def test_empty_input(labelled, backend):
    inputs = sample_inputs(0, 10, 7, labelled=labelled)
    index, sqdist = run(inputs, backend)
    assert index.shape == (0,) and index.dtype == torch.int64
    assert sqdist.shape == (0,) and sqdist.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Property test: small integer grids make exact ties common, and their distances exact in fp32
# --------------------------------------------------------------------------------------------
@st.composite
def grid_inputs(draw):
    """Small shapes and class groups from hypothesis; values on the grid {-1.5, -1, ..., 1.5}."""
    N, K, D = draw(st.integers(0, 12)), draw(st.integers(1, 80)), draw(st.integers(1, 24))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    x = torch.randint(-3, 4, (N, D), generator=g).float() / 2
    codebook = torch.randint(-3, 4, (K, D), generator=g).float() / 2
    inputs = {"x": x, "codebook": codebook, "labels": None, "offsets": None}
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, K), max_size=4)))
        offsets = torch.tensor([0, *cuts, K])
        non_empty = [c for c in range(len(offsets) - 1) if offsets[c + 1] > offsets[c]]
        labels = draw(st.lists(st.sampled_from([-1, *non_empty]), min_size=N, max_size=N))
        inputs.update(labels=torch.tensor(labels, dtype=torch.int64), offsets=offsets)
    return inputs


@settings(max_examples=60, deadline=None)
@given(inputs=grid_inputs(), backend=st.sampled_from(BACKENDS), mode=st.sampled_from(MODES))
def test_property_exact_on_integer_grids(inputs, backend, mode):
    # Half-integers: every distance is exact in float32 (whatever the summation order), so the
    # compiled backends must return the float64 argmin exactly, ties to the lowest index.
    index, sqdist = run(inputs, backend, mode=mode)
    want = oracle(inputs["x"], inputs["codebook"], inputs["labels"], inputs["offsets"])
    torch.testing.assert_close(index, want, rtol=0, atol=0)
    torch.testing.assert_close(sqdist.double(), sqdist64(inputs["x"], inputs["codebook"], want), rtol=0, atol=0)
    if inputs["labels"] is not None:
        assert_in_group(index, inputs["labels"], inputs["offsets"], inputs["codebook"].shape[0])


# --------------------------------------------------------------------------------------------
# Autograd, opcheck, torch.compile
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("D", [3, 65])
def test_backward_matches_autograd_of_the_formula(D, labelled):
    inputs = sample_inputs(400, 50, D, labelled=labelled)  # 400 tokens on 50 codes: shared codes
    x = inputs["x"].requires_grad_()
    codebook = inputs["codebook"].requires_grad_()
    index, sqdist = sgcvq.nearest_code(x, codebook, inputs["labels"], inputs["offsets"])
    assert not index.requires_grad
    weight = torch.randn(400)
    gx, gc = torch.autograd.grad((sqdist * weight).sum(), (x, codebook))

    x2 = x.detach().clone().requires_grad_()
    c2 = codebook.detach().clone().requires_grad_()
    want = ((x2 - c2[index]) ** 2).sum(1)
    wx, wc = torch.autograd.grad((want * weight).sum(), (x2, c2))
    torch.testing.assert_close(gx, wx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc, wc, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_backward_low_precision(dtype):
    inputs = sample_inputs(64, 16, 12, dtype)
    x = inputs["x"].requires_grad_()
    codebook = inputs["codebook"].requires_grad_()
    index, sqdist = sgcvq.nearest_code(x, codebook)
    sqdist.sum().backward()
    assert x.grad.dtype == dtype and codebook.grad.dtype == dtype
    want_x = 2 * (x.detach().float() - codebook.detach().float()[index])
    torch.testing.assert_close(x.grad.float(), want_x, rtol=1e-2, atol=1e-2)


def test_gradcheck_of_the_backward_formula_in_float64():
    # The op has no float64 kernel, so gradcheck numerically verifies the op's registered backward
    # on the forward it differentiates: sqdist(x, E) = ||x - E[index]||^2 with the index fixed.
    from sgcvq.ops import _nearest_code_backward

    class SqdistWithOpBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, codebook, index):
            ctx.save_for_backward(x, codebook, index)
            return ((x - codebook[index]) ** 2).sum(1)

        @staticmethod
        def backward(ctx, grad_sqdist):
            # The op's sqdist is float32, so its backward always receives a float32 gradient.
            grad_x, grad_codebook, *_ = _nearest_code_backward(ctx, None, grad_sqdist.float())
            return grad_x, grad_codebook, None

    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 3, 3, 1, 0, 2, 2, 2, 1])  # shared codes: the index_add path
    assert torch.autograd.gradcheck(SqdistWithOpBackward.apply, (x, codebook, index))


def test_gemm_path_with_a_codebook_that_requires_grad():
    # Regression: the GEMM path (D > 16) once ran at::mm_out on the caller's codebook from OpenMP
    # workers, where the caller's "below autograd" dispatch state does not hold, and failed with
    # "mm(): functions with out=... arguments don't support automatic differentiation" (the kernel
    # now detaches). Repeated calls make sure the worker threads run GEMM tiles.
    for _ in range(20):
        x = torch.randn(5, 20, requires_grad=True)
        codebook = torch.randn(7, 20, requires_grad=True)
        _, sqdist = sgcvq.nearest_code(x, codebook)
        sqdist.sum().backward()


@pytest.mark.parametrize(
    "D,requires_grad",
    [(3, False), (3, True), (20, False), (20, True)],
)
@pytest.mark.parametrize("labelled", [False, True])
def test_opcheck(D, requires_grad, labelled):
    inputs = sample_inputs(37, 11, D, labelled=labelled)
    x = inputs["x"].requires_grad_(requires_grad)
    codebook = inputs["codebook"].requires_grad_(requires_grad)
    # With inputs that require grad, opcheck's AOT-autograd check sums all outputs in place into the
    # int64 index's sum and fails (a limitation of that helper for ops with an integer output);
    # autograd under AOT is covered by test_torch_compile_backward instead.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(
        torch.ops.sgcvq.nearest_code.default,
        (x, codebook, inputs["labels"], inputs["offsets"], "exact"),
        test_utils=utils if requires_grad else utils + ("test_aot_dispatch_dynamic",),
    )


def _quantize_and_count(x, codebook, labels, offsets):
    index, sqdist = sgcvq.nearest_code(x, codebook, labels, offsets)
    counts, sums = sgcvq.cluster_stats(index, x, codebook.shape[0])
    return index, sqdist, counts, sums


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    torch._dynamo.reset()
    inputs = sample_inputs(97, 40, 24, labelled=True)
    args = (inputs["x"], inputs["codebook"], inputs["labels"], inputs["offsets"])
    compiled = torch.compile(_quantize_and_count, fullgraph=True, backend=compile_backend)
    for got, want in zip(compiled(*args), _quantize_and_count(*args)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torch_compile_backward():
    torch._dynamo.reset()
    inputs = sample_inputs(97, 40, 12, labelled=True)

    def loss(x, codebook, labels, offsets):
        _, sqdist = sgcvq.nearest_code(x, codebook, labels, offsets)
        return sqdist.mean()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        x = inputs["x"].clone().requires_grad_()
        codebook = inputs["codebook"].clone().requires_grad_()
        fn(x, codebook, inputs["labels"], inputs["offsets"]).backward()
        grads.append((x.grad, codebook.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# The exact search of uncertified tokens (taming-transformers' uniform(-1/K, 1/K) codebook)
# --------------------------------------------------------------------------------------------
def _cpu_has_avx512f() -> bool:
    """The CPU's own flag: direct_sqdist follows it even under SGCVQ_CPU_PORTABLE=1."""
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f " in f.read().replace("\n", " ")
    except OSError:
        return bool(CPU_CAPS.get("avx512"))


CPU_HAS_AVX512F = _cpu_has_avx512f()


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fma(a, b, c), rounded once: the product is exact in float64, TwoSum gives the
    float64 sum's error, and its sign settles the one case a second rounding can get wrong (the
    float64 sum exactly halfway between two floats)."""
    s, cc = a.double() * b.double(), c.double()
    r = s + cc
    bb = r - s
    err = (s - (r - bb)) + (cc - bb)
    f = r.float()
    up = torch.nextafter(f, torch.full_like(f, float("inf")))
    dn = torch.nextafter(f, torch.full_like(f, -float("inf")))
    f = torch.where((r == (f.double() + up.double()) / 2) & (err > 0), up, f)
    return torch.where((r == (f.double() + dn.double()) / 2) & (err < 0), dn, f)


def direct_sqdist_ref(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[N, K] float32 distances with the bits of csrc's direct_sqdist (nearest_code_scan.h): lane
    d % 16 accumulates (x_d - e_d)^2 chunk by chunk (fma on AVX-512 CPUs, else multiply then add),
    then the lanes are added by the tree 8, 4, 2, 1."""
    x, codebook = x.float(), codebook.float()
    D = x.shape[1]
    pad = (-D) % 16
    x = torch.nn.functional.pad(x, (0, pad))
    codebook = torch.nn.functional.pad(codebook, (0, pad))
    out = []
    for rows in x.split(16):
        t = rows[:, None, :] - codebook[None, :, :]
        acc = torch.zeros(t.shape[0], t.shape[1], 16)
        for c in range(t.shape[2] // 16):
            tc = t[..., 16 * c : 16 * (c + 1)]
            acc = fma32(tc, tc, acc) if CPU_HAS_AVX512F else acc + tc * tc
        for w in (8, 4, 2, 1):
            acc = acc[..., :w] + acc[..., w : 2 * w]
        out.append(acc[..., 0])
    return torch.cat(out)


def direct_argmin_ref(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract: the argmin of the direct float32 distance over the token's group, ties to the
    lowest index, and that distance."""
    d = direct_sqdist_ref(inputs["x"], inputs["codebook"])
    labels, offsets, K = inputs["labels"], inputs["offsets"], d.shape[1]
    if labels is not None:
        k = torch.arange(K)
        lo = torch.where(labels < 0, 0, offsets[labels.clamp(min=0)])
        hi = torch.where(labels < 0, K, offsets[labels.clamp(min=0) + 1])
        d = d.masked_fill((k[None] < lo[:, None]) | (k[None] >= hi[:, None]), float("inf"))
    index = d.argmin(1)  # the first of equal minima
    return index, d.gather(1, index[:, None])[:, 0]


def taming_inputs(N: int, K: int, D: int, dtype: torch.dtype, labelled: bool, seed: int) -> dict:
    """taming-transformers' codebook init uniform(-1/K, 1/K) against randn tokens: nearly every
    token is a near-tie the certificate cannot settle. A few exact ties (duplicated codes, tokens
    equal to a code) across the 16-code lane blocks and the 4-code micro-tiles."""
    g = torch.Generator().manual_seed(seed)
    inputs = sample_inputs(N, K, D, dtype, labelled=labelled, generator=g)
    codebook = torch.empty(K, D).uniform_(-1.0 / K, 1.0 / K, generator=g)
    for src, dst in ((5, 37), (2, 3), (17, 16)):
        if max(src, dst) < K:
            codebook[dst] = codebook[src]
    codebook = codebook.to(dtype)
    x = inputs["x"].clone()
    for i, k in ((0, 37 % K), (1, 3 % K), (2, 16 % K)):
        if i < N:
            x[i] = codebook[k]
    inputs.update(x=x, codebook=codebook)
    return inputs


def assert_bits_equal(got: tuple, want: tuple) -> None:
    assert torch.equal(got[0], want[0]), (got[0] != want[0]).nonzero()[:5].tolist()
    bits = got[1].view(torch.int32), want[1].float().view(torch.int32)
    assert torch.equal(*bits), (bits[0] != bits[1]).nonzero()[:5].tolist()


@pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="the CPU extension is not built")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("labelled", [False, True], ids=["all-codes", "labels"])
@pytest.mark.parametrize("D", [1, 5, 8, 16, 17, 33, 256])
def test_taming_init_gives_the_direct_fp32_bits(D, labelled, dtype, mode, monkeypatch):
    # 301 tokens: the bf16 paths run (>= 256 tokens), tiles of 64 and micro-tiles of 4 end ragged.
    N, K = 301, (300 if D > 64 else 700)
    inputs = taming_inputs(N, K, D, dtype, labelled, seed=D)
    want = direct_argmin_ref(inputs)
    assert_bits_equal(run(inputs, "cpu", mode=mode), want)
    monkeypatch.setenv("SGCVQ_CPU_RESEARCH", "loop")  # the former one-token-at-a-time re-search
    assert_bits_equal(run(inputs, "cpu", mode=mode), want)


@pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="the CPU extension is not built")
@pytest.mark.parametrize("N,K,D", [(1, 1, 1), (3, 17, 5), (65, 16, 16), (130, 33, 17), (7, 2, 300), (513, 50, 48)])
def test_exact_search_odd_shapes_match_the_one_token_loop(N, K, D, monkeypatch):
    # Tokens scaled to the codes' size: real differences between codes, not only near-ties.
    inputs = taming_inputs(N, K, D, torch.float32, labelled=K > 3, seed=N + K + D)
    inputs["x"] = inputs["x"] / K
    want = direct_argmin_ref(inputs)
    got = run(inputs, "cpu", mode="exact_fp32")
    monkeypatch.setenv("SGCVQ_CPU_RESEARCH", "loop")
    assert_bits_equal(got, want)
    assert_bits_equal(run(inputs, "cpu", mode="exact_fp32"), want)
