"""CPU op benchmarks: sgcvq's kernels next to the usual ways of doing the same thing.

Groups (one pytest-benchmark group each, providers side by side in one run):
* nearest-code N,K,D   : ours (auto backend, default mode: the fastest certified path this CPU has), ours on
                         each forced CPU path (SGCVQ_CPU_BF16=amx / avx512bf16: bf16 candidates; mode
                         exact_fp32: float32 candidates; a path this CPU lacks is skipped) vs
                         torch.cdist+argmin, torch.addmm+argmin, faiss IndexFlatL2.search(k=1) (skipped if
                         faiss is missing); the machine record names the CPU model and its bf16 flags;
* nearest-code N,K,D <data>: the three data kinds (randn; post-ReLU + 1; tokens near codes: x = a
                         code + 0.01 randn) for ours (default mode), ours exact_fp32, the AVX2 kernels
                         forced (SGCVQ_CPU_AVX2=1, both modes: csrc/cpu/avx2/) and FAISS;
* nearest-code ... 1 thread, CPU time: ours vs FAISS vs addmm, each on one thread, timed in the
                         calling thread's CPU time (robust to other load on a shared machine);
* semantic N,K,D C=16  : ours with labels over 16 equal code groups vs ours over all codes (the
                         default, and with the k-d leaf search off: SGCVQ_CPU_LEAVES=0) vs a full
                         distance matrix masked outside each token's group (1 thread, CPU time);
* nearest-code taming-init N,K,D, 1 thread, CPU time: taming-transformers' codebook init
                         uniform(-1/K, 1/K), where nearly every token is a near-tie the certificate cannot
                         settle: ours (default mode, exact_fp32) vs the former one-token-at-a-time exact
                         re-search (SGCVQ_CPU_RESEARCH=loop) vs torch.addmm+argmin (taming's own search);
* cluster-stats N,K,D  : ours vs the one-hot matmul (vector-quantize-pytorch's way) vs index_add_.

Every provider's answer is checked against ours before it is timed, so a wrong provider fails
instead of being fast. Peak extra memory comes from a fresh process per provider (conftest.py).
Run as a script with `--memprobe KIND PROVIDER N K D` it is that child process; with
`--side-by-side [N,K,D ...]` it prints the table of benchmarks/RESULTS.md's CPU sections: every
provider in one process, alternating, medians of 5 (SGCVQ_BENCH_KIND=randn|relu|near, 2 threads
unless SGCVQ_BENCH_THREADS says otherwise).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sgcvq

QUICK = os.environ.get("SGCVQ_BENCH_QUICK", "0") not in ("", "0")
C = 16  # semantic classes, labels uniform over them, equal code groups

NEAREST_SHAPES = [(4096, 1024, 256), (4096, 2048, 64), (8192, 4096, 8)] if QUICK else [
    (65536, 1024, 256), (16384, 8192, 64), (65536, 16384, 8)]
SEMANTIC_SHAPES = [(8192, 4096, 8)] if QUICK else [(65536, 16384, 8), (65536, 8192, 64)]
STATS_SHAPES = [(8192, 1024, 64)] if QUICK else [(65536, 8192, 256)]
TAMING_SHAPES = [(4096, 4096, 8), (1024, 2048, 256)] if QUICK else [(16384, 16384, 8), (4096, 8192, 256)]
TAMING_PROVIDERS = ["ours", "ours exact_fp32", "ours re-search=loop", "torch.addmm+argmin"]

# "ours bf16=<path>": the default mode with SGCVQ_CPU_BF16 forcing that path (csrc/cpu/nearest_code_bf16.h).
OUR_PATHS = ["ours bf16=amx", "ours bf16=avx512bf16", "ours bf16=avx2int16", "ours exact_fp32"]
# The AVX2 kernels forced (SGCVQ_CPU_AVX2=1: an AVX-512 CPU runs them too), in both modes.
AVX2_PROVIDERS = ["ours avx2", "ours avx2 exact_fp32"]
DATA_KINDS = ["randn", "relu+1", "near codes"]
DATA_PROVIDERS = ["ours", "ours exact_fp32", *AVX2_PROVIDERS, "faiss.IndexFlatL2"]
NEAREST_PROVIDERS = ["ours", *OUR_PATHS, "torch.cdist+argmin", "torch.addmm+argmin", "faiss.IndexFlatL2"]
SEMANTIC_PROVIDERS = ["ours C=16", "ours all codes", "ours all codes, scan", "masked full matrix"]
STATS_PROVIDERS = ["ours", "one-hot matmul", "index_add_"]


# --------------------------------------------------------------------------------------------
# Inputs and providers (shared by the benchmarks and the memory-probe child)
# --------------------------------------------------------------------------------------------
def search_inputs(N: int, K: int, D: int) -> dict:
    g = torch.Generator().manual_seed(N * 7 + K * 3 + D)
    x = torch.randn(N, D, generator=g)
    codebook = torch.randn(K, D, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    offsets = torch.arange(C + 1) * K // C
    return {"x": x, "codebook": codebook, "labels": labels, "offsets": offsets}


def data_inputs(N: int, K: int, D: int, kind: str) -> dict:
    """randn tokens and codes; "relu+1": both post-ReLU plus 1 (a large common offset); "near
    codes": each token a code plus 0.01 randn (what a trained codebook sees)."""
    g = torch.Generator().manual_seed(N * 7 + K * 3 + D)
    x, codebook = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    if kind == "relu+1":
        x, codebook = torch.relu(x) + 1.0, torch.relu(codebook) + 1.0
    elif kind == "near codes":
        x = codebook[torch.randint(K, (N,), generator=g)] + 0.01 * x
    elif kind != "randn":
        raise ValueError(f"unknown data kind {kind!r}")
    return {"x": x, "codebook": codebook}


