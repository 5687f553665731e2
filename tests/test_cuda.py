"""GPU tests of the CUDA C++ backend (csrc/cuda, the module sgcvq._C_cuda).

Every op, every dtype, against the pure-torch reference (sgcvq.reference) on fresh random data.
The caching allocator is poisoned (0xFF bytes: NaN floats, -1 integers) before each run, so an
output element a kernel forgets to write shows up. Skipped without a GPU; on a GPU machine whose
torch has CUDA and nvcc, the extension must have been built (`python setup.py build_ext --inplace`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import requires_cuda
from sgcvq import ops, options, reference

pytestmark = requires_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["exact", "fast_exact", "exact_fp32"]


@pytest.fixture
def cuda_backend():
    if not ops.HAS_CUDA_EXTENSION:
        pytest.skip("sgcvq._C_cuda is not built")


def test_extension_is_built_where_it_can_be():
    from torch.utils import cpp_extension

    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
        pytest.skip("torch without CUDA or no nvcc: setup.py builds no CUDA extension")
    assert ops.HAS_CUDA_EXTENSION, (
        "torch has CUDA and nvcc exists, but sgcvq._C_cuda does not import: "
        "run `python setup.py build_ext --inplace`"
    )


def _poison_allocator() -> None:
    """Fill freed blocks of both allocator pools with 0xFF so stale memory is NaN / -1."""
    junk = [torch.full((256 * 1024,), 0xFF, dtype=torch.uint8, device="cuda") for _ in range(64)]
    junk.append(torch.full((192 << 20,), 0xFF, dtype=torch.uint8, device="cuda"))
    del junk


# --------------------------------------------------------------------------------------------
# nearest_code
# --------------------------------------------------------------------------------------------
def sample_inputs(N, K, D, dtype, scale=1.0, shift=0.0):
    x = (torch.randn(N, D, device="cuda") * scale + shift).to(dtype)
    codebook = (torch.randn(K, D, device="cuda") * scale + shift).to(dtype)
    return x, codebook


def _group_bounds(labels, offsets, N, K):
    if labels is None:
        zeros = torch.zeros(N, dtype=torch.int64, device="cuda")
        return zeros, zeros + K
    lab = labels.to(torch.int64)
    off = offsets.to(torch.int64)
    lo = torch.where(lab < 0, 0, off[lab.clamp(min=0)])
    hi = torch.where(lab < 0, K, off[lab.clamp(min=0) + 1])
    return lo, hi


def check_nearest(x, codebook, labels, offsets, index, sqdist):
    """The chosen code is in the token's group, and it is the fp64 argmin up to fp32 near-ties."""
    N, D = x.shape
    K = codebook.shape[0]
    assert index.shape == (N,) and index.dtype == torch.int64
    assert sqdist.shape == (N,) and sqdist.dtype == torch.float32
    lo, hi = _group_bounds(labels, offsets, N, K)
    assert bool(((index >= lo) & (index < hi)).all()), "an index lies outside its token's code group"
    chunk = max(1, (1 << 25) // max(1, K * D))
    ref_index, _ = reference.nearest_code_reference(x, codebook, labels, offsets, chunk=chunk)
    x64, e64 = x.double(), codebook.double()
    d_chosen = ((x64 - e64[index]) ** 2).sum(1)
    d_best = ((x64 - e64[ref_index]) ** 2).sum(1)
    # Exact up to fp32 rounding of the distances themselves: a different index is only allowed
    # where the two codes are within the fp32 error of a D-term sum (docs/method.md: exact mode).
    near_tie = d_chosen <= d_best * (1 + (D + 8) * 2.0**-22) + 1e-30
    bad = ~((index == ref_index) | near_tie)
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {N} tokens got a worse code, e.g. token {int(bad.nonzero()[0])}: "
        f"{int(index[bad][0])} ({float(d_chosen[bad][0])}) vs {int(ref_index[bad][0])} ({float(d_best[bad][0])})"
    )
    torch.testing.assert_close(sqdist, d_chosen.float(), rtol=1e-5, atol=1e-5)


SHAPES = [  # (N, K, D): odd sizes, single rows, D below / across / above the staged width
    (1, 1, 1),
    (7, 3, 5),
    (129, 64, 3),
    (1023, 130, 64),
    (257, 4096, 129),  # few token tiles: the code range is split over blocks (atomicMin merge)
    (3001, 77, 256),
    (40000, 512, 32),  # many token tiles, no split
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,D", SHAPES)
def test_nearest_code_matches_reference(cuda_backend, N, K, D, dtype, mode):
    x, codebook = sample_inputs(N, K, D, dtype)
    _poison_allocator()
    index, sqdist = ops.nearest_code(x, codebook, mode=mode, backend="cuda")
    check_nearest(x, codebook, None, None, index, sqdist)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=str)
