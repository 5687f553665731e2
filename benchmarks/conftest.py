"""Shared benchmark machinery: machine info, the quick flag, the matmul ceiling, memory probes and
the end-of-run summary of side-by-side ratios.

    .venv/bin/python -m pytest benchmarks                       # full run (< 10 min on 2 cores)
    SGCVQ_BENCH_QUICK=1 .venv/bin/python -m pytest benchmarks -q # CI: small shapes, < 2 min

Every comparison is one pytest-benchmark group; the providers of a group run in the same session.
Fixtures for benchmark modules: `bench_quick` (bool), `matmul_gflops` (float), `bench_record`
(the `record` function below), `peak_memory_mb` (`probe_peak_memory`). A module that runs as a
script with `--memprobe ...` calls `child_measure_peak` (import this file by path there).
`record()` collects each provider's min/median time, GFLOP/s and peak extra memory; at the end
the summary (ratios against the group's reference provider) is printed and written to
benchmarks/out/summary.{json,md}.

Peak extra memory (CPU): each provider runs in a fresh Python process (`probe_peak_memory`).
The child builds its inputs, runs the provider once (one-off allocations such as thread pools and
BLAS buffers are not counted), resets the kernel's peak-RSS counter (/proc/self/clear_refs = 5),
reads VmRSS, runs the provider again and reports VmHWM - VmRSS: the resident memory the call
added at its peak, whatever allocator it used. Where clear_refs is unavailable it falls back to
ru_maxrss before and after (coarser: it can hide memory below an earlier peak).
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

QUICK = os.environ.get("SGCVQ_BENCH_QUICK", "0") not in ("", "0")
OUT_DIR = Path(__file__).resolve().parent / "out"

_RESULTS: list[dict] = []
_MATMUL: dict = {}


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


# The lscpu flags that decide which CPU search path runs (README, "CPU kernels").
PATH_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    """Which of PATH_FLAGS lscpu lists on this machine."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    m = re.search(r"Flags:\s*(.+)", out)
    have = set(m.group(1).split()) if m else set()
    return [f for f in PATH_FLAGS if f in have]


def cpu_search_path() -> str | None:
    """The CPU kernels' bf16 path now ('amx', 'avx512bf16' or 'off'), None without the extension."""
    try:
        import sgcvq

        return sgcvq._C.cpu_capabilities()["bf16_path"] if sgcvq.ops.HAS_CPU_EXTENSION else None
    except (ImportError, RuntimeError, AttributeError):
        return None


def describe_machine() -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_bf16_path": cpu_search_path(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "quick": QUICK,
        "command": " ".join([os.path.basename(sys.executable), "-m", "pytest", *sys.argv[1:]]),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def pytest_benchmark_update_machine_info(config, machine_info):  # pytest-benchmark hook
    machine_info["sgcvq"] = describe_machine()


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def rounds(full: int, quick: int = 2) -> int:
    return quick if QUICK else full


def run_benchmark(benchmark, fn, *, rounds_: int, warmup: int = 1):
    """benchmark.pedantic with one call per round; returns fn's last result."""
    return benchmark.pedantic(fn, rounds=rounds_, iterations=1, warmup_rounds=warmup)


def benchmark_times(benchmark) -> tuple[float | None, float | None]:
    """(min, median) seconds of the rounds just run, or (None, None) under --benchmark-disable."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "stats", None) is None:
        return None, None
    data = list(stats.stats.data)
    return (min(data), statistics.median(data)) if data else (None, None)


def _best_time(fn, repeats: int, timer) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = timer()
        fn()
        best = min(best, timer() - t0)
    return best


@pytest.fixture(scope="session")
def matmul_gflops() -> float:
    """The machine's own float32 matmul rate, measured once per run: torch.mm on all threads in
    wall time, and on one thread in that thread's CPU time (the ceiling of the 1-thread groups)."""
    n = 1024 if QUICK else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    repeats = 3 if QUICK else 5
    rate = 2 * n**3 / _best_time(lambda: torch.mm(a, b), repeats, time.perf_counter) / 1e9
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rate_1 = 2 * n**3 / _best_time(lambda: torch.mm(a, b), repeats, time.thread_time) / 1e9
    finally:
        torch.set_num_threads(threads)
    _MATMUL.update(shape=f"{n}x{n}x{n}", gflops=round(rate, 1), gflops_1thread_cpu_time=round(rate_1, 1))
    return rate


# --------------------------------------------------------------------------------------------
# Memory probes (fresh process per provider)
# --------------------------------------------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else -1