def taming_inputs(N: int, K: int, D: int) -> dict:
    """randn tokens against taming-transformers' codebook init, uniform(-1/K, 1/K)."""
    g = torch.Generator().manual_seed(N * 5 + K + D)
    return {"x": torch.randn(N, D, generator=g),
            "codebook": torch.empty(K, D).uniform_(-1.0 / K, 1.0 / K, generator=g)}


def stats_inputs(N: int, K: int, D: int) -> dict:
    g = torch.Generator().manual_seed(N + K + D)
    return {"index": torch.randint(0, K, (N,), generator=g), "x": torch.randn(N, D, generator=g), "K": K}


def addmm_distances(x, codebook):
    """||e||^2 - 2 x.e (the ||x||^2 term does not change the argmin): one [N, K] matrix."""
    return torch.addmm(codebook.pow(2).sum(1)[None], x, codebook.t(), alpha=-2)


def cpu_bf16_paths() -> tuple:
    """The CPU bf16 paths this machine runs, fastest first ('off' last; () without the extension)."""
    return tuple(sgcvq._C.cpu_capabilities()["bf16_paths"]) if sgcvq.ops.HAS_CPU_EXTENSION else ()


@contextlib.contextmanager
def forced_bf16_path(path: str | None):
    """SGCVQ_CPU_BF16=path for the duration (the CPU kernels read it on every call)."""
    with cpu_setting("SGCVQ_CPU_BF16", path):
        yield


