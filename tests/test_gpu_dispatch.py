"""The measured GPU dispatch table (sgcvq/gpu_dispatch.json, sgcvq.gpu_dispatch): CPU-only tests.

The GPU side (a call routed to Triton through the table, with autograd) is in tests/test_cuda.py.
"""
from __future__ import annotations

import json

import torch

from sgcvq import gpu_dispatch

TABLE = {"entries": [
    {"dtype": "float32", "D": 256, "grouped": False, "backend": "triton", "ms": {"cuda": 2.0, "triton": 1.0}},
    {"dtype": "float32", "D": 8, "grouped": False, "backend": "cuda", "ms": {"cuda": 1.0, "triton": 2.0}},
    {"dtype": "bfloat16", "D": 256, "grouped": True, "backend": "triton", "ms": {"cuda": 0.3, "triton": 0.2}},
]}


def test_backend_for_takes_the_nearest_measured_width():
    assert gpu_dispatch.backend_for(torch.float32, 256, False, TABLE) == "triton"
    assert gpu_dispatch.backend_for(torch.float32, 300, False, TABLE) == "triton"
    assert gpu_dispatch.backend_for(torch.float32, 16, False, TABLE) == "cuda"  # log2: 3 from 8, 4 from 256
    assert gpu_dispatch.backend_for(torch.float32, 64, False, TABLE) == "triton"  # 2 from 256, 3 from 8


def test_backend_for_needs_the_same_dtype_and_grouping():
    assert gpu_dispatch.backend_for(torch.bfloat16, 256, False, TABLE) is None
    assert gpu_dispatch.backend_for(torch.float16, 256, False, TABLE) is None
    assert gpu_dispatch.backend_for(torch.float32, 256, True, TABLE) is None
    assert gpu_dispatch.backend_for(torch.bfloat16, 100, True, TABLE) == "triton"


def test_load_table_tolerates_missing_and_malformed_files(tmp_path):
    assert gpu_dispatch.load_table(tmp_path / "absent.json") == {"entries": []}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert gpu_dispatch.load_table(bad) == {"entries": []}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"entries": "cuda"}))
    assert gpu_dispatch.load_table(wrong) == {"entries": []}
    good = tmp_path / "good.json"
    good.write_text(json.dumps(TABLE))
    assert gpu_dispatch.load_table(good)["entries"][0]["backend"] == "triton"


def test_the_shipped_table_is_valid():
    table = gpu_dispatch.load_table()
    assert isinstance(table["entries"], list)
    for e in table["entries"]:  # each entry names a measured backend of a measured kind of call
        assert e["backend"] in ("cuda", "triton") and e["dtype"] in ("float32", "bfloat16", "float16")
        assert isinstance(e["D"], int) and isinstance(e["grouped"], bool)
        assert e["backend"] == min(e["ms"], key=e["ms"].get)
    if table["entries"]:
        assert table["device"] and table["source"].startswith("benchmarks/results/gpu-")
