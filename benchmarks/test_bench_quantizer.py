"""A full quantizer training step (forward + backward + EMA update): FastSemanticQuantizer vs
vector-quantize-pytorch's VectorQuantize with the same K, D and decay, on the CPU.

    .venv/bin/python -m pytest benchmarks/test_bench_quantizer.py -s                      # full
    SGCVQ_BENCH_QUICK=1 .venv/bin/python -m pytest benchmarks/test_bench_quantizer.py -s  # < 1 min

Two comparisons, each a pytest-benchmark group whose rows also go to the shared summary
(benchmarks/conftest.py `bench_record`: ratios against "sgcvq"):
* time per step at (N, K, D) = (16384, 8192, 256) (quick: (2048, 1024, 64)): sgcvq, sgcvq with 19
  classes (grouped search), VectorQuantize; full mode asserts the floor: >= 5x faster;
* peak memory of one step at K = 16384, D = 8, each measured in a fresh subprocess: ours at
  N = 65536 (both modes; floor: < 1 GB peak RSS for the whole process), and ours next to
  VectorQuantize at the largest N where VectorQuantize's N x K float32 matrices (distances, one-hot,
  ...; ~6 of them, measured) stay under a 6 GB budget (quick: 0.5 GB) on this shared machine. At
  N = 65536 it would need ~24 GB (the machine has 24 GB): not run.
The drop-ins of sgcvq.compat against their peers (issue 13), with the peers' defaults on both sides:
* `compat VectorQuantize` vs vector-quantize-pytorch's `VectorQuantize` (decay 0.8, rotation
  trick), plain, with 2 heads (separate codebooks, codebook_dim = D/2) and with a codebook_dim = D/4
  projection; `compat VectorQuantizer2` vs taming's VectorQuantizer2 (not installable: its forward
  written out in plain torch below, `TamingReference`, dense distances as taming computes them),
  from taming's start (codes uniform in +-1/K) and from a spread (kaiming_uniform) codebook;
* time per step at SPEED_SHAPE and peak memory at MEMORY_SHAPE (ours at N = 65536, ours and the
  peer at N_THEIRS, the largest N where the peer fits the budget).
Peak RSS is VmHWM from /proc/self/status: getrusage's ru_maxrss is the same counter, but Linux
carries it over fork + exec, so a child of a big pytest process would report the parent's peak.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sgcvq import FastSemanticQuantizer

QUICK = os.environ.get("SGCVQ_BENCH_QUICK") == "1"
SPEED_SHAPE = (2048, 1024, 64) if QUICK else (16384, 8192, 256)  # (N, K, D)
MEMORY_SHAPE = (65536, 16384, 8)  # ours runs it at full size in both modes (about a second)
THEIR_MEMORY_BUDGET = (0.5 if QUICK else 6.0) * 2**30  # bytes, for VectorQuantize's estimate
THEIR_NK_COPIES = 6  # N x K float32 matrices alive at its peak (measured: ~5.8 at K = 16384, D = 8)
DECAY = 0.99
SPEED_FLOOR = 5.0
MEMORY_FLOOR_BYTES = 2**30

_times: dict[str, float] = {}


def make_provider(name: str, K: int, D: int):
    """The quantizer under test, training mode, EMA on, re-seeding off on both sides."""
    if name in COMPAT_PROVIDERS:
        return make_compat_provider(name, K, D)
    if name == "vector_quantize_pytorch":
        vqp = pytest.importorskip("vector_quantize_pytorch")
        return vqp.VectorQuantize(D, K, decay=DECAY, kmeans_init=False, dead_code_threshold_ratio=0.0,
                                  rotation_trick=False).train()
    if name == "sgcvq":
        return FastSemanticQuantizer(D, K, decay=DECAY, threshold_dead=0).train()
    if name == "sgcvq fast_exact":  # the same codes, bf16 candidates on AMX (CPU) / TF32 (GPU)
        return FastSemanticQuantizer(D, K, decay=DECAY, threshold_dead=0, search_mode="fast_exact").train()
    if name == "sgcvq-semantic19":
        return FastSemanticQuantizer(D, K, num_classes=19, decay=DECAY, threshold_dead=0).train()
    raise ValueError(name)


def train_step(vq, x, labels=None):
    """Forward, backward through the straight-through estimator and the loss, EMA update."""
    x.grad = None
    q, _, loss = vq(x, labels) if labels is not None else vq(x)
    (q.float().square().mean() + loss).backward()


@pytest.mark.parametrize("provider", ["sgcvq", "sgcvq fast_exact", "sgcvq-semantic19", "vector_quantize_pytorch"])
def test_train_step_time(benchmark, bench_record, provider):
    N, K, D = SPEED_SHAPE
    torch.manual_seed(0)
    vq = make_provider(provider, K, D)
    x = torch.randn(1, N, D, requires_grad=True)
    labels = torch.randint(0, 19, (1, N)) if provider == "sgcvq-semantic19" else None
    benchmark.group = f"quantizer train step N={N} K={K} D={D}"
    rounds = 5 if QUICK else (1 if provider == "vector_quantize_pytorch" else 3)
    benchmark.pedantic(train_step, args=(vq, x, labels), rounds=rounds, iterations=1, warmup_rounds=1)
    # FLOP of the full search 2NKD (the grouped search does ~1/19 of it)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "sgcvq",
                 flops=2.0 * N * K * D if provider in ("sgcvq", "sgcvq fast_exact") else None, N=N, K=K, D=D)
    _times[provider] = benchmark.stats.stats.min
    if provider == "vector_quantize_pytorch" and "sgcvq" in _times:
        ratio = _times[provider] / _times["sgcvq"]
        sem = _times[provider] / _times["sgcvq-semantic19"] if "sgcvq-semantic19" in _times else float("nan")
        print(f"\n{benchmark.group}: VectorQuantize {_times[provider]:.3f} s; sgcvq {_times['sgcvq']:.3f} s "
              f"({ratio:.1f}x faster); sgcvq 19 classes {_times.get('sgcvq-semantic19', float('nan')):.3f} s "
              f"({sem:.1f}x faster)")
        benchmark.extra_info.update(speedup_vs_sgcvq=ratio, speedup_vs_sgcvq_semantic19=sem)
        if not QUICK:
            assert ratio >= SPEED_FLOOR, f"sgcvq is only {ratio:.1f}x faster than VectorQuantize (floor {SPEED_FLOOR}x)"


# ------------------------------------------------------------------------------------------------
# Peak memory, one process per measurement
# ------------------------------------------------------------------------------------------------
_MEMORY_SCRIPT = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {bench_dir!r})
from test_bench_quantizer import make_provider, train_step


def vm_hwm():
    # NOTE: the peak RSS of this process image. getrusage's ru_maxrss is the portable number, but
    # Linux carries it over fork + exec, so a child of a big pytest process reports the parent's
    # peak; VmHWM belongs to the new address space.
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


N, K, D, provider = {N}, {K}, {D}, {provider!r}
torch.manual_seed(0)
vq = make_provider(provider, K, D)
x = torch.randn(1, N, D, requires_grad=True)
setup_peak = vm_hwm()
try:  # reset the high-water mark so the step's own peak shows above the import's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = vm_hwm()
t = time.perf_counter()
train_step(vq, x)
step_s = time.perf_counter() - t
step_peak = vm_hwm()
print(json.dumps(dict(provider=provider, N=N, K=K, D=D, peak_rss=max(setup_peak, step_peak), base_rss=base,
                      step_peak=step_peak, step_s=step_s)))
"""