@contextlib.contextmanager
def cpu_setting(name: str, value: str | None):
    """The CPU kernels' switch `name` = value for the duration (None: as it is)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def avx2_here() -> bool:
    """The AVX2 kernels can run on this CPU (x86-64 with AVX2 + FMA + F16C)."""
    if not sgcvq.ops.HAS_CPU_EXTENSION:
        return False
    old = os.environ.get("SGCVQ_CPU_AVX2")
    os.environ["SGCVQ_CPU_AVX2"] = "1"
    try:
        return "avx2int16" in sgcvq._C.cpu_capabilities()["bf16_paths"]
    except RuntimeError:
        return False
    finally:
        if old is None:
            os.environ.pop("SGCVQ_CPU_AVX2", None)
        else:
            os.environ["SGCVQ_CPU_AVX2"] = old


def nearest_provider(name: str, inp: dict):
    """A no-argument callable returning index [N] int64; setup that is not search (index build) done here."""
    x, e = inp["x"], inp["codebook"]
    if name == "ours":
        return lambda: sgcvq.nearest_code(x, e, check=False)[0]
    if name.startswith("ours bf16="):  # the same answer from one forced bf16 path
        path = name[len("ours bf16="):]
        if path not in cpu_bf16_paths():
            pytest.skip(f"this CPU runs the bf16 paths {cpu_bf16_paths()}, not {path}")

        def forced():
            with forced_bf16_path(path):
                return sgcvq.nearest_code(x, e, check=False)[0]

        return forced
    if name == "ours re-search=loop":  # the former exact re-search, one token at a time

        def loop():
            with cpu_setting("SGCVQ_CPU_RESEARCH", "loop"):
                return sgcvq.nearest_code(x, e, check=False)[0]

        return loop
    if name == "ours exact_fp32":  # the same answer from float32 candidates
        return lambda: sgcvq.nearest_code(x, e, mode="exact_fp32", check=False)[0]
    if name in AVX2_PROVIDERS:  # the AVX2 kernels forced (csrc/cpu/avx2/cpu_kind.h)
        if not avx2_here():
            pytest.skip("this CPU has no AVX2 + FMA + F16C")
        mode = "exact_fp32" if name.endswith("exact_fp32") else "exact"

        def avx2():
            old = os.environ.get("SGCVQ_CPU_AVX2")
            os.environ["SGCVQ_CPU_AVX2"] = "1"
            try:
                return sgcvq.nearest_code(x, e, mode=mode, check=False)[0]
            finally:
                if old is None:
                    os.environ.pop("SGCVQ_CPU_AVX2", None)
                else:
                    os.environ["SGCVQ_CPU_AVX2"] = old

        return avx2
    if name == "torch.cdist+argmin":
        return lambda: torch.cdist(x, e).argmin(1)
    if name == "torch.addmm+argmin":
        return lambda: addmm_distances(x, e).argmin(1)
    if name == "faiss.IndexFlatL2":
        faiss = pytest.importorskip("faiss")
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(e.numpy())
        xn = x.numpy()
        return lambda: torch.from_numpy(index.search(xn, 1)[1][:, 0])
    raise ValueError(f"unknown nearest-code provider {name!r}")


def semantic_provider(name: str, inp: dict):
    x, e, labels, offsets = inp["x"], inp["codebook"], inp["labels"], inp["offsets"]
    if name == "ours C=16":
        return lambda: sgcvq.nearest_code(x, e, labels, offsets, check=False)[0]
    if name == "ours all codes":
        return lambda: sgcvq.nearest_code(x, e, check=False)[0]
    if name == "ours all codes, scan":  # the leaf search off (D <= 16 on AVX2): the grouped search's own kernel family

        def scan():
            with cpu_setting("SGCVQ_CPU_LEAVES", "0"):
                return sgcvq.nearest_code(x, e, check=False)[0]

        return scan
    if name == "masked full matrix":
        group_of_code = torch.bucketize(torch.arange(e.shape[0]), offsets[1:], right=True)

        def masked():
            d = addmm_distances(x, e)
            return d.masked_fill_(group_of_code[None, :] != labels[:, None], float("inf")).argmin(1)

        return masked
    raise ValueError(f"unknown semantic provider {name!r}")


def stats_provider(name: str, inp: dict):
    index, x, K = inp["index"], inp["x"], inp["K"]
    if name == "ours":
        return lambda: sgcvq.cluster_stats(index, x, K, check=False)
    if name == "one-hot matmul":
        def one_hot():
            onehot = F.one_hot(index, K).float()  # [N, K], vector-quantize-pytorch's EMA statistics
            return onehot.sum(0), onehot.t() @ x

        return one_hot
    if name == "index_add_":
        def index_add():
            sums = torch.zeros(K, x.shape[1]).index_add_(0, index, x)
            return torch.bincount(index, minlength=K).float(), sums

        return index_add
    raise ValueError(f"unknown cluster-stats provider {name!r}")


KINDS = {
    "nearest": (search_inputs, nearest_provider),
    "semantic": (search_inputs, semantic_provider),
    "stats": (stats_inputs, stats_provider),
    "taming": (taming_inputs, nearest_provider),
}


@functools.lru_cache(maxsize=4)
def _cached_inputs(kind: str, N: int, K: int, D: int) -> dict:
    return KINDS[kind][0](N, K, D)


@contextlib.contextmanager
def one_thread():
    """torch (and FAISS, if loaded) on one OpenMP thread, so the work runs inline on the calling
    thread and time.thread_time measures all of it."""
    threads = torch.get_num_threads()
    faiss = sys.modules.get("faiss")
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


# --------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------
def _ids(shapes):
    return [f"{N}x{K}x{D}" for N, K, D in shapes]


@pytest.mark.parametrize("provider", NEAREST_PROVIDERS)
@pytest.mark.parametrize("shape", NEAREST_SHAPES, ids=_ids(NEAREST_SHAPES))
def test_nearest_code(benchmark, matmul_gflops, bench_record, peak_memory_mb, shape, provider):
    N, K, D = shape
    inp = _cached_inputs("nearest", N, K, D)
    fn = nearest_provider(provider, inp)
    ours = sgcvq.nearest_code(inp["x"], inp["codebook"], check=False)[0]
    # Random Gaussian data has next to no near-ties: the fp32 providers must agree with ours.
    assert _agreement(fn(), ours) > 0.999, f"{provider} disagrees with sgcvq.nearest_code"
    benchmark.group = f"nearest-code {N}x{K}x{D} fp32"
    slow = provider in ("torch.cdist+argmin", "torch.addmm+argmin") and N * K >= 2**28
    run_rounds = 1 if slow else (2 if QUICK else 5)
    benchmark.pedantic(fn, rounds=run_rounds, iterations=1, warmup_rounds=0 if slow else 1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "ours",
                 flops=2.0 * N * K * D, extra_mb=peak_memory_mb(__file__, "nearest", provider, N, K, D))


@pytest.mark.parametrize("provider", DATA_PROVIDERS)
@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("shape", NEAREST_SHAPES, ids=_ids(NEAREST_SHAPES))
def test_nearest_code_data_kinds(benchmark, matmul_gflops, bench_record, shape, kind, provider):
    """Each path on the three data kinds: the certified low-precision candidates must stay ahead of
    exact_fp32 where the data is not randn (post-ReLU offsets, near-duplicate distances)."""
    N, K, D = shape
    inp = data_inputs(N, K, D, kind)
    fn = nearest_provider(provider, inp)
    ours = sgcvq.nearest_code(inp["x"], inp["codebook"], check=False)[0]
    if provider != "faiss.IndexFlatL2":  # every path of ours: the float32 argmin, exactly
        assert torch.equal(fn(), ours), f"{provider} disagrees with sgcvq.nearest_code"
    else:  # FAISS expands the distance too: near-ties may go the other way
        assert _agreement(fn(), ours) > 0.99, f"{provider} disagrees with sgcvq.nearest_code"
    benchmark.group = f"nearest-code {N}x{K}x{D} {kind}"
    benchmark.pedantic(fn, rounds=2 if QUICK else 5, iterations=1, warmup_rounds=1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "ours",
                 flops=2.0 * N * K * D)


@pytest.mark.benchmark(timer=time.thread_time)
@pytest.mark.parametrize("provider", ["ours", "ours exact_fp32", "faiss.IndexFlatL2", "torch.addmm+argmin"])
@pytest.mark.parametrize("shape", NEAREST_SHAPES, ids=_ids(NEAREST_SHAPES))
def test_nearest_code_one_thread(benchmark, bench_record, shape, provider):
    """ours vs FAISS and addmm on one thread, timed in CPU time of the calling thread: all run
    inline on it (torch and FAISS with one OpenMP thread), so time-slicing by other processes on a
    shared machine does not enter, unlike wall time. N is a quarter of the wall-time group's."""
    N, K, D = shape
    N = max(1024, N // 4)
    inp = _cached_inputs("nearest", N, K, D)
    fn = nearest_provider(provider, inp)
    benchmark.group = f"nearest-code {N}x{K}x{D} fp32, 1 thread, CPU time"
    slow = provider == "torch.addmm+argmin" and N * K >= 2**28
    with one_thread():
        benchmark.pedantic(fn, rounds=1 if slow else (2 if QUICK else 5), iterations=1, warmup_rounds=1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "ours",
                 flops=2.0 * N * K * D, one_thread=True)


@pytest.mark.benchmark(timer=time.thread_time)
@pytest.mark.parametrize("provider", TAMING_PROVIDERS)
@pytest.mark.parametrize("shape", TAMING_SHAPES, ids=_ids(TAMING_SHAPES))
def test_nearest_code_taming_init(benchmark, bench_record, shape, provider):
    """The exact search of tokens the certificate cannot settle (1 thread, CPU time). Our modes
    must give the bits of the former loop; addmm's expansion cannot resolve these near-ties, so
    only its time is compared."""
    N, K, D = shape
    inp = _cached_inputs("taming", N, K, D)
    fn = nearest_provider(provider, inp)
    benchmark.group = f"nearest-code taming-init {N}x{K}x{D} fp32, 1 thread, CPU time"
    with one_thread():
        if provider.startswith("ours"):
            loop = nearest_provider("ours re-search=loop", inp)
            assert torch.equal(fn(), loop()), f"{provider} disagrees with the one-token exact re-search"
        slow = provider == "ours re-search=loop" and not QUICK
        benchmark.pedantic(fn, rounds=1 if slow else (2 if QUICK else 3), iterations=1, warmup_rounds=0 if slow else 1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "ours",
                 flops=2.0 * N * K * D, one_thread=True)


@pytest.mark.benchmark(timer=time.thread_time)
@pytest.mark.parametrize("provider", SEMANTIC_PROVIDERS)
@pytest.mark.parametrize("shape", SEMANTIC_SHAPES, ids=_ids(SEMANTIC_SHAPES))
def test_semantic_search(benchmark, matmul_gflops, bench_record, peak_memory_mb, shape, provider):
    """Timed on one thread in its CPU time (see test_nearest_code_one_thread): the floor is a
    ratio between two of our own calls, which wall time on a shared machine blurs."""
    N, K, D = shape
    inp = _cached_inputs("nearest", N, K, D)
    fn = semantic_provider(provider, inp)
    index = fn()
    if not provider.startswith("ours all codes"):
        lo, hi = inp["offsets"][inp["labels"]], inp["offsets"][inp["labels"] + 1]
        assert bool(((index >= lo) & (index < hi)).all()), f"{provider} left a token's code group"
        grouped = sgcvq.nearest_code(inp["x"], inp["codebook"], inp["labels"], inp["offsets"], check=False)[0]
        assert _agreement(index, grouped) > 0.999, f"{provider} disagrees with the grouped search"
    benchmark.group = f"semantic {N}x{K}x{D} C={C}, 1 thread, CPU time"
    slow = provider == "masked full matrix" and N * K >= 2**28
    with one_thread():
        benchmark.pedantic(fn, rounds=1 if slow else (2 if QUICK else 5), iterations=1,
                           warmup_rounds=0 if slow else 1)
    # FLOPs of the search the provider actually does: a grouped search touches K / C codes per token.
    flops = 2.0 * N * (K // C if provider == "ours C=16" else K) * D
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "ours C=16",
                 flops=flops, one_thread=True,
                 extra_mb=peak_memory_mb(__file__, "semantic", provider, N, K, D))


@pytest.mark.parametrize("provider", STATS_PROVIDERS)
@pytest.mark.parametrize("shape", STATS_SHAPES, ids=_ids(STATS_SHAPES))
def test_cluster_stats(benchmark, matmul_gflops, bench_record, peak_memory_mb, shape, provider):
    N, K, D = shape
    inp = _cached_inputs("stats", N, K, D)
    fn = stats_provider(provider, inp)
    counts, sums = fn()
    ref_counts, ref_sums = sgcvq.cluster_stats(inp["index"], inp["x"], K, check=False)
    assert torch.equal(counts, ref_counts), f"{provider}: counts differ from sgcvq.cluster_stats"
    torch.testing.assert_close(sums, ref_sums, rtol=1e-4, atol=1e-4)
    benchmark.group = f"cluster-stats {N}x{K}x{D}"
    slow = provider == "one-hot matmul" and not QUICK
    benchmark.pedantic(fn, rounds=2 if slow or QUICK else 5, iterations=1, warmup_rounds=0 if slow else 1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "ours",
                 extra_mb=peak_memory_mb(__file__, "stats", provider, N, K, D))


# --------------------------------------------------------------------------------------------
# Memory-probe child: python benchmarks/test_bench_ops.py --memprobe KIND PROVIDER N K D
# --------------------------------------------------------------------------------------------
def _memprobe(argv: list[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sgcvq_bench_conftest", Path(__file__).with_name("conftest.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    kind, provider = argv[0], argv[1]
    N, K, D = map(int, argv[2:5])
    make, build = KINDS[kind]
    inputs = make(N, K, D)
    common.child_measure_peak(build(provider, inputs))


def _side_by_side(argv: list[str]) -> None:
    """The RESULTS.md table: each provider once per round, alternating, medians of 5 rounds."""
    import statistics

    pytest.importorskip("faiss")
    threads = int(os.environ.get("SGCVQ_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    sys.modules["faiss"].omp_set_num_threads(threads)
    kind = os.environ.get("SGCVQ_BENCH_KIND", "randn")
    kind = {"relu": "relu+1", "near": "near codes"}.get(kind, kind)
    shapes = [tuple(map(int, a.split(","))) for a in argv] or [(65536, 1024, 256), (16384, 8192, 64), (65536, 16384, 8)]
    names = ["ours", "ours exact_fp32", "faiss.IndexFlatL2", "torch.addmm+argmin"]
    print(f"| (N, K, D) {kind} | sgcvq `exact` | `exact_fp32` | FAISS | torch addmm+argmin | FAISS / sgcvq | "
          f"sgcvq redo |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for N, K, D in shapes:
        inp = data_inputs(N, K, D, kind)
        fns = {n: nearest_provider(n, inp) for n in names}
        calls = sgcvq._C.bf16_search_calls()
        ours = fns["ours"]()
        # Tokens the low-precision candidates left to the float32 search ("-": none ran, D <= 16).
        redo = sgcvq._C.last_fast_exact_redo() if sgcvq._C.bf16_search_calls() > calls else "-"
        assert torch.equal(fns["ours exact_fp32"](), ours)
        times = {n: [] for n in names}
        for r in range(5):
            for n in names:
                if n == "torch.addmm+argmin" and r >= 1 and N * K >= 2**28:
                    continue  # one round of the slow baseline
                t = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t)
        med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        print(f"| ({N}, {K}, {D}) | {med['ours']:.0f} ms | {med['ours exact_fp32']:.0f} | {med['faiss.IndexFlatL2']:.0f} | "
              f"{med['torch.addmm+argmin']:.0f} | **{med['faiss.IndexFlatL2'] / med['ours']:.2f}x** | {redo} |", flush=True)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--memprobe":
    _memprobe(sys.argv[2:])
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--side-by-side":
    _side_by_side(sys.argv[2:])