def test_nearest_code_groups(cuda_backend, dtype, mode, label_dtype):
    N, D = 5003, 48
    sizes = torch.tensor([40, 1, 0, 129, 64, 3, 200, 33])  # class 2 owns no code
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).to(label_dtype).cuda()
    K, C = int(sizes.sum()), len(sizes)
    x, codebook = sample_inputs(N, K, D, dtype)
    usable = torch.tensor([-1] + [c for c in range(C) if sizes[c] > 0])
    labels = usable[torch.randint(0, len(usable), (N,))].to(label_dtype).cuda()
    _poison_allocator()
    index, sqdist = ops.nearest_code(x, codebook, labels, offsets, mode=mode, backend="cuda")
    check_nearest(x, codebook, labels, offsets, index, sqdist)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nearest_code_groups_many_tokens(cuda_backend, dtype, mode):
    # Enough token tiles that the code range is not split: one block per (class, token tile).
    N, D = 60001, 32
    offsets = torch.tensor([0, 100, 101, 180, 256], device="cuda")
    x, codebook = sample_inputs(N, 256, D, dtype)
    labels = torch.randint(-1, 4, (N,), device="cuda")
    _poison_allocator()
    index, sqdist = ops.nearest_code(x, codebook, labels, offsets, mode=mode, backend="cuda")
    check_nearest(x, codebook, labels, offsets, index, sqdist)


@pytest.mark.parametrize("mode", MODES)
def test_nearest_code_many_small_classes(cuda_backend, mode):
    # Many buckets with sizes that are not multiples of the tile: exercises the tile upper bound.
    N, D, C = 10007, 16, 200
    sizes = torch.randint(1, 9, (C,))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)]).cuda()
    K = int(sizes.sum())
    x, codebook = sample_inputs(N, K, D, torch.float32)
    labels = torch.randint(-1, C, (N,), device="cuda")
    _poison_allocator()
    index, sqdist = ops.nearest_code(x, codebook, labels, offsets, mode=mode, backend="cuda")
    check_nearest(x, codebook, labels, offsets, index, sqdist)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nearest_code_all_ignore_labels(cuda_backend, dtype, mode):
    N, K, D = 999, 50, 24
    x, codebook = sample_inputs(N, K, D, dtype)
    labels = torch.full((N,), -1, dtype=torch.int64, device="cuda")
    offsets = torch.tensor([0, 20, K], device="cuda")
    index, sqdist = ops.nearest_code(x, codebook, labels, offsets, mode=mode, backend="cuda")
    plain_index, plain_sqdist = ops.nearest_code(x, codebook, mode=mode, backend="cuda")
    assert torch.equal(index, plain_index)
    assert torch.equal(sqdist, plain_sqdist)
    check_nearest(x, codebook, labels, offsets, index, sqdist)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", [100, 5000])  # 5000 with few tokens: the duplicates land in different splits
def test_nearest_code_ties_go_to_lowest_index(cuda_backend, dtype, mode, K):
    D = 40
    _, codebook = sample_inputs(1, K, D, dtype)
    dup = [13, 60, K - 1]
    # NOTE: clone the source row: torch 2.11 on CUDA refuses a write whose source aliases the
    # destination (`codebook[dup] = codebook[dup[0]]`).
    codebook[dup] = codebook[dup[0]].clone()
    # Tokens equal to the duplicated code: distance 0 to all three copies.
    x = codebook[[dup[1]] * 300].clone()
    index, sqdist = ops.nearest_code(x, codebook, mode=mode, backend="cuda")
    assert bool((index == dup[0]).all())
    assert bool((sqdist == 0).all())
    # Mirror ties: x = 0 is equidistant from v and -v, and every other code is far away.
    v = torch.randn(D, device="cuda") * 0.1
    far = codebook.float() * 3 + 10
    far[7], far[3] = v, -v
    far = far.to(dtype)
    zeros = torch.zeros(257, D, device="cuda", dtype=dtype)
    index, _ = ops.nearest_code(zeros, far, mode=mode, backend="cuda")
    assert bool((index == 3).all())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nearest_code_hard_cases_stay_exact(cuda_backend, dtype, mode):
    # A large common offset (cancellation in ||x||^2 + ||e||^2 - 2 x.e) and near-duplicate codes:
    # the certificate often fails here, so the exact fallback scan runs.
    N, K, D = 2000, 300, 64
    x, codebook = sample_inputs(N, K, D, dtype, scale=1.0, shift=30.0)
    check_nearest(x, codebook, None, None, *ops.nearest_code(x, codebook, mode=mode, backend="cuda"))
    base = torch.randn(1, D, device="cuda")
    near = (base + 1e-3 * torch.randn(K, D, device="cuda")).to(dtype)
    xs = (base + 1e-3 * torch.randn(N, D, device="cuda")).to(dtype)
    check_nearest(xs, near, None, None, *ops.nearest_code(xs, near, mode=mode, backend="cuda"))


