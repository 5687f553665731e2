"""Which GPU path runs a search on CUDA tensors, from evidence measured on a GPU.

The table (`sgcvq/gpu_dispatch.json`, written by benchmarks/test_bench_gpu.py from a run on a GPU
whose tests passed) holds entries like

    {"dtype": "float32", "grouped": false, "D": 256, "D_min": 16, "D_max": 256, "capability": [9, 0],
     "provider": "cuda-sm90", "ms": {"cuda-sm90": 8.96, "cuda-generic": 27.2, ...},
     "verified": {"cuda-sm90": "what passed, where, when"}}

An entry speaks for calls of its dtype and grouping, on a device of its compute capability (any
device when absent), with D in [D_min, D_max] (any D when absent; then the entry of the nearest
measured D on a log scale answers). Its provider is a path that (a) measured fastest there among
(b) the paths whose every GPU test passed on a GPU: an entry without `verified` for its provider
is ignored, so a path becomes a default only with both.

Providers: "cuda-generic" (the CUDA extension's nearest_code.cu), "cuda-sm90" (its Hopper kernel,
nearest_code_sm90.cu), "triton" (sgcvq.kernels). Where no entry answers, the default is the
CUDA extension's generic kernel when it is built, else Triton.

The table in force is chosen by `sgcvq.options` (gpu_dispatch: "" the shipped one, "off" none,
or a path); it is loaded once per choice and cached (plain Python afterwards, so torch.compile
traces `choose` without I/O).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from . import options as _options

__all__ = ["Choice", "PROVIDERS", "choose", "load_table", "table", "backend_for", "entry_for"]

_DEFAULT = Path(__file__).with_name("gpu_dispatch.json")
PROVIDERS = {"cuda-generic": ("cuda", "generic"), "cuda-sm90": ("cuda", "sm90"), "triton": ("triton", "triton")}


@dataclasses.dataclass(frozen=True)
class Choice:
    """The path of one kind of call: backend ("cuda" / "triton"), kernel ("generic" / "sm90" /
    "triton") and why (which option or table entry decided)."""

    backend: str
    kernel: str
    reason: str


def _entry_provider(e: dict) -> str | None:
    """The entry's provider; tables written before providers existed name only the backend."""
    p = e.get("provider")
    if p is None and e.get("backend") in ("cuda", "triton"):
        p = "cuda-generic" if e["backend"] == "cuda" else "triton"
    return p if p in PROVIDERS else None


def load_table(path: str | Path | None = None) -> dict:
    """The table as a dict ({"entries": []} when the file is missing or unreadable)."""
    try:
        with open(path or _DEFAULT) as f:
            t = json.load(f)
    except (OSError, ValueError):
        return {"entries": []}
    if not isinstance(t, dict) or not isinstance(t.get("entries"), list):
        return {"entries": []}
    return t


_cache: dict = {}


def table() -> dict:
    """The table the options choose (cached per choice; `sgcvq.options` changes reset it)."""
    setting = _options.current().gpu_dispatch
    if setting not in _cache:
        _cache[setting] = {"entries": []} if setting == "off" else load_table(setting or None)
    return _cache[setting]


_options.on_change(_cache.clear)


def _usable(e: dict, dtype_name: str, D: int, grouped: bool, capability) -> bool:
    p = _entry_provider(e)
    if p is None or e.get("dtype") != dtype_name or bool(e.get("grouped")) != grouped:
        return False
    if not isinstance(e.get("verified"), dict) or not e["verified"].get(p):
        return False  # a path is a default only once its GPU tests passed on a GPU
    cap = e.get("capability")
    if cap is not None and capability is not None and tuple(cap) != tuple(capability):
        return False
    if cap is not None and capability is None:
        return False
    return int(e.get("D_min", 0)) <= D <= int(e.get("D_max", 1 << 30))


def entry_for(dtype: torch.dtype, D: int, grouped: bool, capability=None, table_: dict | None = None) -> dict | None:
    """The table entry that answers for this kind of call, or None."""
    name = str(dtype).split(".")[-1]
    rows = [e for e in (table_ if table_ is not None else table())["entries"]
            if isinstance(e, dict) and _usable(e, name, D, grouped, capability)]
    if not rows:
        return None
    return min(rows, key=lambda e: abs(math.log2(max(1, int(e.get("D", D)))) - math.log2(max(1, D))))


def choose(dtype: torch.dtype, D: int, grouped: bool, capability, *, has_cuda_extension: bool,
           has_triton: bool, opts: _options.Options | None = None, table_: dict | None = None) -> Choice:
    """The path an "auto" call on CUDA tensors takes (see the module docstring for the order)."""
    opts = opts or _options.current()
    if opts.cuda_kernel != "auto" and has_cuda_extension:
        return Choice("cuda", opts.cuda_kernel, f"cuda_kernel={opts.cuda_kernel!r} ({_options.explain('cuda_kernel')})")
    e = entry_for(dtype, D, grouped, capability, table_)
    if e is not None:
        backend, kernel = PROVIDERS[_entry_provider(e)]
        if (backend == "cuda" and has_cuda_extension) or (backend == "triton" and has_triton):
            ms = e.get("ms", {})
            return Choice(backend, kernel, f"measured table: {_entry_provider(e)} at D={e.get('D')} "
                          f"({', '.join(f'{k} {v:.3g} ms' for k, v in ms.items())}); verified: "
                          f"{e['verified'][_entry_provider(e)]}")
    if has_cuda_extension:
        return Choice("cuda", "generic", "no table entry: the CUDA extension's generic kernel")
    if has_triton:
        return Choice("triton", "triton", "no table entry and no CUDA extension: Triton")
    return Choice("reference", "reference", "neither the CUDA extension nor Triton is available")


def backend_for(dtype: torch.dtype, D: int, grouped: bool, table: dict | None = None, capability=None) -> str | None:
    """"cuda", "triton" or None (no verified measurement for this kind of call)."""
    e = entry_for(dtype, D, grouped, capability, table)
    return None if e is None else PROVIDERS[_entry_provider(e)][0]
