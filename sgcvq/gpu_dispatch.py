"""Which GPU backend runs a search, from measurements recorded in the repository.

`sgcvq/gpu_dispatch.json` is written by benchmarks/test_bench_gpu.py from a full run on a GPU (the
same figures as benchmarks/results/gpu-<device>.json): for each (dtype, D, grouped) it measured,
the faster of the CUDA C++ and the Triton backend in the default mode, both exact on that run.
`backend_for` answers for a call: the entry of the same dtype and grouping whose D is nearest
(log scale), or None where the table has no such entry, and then the dispatcher keeps its default
(the CUDA extension when built, else Triton). SGCVQ_GPU_DISPATCH=off ignores the table; a path in
it reads another table (both read at import).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

__all__ = ["backend_for", "load_table"]

_DEFAULT = Path(__file__).with_name("gpu_dispatch.json")


def load_table(path: str | Path | None = None) -> dict:
    """The table as a dict ({"entries": []} when the file is missing or unreadable)."""
    try:
        with open(path or _DEFAULT) as f:
            table = json.load(f)
    except (OSError, ValueError):
        return {"entries": []}
    if not isinstance(table.get("entries"), list):
        return {"entries": []}
    return table


# Read once at import (plain Python afterwards, so torch.compile traces backend_for without I/O).
_SETTING = os.environ.get("SGCVQ_GPU_DISPATCH", "")
_TABLE = {"entries": []} if _SETTING == "off" else load_table(_SETTING or None)


def backend_for(dtype: torch.dtype, D: int, grouped: bool, table: dict | None = None) -> str | None:
    """"cuda", "triton" or None (no measurement for this kind of call)."""
    name = str(dtype).split(".")[-1]
    rows = [e for e in (table if table is not None else _TABLE)["entries"]
            if e.get("dtype") == name and bool(e.get("grouped")) == grouped and e.get("backend") in ("cuda", "triton")]
    if not rows:
        return None
    best = min(rows, key=lambda e: abs(math.log2(max(1, int(e["D"]))) - math.log2(max(1, D))))
    return best["backend"]
