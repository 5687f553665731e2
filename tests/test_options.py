"""The options layer (sgcvq.options): one order (argument > environment > setter > default), the
environment read once (reload() reads it again), clear errors naming the variable, and
sgcvq.capabilities() saying what runs here and why. CPU only."""
from __future__ import annotations

import pytest
import torch

import sgcvq
from sgcvq import options


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in options.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    options.reload()
    options.set_options(**{f: None for f in ("backend", "cuda_kernel", "gpu_dispatch", "triton_autotune",
                                              "triton_candidates", "triton_exact_fp32_dot")})
    yield
    options.set_options(**{f: None for f in ("backend", "cuda_kernel", "gpu_dispatch", "triton_autotune",
                                              "triton_candidates", "triton_exact_fp32_dot")})


def test_defaults():
    o = options.current()
    assert o == options.Options()
    assert (o.backend, o.cuda_kernel, o.gpu_dispatch, o.triton_autotune) == ("auto", "auto", "", True)
    assert options.explain("backend") == "default"


def test_environment_is_read_once(monkeypatch):
    monkeypatch.setenv("SGCVQ_BACKEND", "reference")
    assert options.current().backend == "auto", "os.environ changes are not seen before reload()"
    options.reload()
    assert options.current().backend == "reference"
    assert options.explain("backend") == "environment (SGCVQ_BACKEND)"
    assert options.environment() == {"SGCVQ_BACKEND": "reference"}


def test_environment_wins_over_the_setter(monkeypatch):
    options.set_options(backend="cpu")
    assert options.current().backend == "cpu" and options.explain("backend") == "set_options"
    monkeypatch.setenv("SGCVQ_BACKEND", "reference")
    options.reload()
    assert options.current().backend == "reference"
    monkeypatch.delenv("SGCVQ_BACKEND")
    options.reload()
    assert options.current().backend == "cpu"


def test_context_manager_restores():
    options.set_options(cuda_kernel="generic")
    with options.options(cuda_kernel="sm90", triton_autotune=False) as o:
        assert (o.cuda_kernel, o.triton_autotune) == ("sm90", False)
        assert options.current().cuda_kernel == "sm90"
    assert options.current().cuda_kernel == "generic" and options.current().triton_autotune is True


@pytest.mark.parametrize("var,text,field,value", [
    ("SGCVQ_CUDA_SM90", "1", "cuda_kernel", "sm90"),
    ("SGCVQ_CUDA_SM90", "0", "cuda_kernel", "generic"),
    ("SGCVQ_TRITON_AUTOTUNE", "0", "triton_autotune", False),
    ("SGCVQ_TRITON_CANDIDATES", "tf32", "triton_candidates", "tf32"),
    ("SGCVQ_TRITON_EXACT_FP32_DOT", "ieee", "triton_exact_fp32_dot", "ieee"),
    ("SGCVQ_GPU_DISPATCH", "off", "gpu_dispatch", "off"),
])
def test_each_variable_parses(monkeypatch, var, text, field, value):
    monkeypatch.setenv(var, text)
    assert getattr(options.reload(), field) == value


@pytest.mark.parametrize("var,text,message", [
    ("SGCVQ_BACKEND", "gpu", "backend must be one of .*SGCVQ_BACKEND.* got 'gpu'"),
    ("SGCVQ_CUDA_SM90", "yes", "SGCVQ_CUDA_SM90 must be '1' or '0', got 'yes'"),
    ("SGCVQ_TRITON_AUTOTUNE", "off", "SGCVQ_TRITON_AUTOTUNE must be 0 or 1"),
    ("SGCVQ_TRITON_CANDIDATES", "fp8", "triton_candidates must be one of .* got 'fp8'"),
])
def test_bad_environment_value_names_the_variable_on_use(monkeypatch, var, text, message):
    monkeypatch.setenv(var, text)
    options.reload()  # importing sgcvq must not fail on a bad value: the first use does
    with pytest.raises(ValueError, match=message):
        options.current()
    if var == "SGCVQ_BACKEND":
        with pytest.raises(ValueError, match=message):
            sgcvq.nearest_code(torch.randn(4, 3), torch.randn(2, 3))


def test_setter_rejects_unknown_and_bad_values():
    with pytest.raises(TypeError, match="unknown option 'backends'"):
        options.set_options(backends="cpu")
    with pytest.raises(ValueError, match="cuda_kernel must be one of .* got 'hopper'"):
        options.set_options(cuda_kernel="hopper")
    with pytest.raises(ValueError, match="triton_autotune must be True or False"):
        options.set_options(triton_autotune="0")


def test_argument_wins_over_everything(monkeypatch):
    from sgcvq import ops

    monkeypatch.setenv("SGCVQ_BACKEND", "reference")
    options.reload()
    assert ops._resolve_backend(None) == "reference"
    assert ops._resolve_backend("cpu") == "cpu"


def test_every_sgcvq_variable_the_python_layers_read_is_an_option():
    # The Python op layers read no SGCVQ_* variable of their own: all go through sgcvq.options.
    import pathlib
    import re

    root = pathlib.Path(sgcvq.__file__).parent
    files = [root / "ops.py", root / "gpu_dispatch.py"] + sorted((root.parent / "kernels").glob("*.py"))
    files = [f for f in files if f.exists()]
    for f in files:
        text = f.read_text()
        assert not re.search(r"environ[^\n]*SGCVQ_", text), f"{f.name} reads an SGCVQ_ variable itself"


def test_capabilities_reports_this_machine():
    caps = sgcvq.capabilities()
    assert caps["options"]["backend"] == "auto"
    assert set(caps["sources"]) == {f.name for f in __import__("dataclasses").fields(options.Options)}
    assert isinstance(caps["cpu"]["extension_built"], bool)
    if caps["cpu"]["extension_built"]:
        assert "bf16_path" in caps["cpu"]["features"]
    assert caps["cuda"]["available"] == torch.cuda.is_available()
    assert isinstance(caps["triton"]["available"], bool)
    rows = caps["gpu_dispatch"]["choices"]
    assert rows, "the dispatch choice per dtype and shape family is listed even without a GPU"
    for r in rows:
        assert r["backend"] in ("cuda", "triton", "reference") and r["reason"]