def child_measure_peak(call) -> None:
    """In the child process: run call() once, then once more under a fresh peak; print JSON."""
    call()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
        call()
        extra_kb = _status_kb("VmHWM") - before
        method = "VmHWM-VmRSS"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        call()
        extra_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        method = "ru_maxrss"
    print("SGCVQ_MEM " + json.dumps({"extra_mb": max(0, extra_kb) / 1024, "method": method}), flush=True)


def probe_peak_memory(script: str | Path, *args: str, timeout: float = 300) -> float | None:
    """Peak extra resident MB of one provider call, run as `python script --memprobe args...`."""
    # Fixed glibc thresholds: without them glibc raises its mmap threshold after the first call
    # frees a big block and keeps the freed memory resident, so the measured call would reuse it
    # unseen. With them every block over 64 KB is mapped and unmapped, and the peak shows it.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(
        [sys.executable, str(script), "--memprobe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("SGCVQ_MEM "):
            return json.loads(line[len("SGCVQ_MEM ") :])["extra_mb"]
    tail = (proc.stderr or proc.stdout)[-2000:]
    raise RuntimeError(f"memory probe {script} {args} failed (rc={proc.returncode}):\n{tail}")


@pytest.fixture(scope="session")
def bench_quick() -> bool:
    return QUICK


@pytest.fixture(scope="session")
def peak_memory_mb():
    return probe_peak_memory


@pytest.fixture(scope="session")
def bench_record():
    return record


# --------------------------------------------------------------------------------------------
# Results and the summary
# --------------------------------------------------------------------------------------------
def record(benchmark, *, group: str, provider: str, reference: bool = False, flops: float | None = None,
           extra_mb: float | None = None, one_thread: bool = False, **extra) -> dict:
    """Stores one provider's numbers (also into benchmark.extra_info) for the end-of-run summary.

    reference=True marks the provider the group's ratios are taken against ("ours");
    one_thread=True compares GFLOP/s with the 1-thread CPU-time matmul ceiling.
    """
    t_min, t_med = benchmark_times(benchmark)
    row = {"group": group, "provider": provider, "reference": reference, "min_s": t_min, "median_s": t_med,
           "extra_mb": None if extra_mb is None else round(extra_mb, 1), **extra}
    if flops is not None and t_min:
        row["gflops"] = round(flops / t_min / 1e9, 1)
        ceiling = _MATMUL.get("gflops_1thread_cpu_time" if one_thread else "gflops")
        if ceiling:
            row["of_matmul"] = round(row["gflops"] / ceiling, 3)
    benchmark.extra_info.update({k: v for k, v in row.items() if k not in ("group", "provider")})
    _RESULTS.append(row)
    return row


def _with_ratios(rows: list[dict]) -> list[dict]:
    refs = {r["group"]: r for r in rows if r["reference"] and r["min_s"]}
    out = []
    for r in rows:
        ref = refs.get(r["group"])
        r = dict(r)
        if ref is not None and r["min_s"]:
            # > 1: the reference ("ours") is that many times faster than this provider.
            r["time_vs_ref"] = round(r["min_s"] / ref["min_s"], 2)
        out.append(r)
    return out


def _markdown(rows: list[dict], info: dict) -> str:
    lines = [
        f"Machine: {info['cpu']} (lscpu flags: {' '.join(info['cpu_flags']) or 'none of ' + ' '.join(PATH_FLAGS)}; "
        f"CPU bf16 path: {info['cpu_bf16_path']}), {info['cores']} cores, torch {info['torch']}, {info['date_utc']}, "
        f"load average at start {info['load_avg_1m_at_start']}; quick={info['quick']}",
        f"Command: `{info['command']}`",
        f"float32 matmul ceiling (torch.mm {_MATMUL.get('shape')}): {_MATMUL.get('gflops')} GFLOP/s on all "
        f"threads (wall time), {_MATMUL.get('gflops_1thread_cpu_time')} GFLOP/s on one thread (CPU time; "
        "the ceiling of the '1 thread, CPU time' groups)",
        "",
        "| group | provider | min s | median s | x slower than ours | GFLOP/s | of matmul | peak extra MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r['group']} | {r['provider']} | {f(r['min_s'], '.4f')} | {f(r['median_s'], '.4f')} | "
            f"{f(r.get('time_vs_ref'), '.2f')} | {f(r.get('gflops'), '.0f')} | {f(r.get('of_matmul'), '.2f')} | "
            f"{f(r['extra_mb'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    rows = _with_ratios(_RESULTS)
    info = describe_machine()
    md = _markdown(rows, info)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "summary.json").write_text(json.dumps({"machine": info, "matmul": _MATMUL, "results": rows}, indent=1))
    (OUT_DIR / "summary.md").write_text(md)
    terminalreporter.write_sep("=", "sgcvq benchmark summary (also in benchmarks/out/summary.md)")
    terminalreporter.write(md)
