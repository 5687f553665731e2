"""The op registrations: schemas, kernels per dispatch key, and the backend choice."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sgcvq
from sgcvq import ops, options


def test_registered_schemas_equal_the_python_copy():
    for name, schema in ops.SCHEMAS.items():
        registered = getattr(torch.ops.sgcvq, name).default._schema
        assert str(registered) == str(torch._C.parse_schema(f"sgcvq::{name}{schema}")), name


def test_namespace_holds_exactly_the_documented_ops():
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sgcvq::")}
    assert names == set(ops.SCHEMAS)


@pytest.mark.parametrize("name", sorted(ops.SCHEMAS))
def test_cpu_and_meta_kernels_are_registered(name):
    if ops.HAS_CPU_EXTENSION:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sgcvq::{name}", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sgcvq::{name}", "Meta")  # register_fake


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fake_kernels_give_output_shapes_and_dtypes(dtype):
    x, codebook = torch.empty(7, 5, dtype=dtype, device="meta"), torch.empty(3, 5, dtype=dtype, device="meta")
    index, sqdist = torch.ops.sgcvq.nearest_code(x, codebook)
    assert (index.shape, index.dtype, sqdist.shape, sqdist.dtype) == ((7,), torch.int64, (7,), torch.float32)
    counts, sums = torch.ops.sgcvq.cluster_stats(index, x, 3, False)
    assert (counts.shape, counts.dtype, sums.shape, sums.dtype) == ((3,), torch.float32, (3, 5), torch.float32)


def test_available_backends(monkeypatch):
    try:
        import triton  # noqa: F401

        has_triton = True
    except ImportError:
        has_triton = False
    compiled = ["cpu"] if ops.HAS_CPU_EXTENSION else []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert sgcvq.available_backends("cpu") == ["reference", *compiled, *(["triton"] if has_triton else [])]
    monkeypatch.delenv("TRITON_INTERPRET")
    assert sgcvq.available_backends("cpu") == ["reference", *compiled]
    assert sgcvq.available_backends(torch.device("cpu")) == ["reference", *compiled]
    assert sgcvq.available_backends("meta") == ["reference"]
    cuda = (["cuda"] if ops.HAS_CUDA_EXTENSION else []) + (["triton"] if has_triton else [])
    assert sgcvq.available_backends("cuda") == ["reference", *cuda]


# --------------------------------------------------------------------------------------------
# Backend forcing: a dispatch mode sees whether the call went through torch.ops.sgcvq (the
# registered kernels) or ran the reference's plain aten ops.
# --------------------------------------------------------------------------------------------
class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def used_kernel(self) -> bool:
        return any(name.startswith("sgcvq.") for name in self.ops)


def sample_inputs() -> dict:
    """Small valid inputs for each op (D = 6: no GEMM, no autograd involved)."""
    x, codebook = torch.randn(20, 6), torch.randn(9, 6)
    counts = torch.rand(9) * 3
    ema = (torch.rand(9) + 1, torch.randn(9, 6), torch.randn(9, 6), counts, torch.randn(9, 6))
    return {
        "nearest_code": lambda **kw: sgcvq.nearest_code(x, codebook, **kw),
        "cluster_stats": lambda **kw: sgcvq.cluster_stats(torch.randint(9, (20,)), x, 9, **kw),
        "ema_update": lambda **kw: sgcvq.ema_update(*[t.clone() for t in ema], 0.9, 1e-5, **kw),
    }


OPS = sorted(ops.SCHEMAS)
needs_cpu_extension = pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="sgcvq._C is not built")


def runs_kernel(op: str, **kw) -> bool:
    with RecordOps() as rec:
        sample_inputs()[op](**kw)
    return rec.used_kernel()


@needs_cpu_extension
@pytest.mark.parametrize("op", OPS)
def test_backend_argument(op, monkeypatch):
    monkeypatch.delenv("SGCVQ_BACKEND", raising=False)
    assert runs_kernel(op)  # auto -> the C++ kernel on CPU tensors
    assert runs_kernel(op, backend="auto")
    assert runs_kernel(op, backend="cpu")
    assert not runs_kernel(op, backend="reference")


@needs_cpu_extension
@pytest.mark.parametrize("op", OPS)
def test_backend_from_environment(op, monkeypatch):
    # sgcvq reads the environment once (sgcvq.options): reload() after each change
    monkeypatch.setenv("SGCVQ_BACKEND", "reference")
    options.reload()
    assert not runs_kernel(op)
    assert runs_kernel(op, backend="cpu"), "the argument must win over SGCVQ_BACKEND"
    monkeypatch.setenv("SGCVQ_BACKEND", "cpu")
    options.reload()
    assert runs_kernel(op)
    monkeypatch.setenv("SGCVQ_BACKEND", "nonsense")
    options.reload()
    with pytest.raises(ValueError, match="backend must be one of .* got 'nonsense'"):
        sample_inputs()[op]()


@pytest.mark.parametrize("op", OPS)
def test_forced_device_backend_needs_matching_tensors(op):
    with pytest.raises(ValueError, match=f"{op}: backend 'cuda' needs cuda tensors, got tensors on cpu"):
        sample_inputs()[op](backend="cuda")


def test_forced_cpu_backend_refuses_other_devices():
    x, codebook = torch.randn(4, 3, device="meta"), torch.randn(5, 3, device="meta")
    with pytest.raises(ValueError, match="nearest_code: backend 'cpu' needs cpu tensors, got tensors on meta"):
        sgcvq.nearest_code(x, codebook, backend="cpu", check=False)


def test_reference_fallback_warns_once():
    calls = []
    impl = ops._reference_with_warning(lambda *a: calls.append(a) or len(calls), "CPU")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [impl(1), impl(2), impl(3)] == [1, 2, 3]
    assert len(caught) == 1 and "no compiled CPU backend" in str(caught[0].message)