def measure_in_subprocess(provider: str, N: int, K: int, D: int) -> dict:
    """Peak RSS (bytes; Linux ru_maxrss) of one training step in a fresh interpreter."""
    code = _MEMORY_SCRIPT.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), N=N, K=K, D=D,
                                 provider=provider)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {provider} at N={N} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_fitting_n(K: int, budget: float, n_max: int) -> int:
    """The largest power-of-two N <= n_max whose THEIR_NK_COPIES x N x K x 4 bytes fit the budget."""
    n = n_max
    while n > 256 and THEIR_NK_COPIES * n * K * 4 >= budget:
        n //= 2
    return n


N_THEIRS = largest_fitting_n(MEMORY_SHAPE[1], THEIR_MEMORY_BUDGET, MEMORY_SHAPE[0])


@pytest.mark.parametrize(
    "provider,N",
    [("sgcvq", MEMORY_SHAPE[0]), ("sgcvq", N_THEIRS), ("vector_quantize_pytorch", N_THEIRS)],
    ids=lambda v: str(v),
)
def test_train_step_memory(benchmark, bench_record, provider, N):
    _, K, D = MEMORY_SHAPE
    if provider == "vector_quantize_pytorch":
        pytest.importorskip("vector_quantize_pytorch")
    mem = measure_in_subprocess(provider, N, K, D)
    step_extra_mb = (mem["step_peak"] - mem["base_rss"]) / 2**20
    print(f"\n{provider} N={N} K={K} D={D}: peak RSS {mem['peak_rss'] / 2**20:.0f} MiB (whole process, fresh), "
          f"the step itself +{step_extra_mb:.0f} MiB, {mem['step_s']:.2f} s in the subprocess")
    if N == MEMORY_SHAPE[0]:
        print(f"VectorQuantize at N={N}: ~{THEIR_NK_COPIES * N * K * 4 / 2**30:.0f} GiB estimated "
              f"({THEIR_NK_COPIES} x N x K x 4 B): not run")
    torch.manual_seed(0)
    vq = make_provider(provider, K, D)
    x = torch.randn(1, N, D, requires_grad=True)
    benchmark.group = f"quantizer train step N={N} K={K} D={D} (memory)"
    slow = provider == "vector_quantize_pytorch" and not QUICK
    benchmark.pedantic(train_step, args=(vq, x), rounds=1 if slow else 3, iterations=1, warmup_rounds=0 if slow else 1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=provider == "sgcvq",
                 extra_mb=step_extra_mb, peak_rss_mb=round(mem["peak_rss"] / 2**20, 1), N=N, K=K, D=D)
    if provider == "sgcvq" and N == MEMORY_SHAPE[0]:
        assert mem["peak_rss"] < MEMORY_FLOOR_BYTES, f"peak RSS {mem['peak_rss'] / 2**20:.0f} MiB >= 1 GiB"