def test_nearest_code_unaligned_and_strided_inputs(cuda_backend):
    N, K, D = 500, 90, 36
    flat = torch.randn(N * D + 1, device="cuda")
    x = flat[1:].view(N, D)  # contiguous, but not 16-byte aligned: the scalar staging path
    codebook = torch.randn(K, 2 * D, device="cuda")[:, ::2]  # strided: the glue copies it
    for mode in MODES:
        check_nearest(x, codebook, None, None, *ops.nearest_code(x, codebook, mode=mode, backend="cuda"))


def test_nearest_code_empty_input(cuda_backend):
    x = torch.empty(0, 8, device="cuda")
    index, sqdist = ops.nearest_code(x, torch.randn(5, 8, device="cuda"), backend="cuda")
    assert index.shape == (0,) and sqdist.shape == (0,)


# --------------------------------------------------------------------------------------------
# cluster_stats
# --------------------------------------------------------------------------------------------
def _index_patterns(N, K):
    return {
        "random": torch.randint(0, K, (N,), device="cuda"),
        "runs": (torch.arange(N, device="cuda") // 37) % K,  # equal neighbours: warp aggregation
        "one_code": torch.full((N,), K - 1, dtype=torch.int64, device="cuda"),  # segments cross pieces
    }


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,D", [(1, 1, 1), (1000, 17, 3), (4099, 1024, 64), (20000, 5, 130), (777, 300, 256)])
def test_cluster_stats_matches_reference(cuda_backend, N, K, D, dtype, deterministic):
    x = torch.randn(N, D, device="cuda").to(dtype)
    for name, index in _index_patterns(N, K).items():
        _poison_allocator()
        counts, sums = ops.cluster_stats(index, x, K, deterministic=deterministic, backend="cuda")
        ref_counts, ref_sums = reference.cluster_stats_reference(index, x, K)
        assert counts.dtype == torch.float32 and sums.dtype == torch.float32
        assert torch.equal(counts, ref_counts), name
        per_code = float(ref_counts.max())
        torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-6 * per_code + 1e-5, msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cluster_stats_deterministic_is_bit_identical(cuda_backend, dtype):
    N, K, D = 30011, 97, 72
    x = torch.randn(N, D, device="cuda").to(dtype)
    index = torch.randint(0, K, (N,), device="cuda")
    index[:5000] = 3  # one long segment across many pieces
    first = ops.cluster_stats(index, x, K, deterministic=True, backend="cuda")
    for _ in range(3):
        _poison_allocator()
        again = ops.cluster_stats(index, x, K, deterministic=True, backend="cuda")
        assert torch.equal(first[0], again[0])
        assert torch.equal(first[1], again[1])


def test_cluster_stats_empty_input(cuda_backend):
    _poison_allocator()
    counts, sums = ops.cluster_stats(
        torch.empty(0, dtype=torch.int64, device="cuda"), torch.empty(0, 6, device="cuda"), 9, backend="cuda"
    )
    assert torch.equal(counts, torch.zeros(9, device="cuda"))
    assert torch.equal(sums, torch.zeros(9, 6, device="cuda"))


# --------------------------------------------------------------------------------------------
# ema_update
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K,D", [(1, 1), (7, 3), (1024, 64), (333, 129)])
def test_ema_update_matches_reference(cuda_backend, K, D):
    cluster_size = torch.rand(K, device="cuda") * 10
    embed_sum = torch.randn(K, D, device="cuda")
    codebook = torch.randn(K, D, device="cuda")
    counts = torch.randint(0, 50, (K,), device="cuda").float()
    sums = torch.randn(K, D, device="cuda")
    want = [t.clone() for t in (cluster_size, embed_sum, codebook)]
    reference.ema_update_reference(*want, counts, sums, 0.99, 1e-5)
    ops.ema_update(cluster_size, embed_sum, codebook, counts, sums, 0.99, 1e-5, backend="cuda")
    for got, exp in zip((cluster_size, embed_sum, codebook), want):
        torch.testing.assert_close(got, exp)


def test_ema_update_agrees_with_cpu_kernel(cuda_backend):
    # The same fp32 operations as csrc/cpu/ema_update_cpu.cpp; only the double total's order differs.
    if "cpu" not in ops.available_backends("cpu"):
        pytest.skip("sgcvq._C (CPU) is not built")
    K, D = 513, 40
    bufs = [torch.rand(K) * 5, torch.randn(K, D), torch.randn(K, D)]
    stats = [torch.randint(0, 30, (K,)).float(), torch.randn(K, D)]
    cpu = [t.clone() for t in bufs]
    gpu = [t.cuda() for t in bufs]
    ops.ema_update(*cpu, *stats, 0.9, 1e-5, backend="cpu")
    ops.ema_update(*gpu, *[t.cuda() for t in stats], 0.9, 1e-5, backend="cuda")
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=2e-7, atol=0)


