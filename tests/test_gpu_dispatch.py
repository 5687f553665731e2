"""The GPU dispatch (sgcvq/gpu_dispatch.json, sgcvq.gpu_dispatch): CPU-only tests, the device
capability mocked. The GPU side (a call routed through the table, with autograd) is in
tests/test_cuda.py."""
from __future__ import annotations

import json

import pytest
import torch

from sgcvq import gpu_dispatch, options

OK = "tests passed on a GPU (test data)"
TABLE = {"entries": [
    {"dtype": "float32", "D": 256, "grouped": False, "provider": "triton",
     "ms": {"cuda-generic": 2.0, "triton": 1.0}, "verified": {"triton": OK, "cuda-generic": OK}},
    {"dtype": "float32", "D": 8, "grouped": False, "provider": "cuda-generic",
     "ms": {"cuda-generic": 1.0, "triton": 2.0}, "verified": {"triton": OK, "cuda-generic": OK}},
    {"dtype": "bfloat16", "D": 256, "grouped": True, "provider": "triton",
     "ms": {"cuda-generic": 0.3, "triton": 0.2}, "verified": {"triton": OK}},
]}
H100 = (9, 0)
A100 = (8, 0)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in options.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    options.reload()
    yield
    options.set_options(cuda_kernel=None, gpu_dispatch=None)


def choose(dtype, D, grouped=False, cap=H100, cuda=True, triton=True, table=None):
    return gpu_dispatch.choose(dtype, D, grouped, cap, has_cuda_extension=cuda, has_triton=triton,
                               table_=table)


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


def test_an_unverified_path_is_never_a_default():
    # Measured fastest, but its GPU tests did not pass on a GPU: the entry is ignored.
    t = {"entries": [{"dtype": "float32", "D": 256, "grouped": False, "provider": "triton",
                      "ms": {"cuda-generic": 27.2, "triton": 5.5}, "verified": {"cuda-generic": OK}}]}
    assert gpu_dispatch.backend_for(torch.float32, 256, False, t) is None
    assert choose(torch.float32, 256, table=t) == gpu_dispatch.Choice(
        "cuda", "generic", "no table entry: the CUDA extension's generic kernel")
    # A table written before providers and evidence existed (benchmarks/results/gpu_dispatch-*.json)
    old = {"entries": [{"dtype": "float32", "D": 256, "grouped": False, "backend": "triton",
                        "ms": {"cuda": 27.2, "triton": 5.5}}]}
    assert choose(torch.float32, 256, table=old).backend == "cuda"


SHIPPED = gpu_dispatch.load_table()


@pytest.mark.parametrize("D", [16, 64, 128, 256])
def test_the_sm90_kernel_is_the_float32_default_on_sm90(D):
    c = choose(torch.float32, D, table=SHIPPED)
    assert (c.backend, c.kernel) == ("cuda", "sm90"), c
    assert "verified" in c.reason and "cuda-sm90" in c.reason


@pytest.mark.parametrize("dtype,D,grouped,cap", [
    (torch.float32, 8, False, H100),       # below the sm90 kernel's D
    (torch.float32, 256, False, A100),     # not Hopper
    (torch.float32, 256, False, (10, 0)),  # Blackwell: nothing measured there
    (torch.float32, 256, True, H100),      # grouped: not measured with the sm90 kernel
    (torch.bfloat16, 256, False, H100),    # sm90 measured slower than the generic kernel (6.43 vs 5.38 ms)
    (torch.float16, 256, False, H100),     # no entry
])
def test_everywhere_else_the_generic_cuda_kernel(dtype, D, grouped, cap):
    c = choose(dtype, D, grouped, cap, table=SHIPPED)
    assert (c.backend, c.kernel) == ("cuda", "generic"), c


def test_without_the_cuda_extension_triton_then_the_reference():
    assert choose(torch.float32, 256, cuda=False, table=SHIPPED).backend == "triton"
    assert choose(torch.float32, 256, cuda=False, triton=False, table=SHIPPED).backend == "reference"


def test_options_override_the_table(monkeypatch):
    options.set_options(cuda_kernel="generic")
    c = choose(torch.float32, 256, table=SHIPPED)
    assert (c.kernel, c.reason) == ("generic", "cuda_kernel='generic' (set_options)")
    monkeypatch.setenv("SGCVQ_CUDA_SM90", "1")  # the environment wins over the setter
    options.reload()
    c = choose(torch.float32, 8, cap=A100, table=SHIPPED)
    assert (c.kernel, c.reason) == ("sm90", "cuda_kernel='sm90' (environment (SGCVQ_CUDA_SM90))")


def test_gpu_dispatch_option_chooses_the_table(tmp_path, monkeypatch):
    assert gpu_dispatch.table() == SHIPPED
    options.set_options(gpu_dispatch="off")
    assert gpu_dispatch.table() == {"entries": []}
    assert (lambda c: (c.backend, c.kernel))(gpu_dispatch.choose(
        torch.float32, 256, False, H100, has_cuda_extension=True, has_triton=True)) == ("cuda", "generic")
    other = tmp_path / "t.json"
    other.write_text(json.dumps(TABLE))
    monkeypatch.setenv("SGCVQ_GPU_DISPATCH", str(other))
    options.reload()
    assert gpu_dispatch.table() == TABLE
    assert gpu_dispatch.choose(torch.float32, 256, False, H100, has_cuda_extension=True,
                               has_triton=True).backend == "triton"


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
    assert gpu_dispatch.load_table(good)["entries"][0]["provider"] == "triton"


def test_the_shipped_table_is_valid():
    table = gpu_dispatch.load_table()
    assert isinstance(table["entries"], list)
    for e in table["entries"]:
        # each entry names a provider that measured fastest among those verified on a GPU
        assert e["provider"] in gpu_dispatch.PROVIDERS and e["dtype"] in ("float32", "bfloat16", "float16")
        assert isinstance(e["D"], int) and isinstance(e["grouped"], bool)
        assert e["D_min"] <= e["D"] <= e["D_max"]
        verified = [p for p, why in e["verified"].items() if why]
        assert e["provider"] in verified
        assert e["provider"] == min(verified, key=lambda p: e["ms"][p])
    if table["entries"]:
        assert table["device"] and table["source"].startswith("benchmarks/results/gpu-")