# ------------------------------------------------------------------------------------------------
# sgcvq.compat drop-ins against their peers (issue 13)
# ------------------------------------------------------------------------------------------------
# variant -> VectorQuantize keyword arguments at feature size D (the peers' defaults otherwise)
COMPAT_VARIANTS = {
    "": lambda D: {},
    " heads2": lambda D: dict(heads=2, separate_codebook_per_head=True, codebook_dim=D // 2),
    " codebook_dim": lambda D: dict(codebook_dim=max(D // 4, 1)),
}
COMPAT_PAIRS = [(f"compat VectorQuantize{v}", f"vector_quantize_pytorch VectorQuantize{v}") for v in COMPAT_VARIANTS]
COMPAT_PAIRS.append(("compat VectorQuantizer2", "taming VectorQuantizer2 (reference)"))
# NOTE: taming's start, uniform(-1/K, 1/K), puts every code so close to 0 that for most tokens the
# fp32 distances of the best codes are equal to the last bit: the exact search certifies none of
# them and re-searches each token exactly (slow). "spread" starts both from kaiming_uniform codes,
# as the VectorQuantize rows do, the state a codebook reaches once training has moved it.
COMPAT_PAIRS.append(("compat VectorQuantizer2 spread", "taming VectorQuantizer2 (reference) spread"))
COMPAT_PROVIDERS = {name for pair in COMPAT_PAIRS for name in pair}


class TamingReference(torch.nn.Module):
    """taming-transformers' VectorQuantizer2.forward (legacy loss) in plain torch, as taming computes
    it: the full [N, K] distance matrix, argmin, embedding lookup, two mse terms, straight-through.
    taming is not installable; this is its algorithm, not its code."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = torch.nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, z.shape[-1])
        e = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        idx = d.argmin(1)
        z_q = self.embedding(idx).view(z.shape)
        loss = (z_q.detach() - z).pow(2).mean() + self.beta * (z_q - z.detach()).pow(2).mean()
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (None, None, idx)


class TamingAsSequence(torch.nn.Module):
    """Runs a taming-style quantizer on x [1, N, D] as the feature map [1, D, N/64, 64] (a view)."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, x):
        _, N, D = x.shape
        z = x.view(1, N // 64, 64, D).permute(0, 3, 1, 2)
        z_q, loss, (_, _, idx) = self.vq(z)
        return z_q, idx, loss


def make_compat_provider(name: str, K: int, D: int):
    from sgcvq.compat import VectorQuantize, VectorQuantizer2

    if name.startswith(("compat VectorQuantizer2", "taming VectorQuantizer2")):
        vq = VectorQuantizer2(K, D, 0.25) if name.startswith("compat") else TamingReference(K, D)
        if name.endswith(" spread"):
            torch.nn.init.kaiming_uniform_(vq.embedding.weight.data)
        return TamingAsSequence(vq).train()
    for variant, kwargs in COMPAT_VARIANTS.items():
        if name == f"compat VectorQuantize{variant}":
            return VectorQuantize(D, K, **kwargs(D)).train()
        if name == f"vector_quantize_pytorch VectorQuantize{variant}":
            vqp = pytest.importorskip("vector_quantize_pytorch")
            return vqp.VectorQuantize(D, K, **kwargs(D)).train()
    raise ValueError(name)


_compat_times: dict[str, float] = {}


@pytest.mark.parametrize("pair,side", [(i, s) for i in range(len(COMPAT_PAIRS)) for s in (0, 1)],
                         ids=lambda v: str(v))
def test_compat_train_step_time(benchmark, bench_record, pair, side):
    N, K, D = SPEED_SHAPE
    ours_name, peer_name = COMPAT_PAIRS[pair]
    provider = (ours_name, peer_name)[side]
    torch.manual_seed(0)
    vq = make_provider(provider, K, D)
    x = torch.randn(1, N, D, requires_grad=True)
    benchmark.group = f"compat train step N={N} K={K} D={D}: {ours_name}"
    rounds = 3 if QUICK or side == 0 else 1
    benchmark.pedantic(train_step, args=(vq, x), rounds=rounds, iterations=1, warmup_rounds=1)
    bench_record(benchmark, group=benchmark.group, provider=provider, reference=side == 0, N=N, K=K, D=D)
    _compat_times[provider] = benchmark.stats.stats.min
    if side == 1 and ours_name in _compat_times:
        ratio = _compat_times[peer_name] / _compat_times[ours_name]
        print(f"\n{benchmark.group}: {peer_name} {_compat_times[peer_name]:.3f} s, {ours_name} "
              f"{_compat_times[ours_name]:.3f} s ({ratio:.1f}x faster)")
        benchmark.extra_info.update(speedup_of_compat=ratio)


# quick (CI): one VectorQuantize pair and one taming pair, each subprocess costs an interpreter start
COMPAT_MEMORY_PAIRS = [COMPAT_PAIRS[0], COMPAT_PAIRS[3]] if QUICK else COMPAT_PAIRS


@pytest.mark.parametrize(
    "provider,N",
    [(name, MEMORY_SHAPE[0]) for name, _ in COMPAT_MEMORY_PAIRS]
    + [(name, N_THEIRS) for pair in COMPAT_MEMORY_PAIRS for name in pair],
    ids=lambda v: str(v),
)
def test_compat_train_step_memory(benchmark, bench_record, provider, N):
    _, K, D = MEMORY_SHAPE
    if provider.startswith("vector_quantize_pytorch"):
        pytest.importorskip("vector_quantize_pytorch")
    mem = measure_in_subprocess(provider, N, K, D)
    step_extra_mb = (mem["step_peak"] - mem["base_rss"]) / 2**20
    print(f"\n{provider} N={N} K={K} D={D}: peak RSS {mem['peak_rss'] / 2**20:.0f} MiB (whole process, fresh), "
          f"the step itself +{step_extra_mb:.0f} MiB, {mem['step_s']:.2f} s in the subprocess")
    ours = provider.startswith("compat")
    group = f"compat train step N={N} K={K} D={D} (memory)"
    benchmark.group = group  # not timed here: the step time is the subprocess's one step
    bench_record(benchmark, group=group, provider=provider, reference=False, extra_mb=step_extra_mb,
                 peak_rss_mb=round(mem["peak_rss"] / 2**20, 1), step_s=round(mem["step_s"], 3), N=N, K=K, D=D)
    if ours and N == MEMORY_SHAPE[0]:
        assert mem["peak_rss"] < 2 * MEMORY_FLOOR_BYTES, f"peak RSS {mem['peak_rss'] / 2**20:.0f} MiB >= 2 GiB"