# --------------------------------------------------------------------------------------------
# schemas, and compute-sanitizer
# --------------------------------------------------------------------------------------------
def test_opcheck_cuda(cuda_backend):
    x = torch.randn(70, 12, device="cuda")
    codebook = torch.randn(9, 12, device="cuda")
    labels = torch.randint(-1, 2, (70,), device="cuda")
    offsets = torch.tensor([0, 4, 9], device="cuda")
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.sgcvq.nearest_code.default, (x, codebook, None, None, "exact"), test_utils=utils)
    torch.library.opcheck(torch.ops.sgcvq.nearest_code.default, (x, codebook, labels, offsets, "fast_exact"),
                          test_utils=utils)
    index = torch.randint(0, 9, (70,), device="cuda")
    torch.library.opcheck(torch.ops.sgcvq.cluster_stats.default, (index, x, 9, True), test_utils=utils)
    torch.library.opcheck(
        torch.ops.sgcvq.ema_update.default,
        (torch.rand(9, device="cuda"), torch.randn(9, 12, device="cuda"), torch.randn(9, 12, device="cuda"),
         torch.rand(9, device="cuda"), torch.randn(9, 12, device="cuda"), 0.99, 1e-5),
        test_utils=utils,
    )


_SANITIZER_CASE = """
import torch
from sgcvq import ops
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    x = torch.randn(300, 37, device="cuda").to(dtype)
    e = torch.randn(70, 37, device="cuda").to(dtype)
    labels = torch.randint(-1, 3, (300,), device="cuda")
    offsets = torch.tensor([0, 20, 21, 70], device="cuda")
    for mode in ("exact", "fast_exact", "exact_fp32"):
        ops.nearest_code(x, e, mode=mode, backend="cuda", check=False)
        ops.nearest_code(x, e, labels, offsets, mode=mode, backend="cuda", check=False)
    index = torch.randint(0, 70, (300,), device="cuda")
    for det in (False, True):
        ops.cluster_stats(index, x, 70, deterministic=det, backend="cuda", check=False)
# D = 37 never reaches the Hopper kernel (it needs D % 8 == 0): D = 64, float32 and bfloat16, with
# the kernel asked for by name (on an sm_90 device with an sm_90a build it runs; elsewhere the
# generic kernel does). Before 2026-12 this case had D = 37 only, so memcheck never saw it.
import sgcvq
with sgcvq.options.options(cuda_kernel="sm90"):
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1000, 64, device="cuda").to(dtype)
        e = torch.randn(300, 64, device="cuda").to(dtype)
        labels = torch.randint(-1, 3, (1000,), device="cuda")
        offsets = torch.tensor([0, 100, 101, 300], device="cuda")
        ops.nearest_code(x, e, backend="cuda", check=False)
        ops.nearest_code(x, e, labels, offsets, backend="cuda", check=False)
        ops.nearest_code(x, e + 3.0, backend="cuda", check=False)  # offset data: the exact fallback
ops.ema_update(torch.rand(70, device="cuda"), torch.randn(70, 37, device="cuda"),
               torch.randn(70, 37, device="cuda"), torch.rand(70, device="cuda"),
               torch.randn(70, 37, device="cuda"), 0.99, 1e-5, backend="cuda")
torch.cuda.synchronize()
"""


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "compute-sanitizer")):
        return os.path.join(CUDA_HOME, "bin", "compute-sanitizer")
    return None


@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck"])
def test_compute_sanitizer(cuda_backend, tool):
    sanitizer = _sanitizer()
    if sanitizer is None:
        pytest.skip("compute-sanitizer not found")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # out-of-bounds lands outside a block
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sanitizer, "--tool", tool, "--error-exitcode", "99", sys.executable, "-c", _SANITIZER_CASE],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]


