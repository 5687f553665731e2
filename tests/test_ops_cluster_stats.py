"""cluster_stats on the "auto" path and the "cpu" / "reference" backends.

counts must equal torch.bincount exactly; sums must match a float64 index_add within float32
accumulation error; the CPU kernel must be bit-identical run to run and across thread counts.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sgcvq

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("auto", "cpu", "reference")
PIECE = 2048  # csrc/cpu/cluster_stats_cpu.cpp sums the sorted tokens in pieces of this many


def sample_inputs(N: int, K: int, D: int, dtype: torch.dtype = torch.float32, *, pattern: str = "random") -> dict:
    """index [N] int64 in [0, K) and x [N, D] in `dtype`.

    pattern: "random" (uniform codes), "collapsed" (every token on one code, not code 0), or
    "skewed" (a few codes take most tokens, many stay empty: segments of every length).
    """
    x = torch.randn(N, D).to(dtype)
    if pattern == "random":
        index = torch.randint(K, (N,))
    elif pattern == "collapsed":
        index = torch.full((N,), K // 2, dtype=torch.int64)
    elif pattern == "skewed":
        index = (torch.rand(N).pow(4) * K).long().clamp(max=K - 1)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return {"index": index, "x": x, "K": K}


def expected_stats(index, x, K):
    """counts by bincount, sums by a float64 index_add (the reference does the same, so the
    reference backend is checked against this spelled-out definition)."""
    counts = torch.bincount(index, minlength=K).to(torch.float32)
    sums = torch.zeros(K, x.shape[1], dtype=torch.float64).index_add_(0, index, x.double())
    return counts, sums


def assert_stats(inputs, counts, sums) -> None:
    want_counts, want_sums = expected_stats(inputs["index"], inputs["x"], inputs["K"])
    K, D = inputs["K"], inputs["x"].shape[1]
    assert counts.dtype == torch.float32 and counts.shape == (K,)
    assert sums.dtype == torch.float32 and sums.shape == (K, D)
    torch.testing.assert_close(counts, want_counts, rtol=0, atol=0)
    # float32 accumulation of n terms ~N(0, 1): each add rounds a partial sum of size ~sqrt(i), so
    # the error is typically ~n * 2^-24; allow 16 times that.
    n = max(1.0, float(want_counts.max()))
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-5, atol=n * 2.0**-20)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "N,K,D,pattern",
    [
        (1, 1, 1, "random"),
        (7, 3, 3, "random"),
        (1023, 1000, 65, "random"),
        (1023, 17, 8, "skewed"),
        (5000, 40, 33, "skewed"),  # > PIECE tokens: segments cross piece boundaries
        (5000, 9, 3, "collapsed"),  # one segment through every piece
        (PIECE, 2, 5, "random"),  # exactly one full piece
    ],
)
def test_matches_bincount_and_index_add(N, K, D, pattern, dtype, backend):
    inputs = sample_inputs(N, K, D, dtype, pattern=pattern)
    counts, sums = sgcvq.cluster_stats(inputs["index"], inputs["x"], inputs["K"], backend=backend)
    assert_stats(inputs, counts, sums)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    counts, sums = sgcvq.cluster_stats(torch.empty(0, dtype=torch.int64), torch.randn(0, 6), 4, backend=backend)
    torch.testing.assert_close(counts, torch.zeros(4), rtol=0, atol=0)
    torch.testing.assert_close(sums, torch.zeros(4, 6), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_expanded_inputs(backend):
    index = torch.randint(50, (3001, 2))[:, 1]  # stride 2
    x = torch.randn(3001, 40)[:, ::3]  # strided columns
    expanded = torch.randn(1, 7).expand(3001, 7)  # every row the same memory
    for inputs in ({"index": index, "x": x, "K": 50}, {"index": index, "x": expanded, "K": 50}):
        assert not inputs["x"].is_contiguous()
        counts, sums = sgcvq.cluster_stats(inputs["index"], inputs["x"], inputs["K"], backend=backend)
        assert_stats(inputs, counts, sums)


@pytest.mark.parametrize("pattern", ["random", "skewed", "collapsed"])
def test_deterministic_across_calls_and_thread_counts(pattern):
    inputs = sample_inputs(3 * PIECE + 77, 64, 48, pattern=pattern)
    args = (inputs["index"], inputs["x"], inputs["K"])
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            results.append(sgcvq.cluster_stats(*args, deterministic=True))
    finally:
        torch.set_num_threads(before)
    for counts, sums in results[1:]:
        assert torch.equal(counts, results[0][0])
        assert torch.equal(sums, results[0][1]), "sums differ bit-wise between runs / thread counts"


@pytest.mark.parametrize("deterministic", [None, False, True])
def test_deterministic_flag_is_accepted(deterministic):
    inputs = sample_inputs(300, 20, 5)
    counts, sums = sgcvq.cluster_stats(inputs["index"], inputs["x"], inputs["K"], deterministic=deterministic)
    assert_stats(inputs, counts, sums)


@settings(max_examples=40, deadline=None)
@given(
    N=st.integers(0, 300),
    K=st.integers(1, 40),
    D=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
    backend=st.sampled_from(BACKENDS),
)
def test_property_counts_and_sums(N, K, D, seed, backend):
    g = torch.Generator().manual_seed(seed)
    # Codes drawn from a random subset of [0, K): some clusters stay empty.
    used = torch.randperm(K, generator=g)[: int(torch.randint(1, K + 1, (), generator=g))]
    inputs = {"index": used[torch.randint(len(used), (N,), generator=g)], "x": torch.randn(N, D, generator=g), "K": K}
    counts, sums = sgcvq.cluster_stats(inputs["index"], inputs["x"], K, backend=backend)
    assert_stats(inputs, counts, sums)
    assert float(counts.sum()) == N
    assert not sums[counts == 0].any(), "an empty cluster has a non-zero sum"


def test_opcheck():
    inputs = sample_inputs(300, 11, 20)
    for deterministic in (False, True):
        torch.library.opcheck(
            torch.ops.sgcvq.cluster_stats.default, (inputs["index"], inputs["x"], inputs["K"], deterministic)
        )