# --------------------------------------------------------------------------------------------
# the measured dispatch: a table that names Triton routes the auto backend there, with autograd
# --------------------------------------------------------------------------------------------
def test_measured_dispatch_routes_to_triton_with_autograd(cuda_backend, tmp_path):
    if not ops._HAS_TRITON_OP:
        pytest.skip("triton is not installed")
    if options.current().cuda_kernel != "auto":
        pytest.skip("a cuda_kernel from the environment ranks above any table")
    ok = "test data"
    table = {"entries": [{"dtype": "float32", "D": 24, "grouped": False, "provider": "triton",
                          "ms": {"cuda-generic": 2.0, "triton": 1.0}, "verified": {"triton": ok}}]}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    x = torch.randn(300, 24, device="cuda", requires_grad=True)
    codebook = torch.randn(50, 24, device="cuda", requires_grad=True)
    with options.options(gpu_dispatch=str(path)):
        assert ops.gpu_choice(x, False).backend == "triton"
        with _kernels_run() as names:
            index, sqdist = ops.nearest_code(x, codebook)
        assert not any("nearest_code_tile_kernel" in n for n in names), names  # not the CUDA extension
        check_nearest(x.detach(), codebook.detach(), None, None, index, sqdist.detach())
        sqdist.sum().backward()
        torch.testing.assert_close(x.grad, 2 * (x - codebook[index]).detach())
        # bfloat16 has no entry: the CUDA extension answers
        assert ops.gpu_choice(x.detach().bfloat16(), False).backend == "cuda"


class _kernels_run:
    """The names of the CUDA kernels launched inside the block (torch.profiler)."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.names: list = []
        self.prof = profile(activities=[ProfilerActivity.CUDA])
        self.prof.__enter__()
        return self.names

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.prof.__exit__(*exc)
        self.names.extend(e.name for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        return False


_GENERIC = "nearest_code_tile_kernel"  # nearest_code.cu's search; the sm90 kernels have other names


def _is_sm90_device() -> bool:
    return torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_kernel_option(cuda_backend, dtype):
    # cuda_kernel="generic": every mode takes nearest_code.cu; "sm90": mode "exact" takes the
    # Hopper kernel where it applies. gpu_run.sh runs this whole file with SGCVQ_CUDA_SM90=0 too.
    x, codebook = sample_inputs(4099, 700, 64, dtype)
    with options.options(cuda_kernel="generic"):
        for mode in MODES:
            with _kernels_run() as names:
                out = ops.nearest_code(x, codebook, mode=mode, backend="cuda")
            check_nearest(x, codebook, None, None, *out)
            assert any(_GENERIC in n for n in names), names
    x, codebook = sample_inputs(4099, 700, 64, dtype, shift=3.0)
    labels = torch.randint(-1, 5, (4099,), device="cuda")
    offsets = torch.tensor([0, 100, 101, 350, 600, 700], device="cuda")
    with options.options(cuda_kernel="sm90"):
        with _kernels_run() as names:
            out = ops.nearest_code(x, codebook, backend="cuda")
        check_nearest(x, codebook, None, None, *out)
        sm90_ran = not any(_GENERIC in n for n in names)
        check_nearest(x, codebook, labels, offsets, *ops.nearest_code(x, codebook, labels, offsets, backend="cuda"))
    if _is_sm90_device():
        assert sm90_ran, ("the Hopper kernel did not run on an sm_90 device: build with "
                          "TORCH_CUDA_ARCH_LIST=9.0a for its sm_90a code", names)
    else:
        assert not sm90_ran, "only an sm_90 device runs the Hopper kernel"


def test_default_kernel_follows_the_table(cuda_backend):
    # The shipped table: float32 at 16 <= D <= 256 on sm_90 takes the Hopper kernel by default
    # (H100, 2026-11-28: 8.96 ms against 27.2), everything else the generic one.
    x, codebook = sample_inputs(2000, 300, 64, torch.float32)
    x.requires_grad_(True)
    choice = ops.gpu_choice(x, False)
    with _kernels_run() as names:
        index, sqdist = ops.nearest_code(x, codebook)
    check_nearest(x.detach(), codebook, None, None, index, sqdist.detach())
    if choice.backend == "cuda":
        assert any(_GENERIC in n for n in names) == (choice.kernel == "generic"), (choice, names)
    if _is_sm90_device() and os.environ.get("SGCVQ_CUDA_SM90", "") == "" and not os.environ.get("SGCVQ_GPU_DISPATCH"):
        assert (choice.backend, choice.kernel) == ("cuda", "sm90"), choice
    sqdist.sum().backward()  # the kernel op's autograd
    torch.testing.assert_close(x.grad, 2 * (x - codebook[index]).detach())
