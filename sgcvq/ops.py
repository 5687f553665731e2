"""The op layer: `sgcvq.nearest_code`, `sgcvq.cluster_stats`, `sgcvq.ema_update`.

The ops live in one namespace, `torch.ops.sgcvq`, with the schema defined once in C++
(csrc/ops.cpp). Backends register under the same names:

* CPU tensors  -> the C++ extension `sgcvq._C`;
* CUDA tensors -> the CUDA extension `sgcvq._C_cuda` if built, else the Triton kernels
  (`sgcvq.kernels`);
* where neither exists, the pure-torch reference (`sgcvq.reference`), with one warning.

`backend=` on each function, or the option `backend` (`sgcvq.options`: SGCVQ_BACKEND or
`sgcvq.set_options`), forces one of "reference", "cpu", "cuda", "triton" (for tests and
benchmarks); "auto" (default) lets the dispatcher choose. Forced backends are called directly and
are not differentiable. On CUDA tensors the search path (the CUDA extension's generic or Hopper
kernel, or Triton) comes from `sgcvq.gpu_dispatch`: the options, then the table measured on a GPU.

The extensions are loaded on the first call that needs one (`load()`), not by `import sgcvq`:
the import stays light (no compiled library, no Triton), and the first op call pays the load once.

Inputs are validated here, before any kernel runs, with messages that name the argument. The
checks that need values (label range, offsets, finiteness) synchronise with the device; they are
skipped under torch.compile and when `check=False`.
"""
from __future__ import annotations

import importlib
import os
import threading
import warnings

import torch

from . import gpu_dispatch as _gpu_dispatch  # plain Python, caches its table
from . import options as _options
from . import reference

__all__ = ["nearest_code", "cluster_stats", "ema_update", "available_backends", "BACKENDS", "MODES"]

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
# "exact": the float32 argmin from the fastest certified path of the backend (low-precision
# candidates, a margin, a float32 re-score and a certificate, float32 candidates where the margin
# cannot separate); "fast_exact" forces the low-precision candidates and "exact_fp32" the float32
# ones (for tests and benchmarks). All three return the same index.
MODES = ("exact", "fast_exact", "exact_fp32")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INT_DTYPES = (torch.int32, torch.int64)

# Kept identical to csrc/ops.cpp (tests/test_ops_schema.py checks that they agree).
SCHEMAS = {
    "nearest_code": "(Tensor x, Tensor codebook, Tensor? labels=None, Tensor? offsets=None, "
    "str mode='exact') -> (Tensor, Tensor)",
    "cluster_stats": "(Tensor index, Tensor x, int K, bool deterministic=False) -> (Tensor, Tensor)",
    "ema_update": "(Tensor(a!) cluster_size, Tensor(b!) embed_sum, Tensor(c!) codebook, "
    "Tensor counts, Tensor sums, float decay, float eps) -> ()",
}


# --------------------------------------------------------------------------------------------
# Loading the backends: on the first call that needs one, not at `import sgcvq`
# --------------------------------------------------------------------------------------------
# The compiled extensions register their kernels under torch.ops.sgcvq when imported; importing
# them (and Triton) costs a large part of `import sgcvq` and is only needed by an op call. So
# load() runs once, on the first op call, `available_backends`, `sgcvq.capabilities()` or the
# first read of one of the module attributes below (PEP 562 `__getattr__`): HAS_CPU_EXTENSION,
# HAS_CUDA_EXTENSION, _HAS_KERNEL_OP, _HAS_TRITON_OP, then plain globals.
_LAZY = ("HAS_CPU_EXTENSION", "HAS_CUDA_EXTENSION", "_HAS_KERNEL_OP", "_HAS_TRITON_OP", "CPU_EXTENSION_ERROR")
_load_lock = threading.RLock()
_loaded = False
_library_refs: list = []  # keeps Python-side registrations alive


def _import_extension(name: str) -> str | None:
    """None when `name` imports; else why not (a missing module reads "not built")."""
    try:
        importlib.import_module(name)
        return None
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return f"{name} is not built"
        return f"{name} did not load: {exc}"
    except ImportError as exc:  # built, but against another torch, or a missing symbol
        return f"{name} did not load: {exc}"


def _reference_with_warning(fn, key, why=None):
    warned = []

    def impl(*args):
        if not warned:
            warned.append(True)
            warnings.warn(
                f"sgcvq: no compiled {key} backend is available{f' ({why})' if why else ''}; using the slow pure-torch "
                "reference (build with `python setup.py build_ext --inplace`, or install triton for "
                "CUDA tensors)",
                stacklevel=3,
            )
        return fn(*args)

    return impl


_REFERENCE_IMPLS = {
    "nearest_code": reference.nearest_code_reference,
    "cluster_stats": lambda index, x, K, deterministic=False: reference.cluster_stats_reference(index, x, K),
    "ema_update": reference.ema_update_reference,
}


def _register_python_fallbacks(cpu_error: str | None, cuda_extension: bool) -> None:
    """Define the schema in Python and register the reference when the C++ library is missing."""
    if cpu_error is not None:
        lib = torch.library.Library("sgcvq", "DEF")
        _library_refs.append(lib)
        for name, schema in SCHEMAS.items():
            lib.define(name + schema)
        for name, fn in _REFERENCE_IMPLS.items():
            lib.impl(name, _reference_with_warning(fn, "CPU", cpu_error), "CPU")
    if not cuda_extension and torch.cuda.is_available():
        lib = torch.library.Library("sgcvq", "IMPL")
        _library_refs.append(lib)
        if _triton_available():
            from . import kernels as _kernels  # sgcvq.kernels (the top-level kernels/ folder)

            for name in _REFERENCE_IMPLS:
                lib.impl(name, getattr(_kernels, name), "CUDA")
        else:
            for name, fn in _REFERENCE_IMPLS.items():
                lib.impl(name, _reference_with_warning(fn, "CUDA", "no CUDA extension, no triton"), "CUDA")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _register_triton_op() -> bool:
    """torch.ops.sgcvq.nearest_code_triton: the Triton search beside the CUDA extension's, for the
    measured table's choice (it needs the schema from the CUDA extension's library)."""
    lib = torch.library.Library("sgcvq", "FRAGMENT")
    _library_refs.append(lib)
    lib.define("nearest_code_triton" + SCHEMAS["nearest_code"])

    def _nearest_code_triton_impl(x, codebook, labels=None, offsets=None, mode="exact"):
        from . import kernels as _kernels

        return _kernels.nearest_code(x, codebook, labels, offsets, mode)

    lib.impl("nearest_code_triton", _nearest_code_triton_impl, "CUDA")
    return True


def load() -> bool:
    """Import the compiled extensions (once) and register every op's kernels, fake and autograd.

    Called by each op before it dispatches; returns True. Without the CPU extension the ops run
    the pure-torch reference with one warning that says why (`CPU_EXTENSION_ERROR`).
    """
    global _loaded, HAS_CPU_EXTENSION, HAS_CUDA_EXTENSION, _HAS_KERNEL_OP, _HAS_TRITON_OP, CPU_EXTENSION_ERROR
    if _loaded:
        return True
    with _load_lock:
        if _loaded:
            return True
        cpu_error = _import_extension("sgcvq._C")
        cuda_extension = cpu_error is None and _import_extension("sgcvq._C_cuda") is None
        _register_python_fallbacks(cpu_error, cuda_extension)
        # The CUDA extension's search with its kernel named per call ("generic" or "sm90"; csrc/
        # cuda/ops_cuda.cpp). An extension built before that op existed has only the plain op.
        kernel_op = cuda_extension and hasattr(torch.ops.sgcvq, "nearest_code_kernel")
        triton_op = cuda_extension and torch.cuda.is_available() and _triton_available() and _register_triton_op()
        _register_fakes_and_autograd(kernel_op, triton_op)
        HAS_CPU_EXTENSION, HAS_CUDA_EXTENSION = cpu_error is None, cuda_extension
        _HAS_KERNEL_OP, _HAS_TRITON_OP, CPU_EXTENSION_ERROR = kernel_op, bool(triton_op), cpu_error
        _loaded = True
    return True


# Under torch.compile, dynamo runs load() at trace time (its result a constant) instead of tracing
# the imports and registrations. This marker is all torch.compiler.assume_constant_result sets
# (torch marks its own functions so too), and the decorator would import torch._dynamo, and with
# it Triton, at `import sgcvq`.
load._dynamo_marked_constant = True


def __getattr__(name: str):
    if name in _LAZY:
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# CUDA tensors: the path per (dtype, D, grouped, device capability) from the options and the table
# measured on a GPU (sgcvq/gpu_dispatch.json, written by benchmarks/test_bench_gpu.py)
# --------------------------------------------------------------------------------------------
_CAPABILITY: dict = {}


def _capability(device: torch.device):
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _CAPABILITY:
        _CAPABILITY[i] = tuple(torch.cuda.get_device_capability(i))
    return _CAPABILITY[i]


def gpu_choice(x: torch.Tensor, grouped: bool) -> "_gpu_dispatch.Choice":
    """The path an "auto" search on these CUDA tensors takes, and why."""
    load()
    return _gpu_dispatch.choose(x.dtype, x.shape[1], grouped, _capability(x.device),
                                has_cuda_extension=HAS_CUDA_EXTENSION, has_triton=_HAS_TRITON_OP)


def _measured_triton(x: torch.Tensor, labels) -> bool:
    if not _HAS_TRITON_OP or not x.is_cuda:
        return False
    return gpu_choice(x, labels is not None).backend == "triton"


def _cuda_search(x, codebook, labels, offsets, mode):
    """The CUDA extension's search with the kernel the options and the table choose."""
    if not _HAS_KERNEL_OP:
        return torch.ops.sgcvq.nearest_code(x, codebook, labels, offsets, mode)
    choice = gpu_choice(x, labels is not None)
    kernel = choice.kernel if choice.backend == "cuda" else "generic"
    return torch.ops.sgcvq.nearest_code_kernel(x, codebook, labels, offsets, mode, kernel)


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on `device` here ("reference" always can)."""
    device = torch.device(device)
    load()
    out = ["reference"]
    if device.type == "cpu":
        if HAS_CPU_EXTENSION:
            out.append("cpu")
        if os.environ.get("TRITON_INTERPRET") == "1" and _triton_available():
            out.append("triton")
    elif device.type == "cuda":
        if HAS_CUDA_EXTENSION:
            out.append("cuda")
        if _triton_available():
            out.append("triton")
    return out


def _resolve_backend(backend: str | None) -> str:
    b = backend if backend is not None else _options.current().backend
    if b not in BACKENDS:
        raise ValueError(f"sgcvq: backend must be one of {BACKENDS}, got {b!r}")
    return b


def _forced(op: str, backend: str, device: torch.device):
    if backend == "reference":
        return _REFERENCE_IMPLS[op]
    if backend == "triton":
        from . import kernels as _kernels

        return getattr(_kernels, op)
    want = "cpu" if backend == "cpu" else "cuda"
    if device.type != want:
        raise ValueError(f"{op}: backend {backend!r} needs {want} tensors, got tensors on {device}")
    if backend == "cpu" and not HAS_CPU_EXTENSION:
        raise RuntimeError(f"{op}: backend 'cpu' forced but {CPU_EXTENSION_ERROR} "
                           "(python setup.py build_ext --inplace)")
    if backend == "cuda" and not HAS_CUDA_EXTENSION:
        raise RuntimeError(f"{op}: backend 'cuda' forced but the CUDA extension sgcvq._C_cuda is not built")
    return getattr(torch.ops.sgcvq, op).default


def _checking(check: bool) -> bool:
    return check and not torch.compiler.is_compiling()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _require_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_features(op: str, name: str, t: torch.Tensor) -> None:
    _require_tensor(op, name, t)
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [rows, D], got shape {_shape(t)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, bfloat16 or float16, got {t.dtype}")


def _check_finite(op: str, name: str, t: torch.Tensor) -> None:
    # One aminmax pass (NaN propagates to both, an Inf shows at one end): ten times cheaper than
    # isfinite(t).all(), which writes a bool tensor first.
    if t.numel():
        lo, hi = torch.aminmax(t)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{op}: {name} contains NaN or Inf")


def validate_nearest_code(x, codebook, labels, offsets, mode, check_values: bool) -> None:
    op = "nearest_code"
    _check_features(op, "x", x)
    _check_features(op, "codebook", codebook)
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(f"{op}: x is {_shape(x)} but codebook is {_shape(codebook)}: D must match")
    if codebook.shape[0] == 0:
        raise ValueError(f"{op}: codebook is empty (K = 0)")
    if x.dtype != codebook.dtype:
        raise TypeError(f"{op}: x is {x.dtype} but codebook is {codebook.dtype}: dtypes must match")
    if x.device != codebook.device:
        raise ValueError(f"{op}: x is on {x.device} but codebook is on {codebook.device}")
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")
    if (labels is None) != (offsets is None):
        raise ValueError(f"{op}: labels and offsets go together: pass both or neither")
    if labels is None:
        if check_values:
            _check_finite(op, "x", x)
            _check_finite(op, "codebook", codebook)
        return
    _require_tensor(op, "labels", labels)
    _require_tensor(op, "offsets", offsets)
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: labels must be [N] = [{x.shape[0]}], got shape {_shape(labels)}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"{op}: labels must be int32 or int64, got {labels.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] < 2:
        raise ValueError(f"{op}: offsets must be [C+1] with C >= 1, got shape {_shape(offsets)}")
    if offsets.dtype not in _INT_DTYPES:
        raise TypeError(f"{op}: offsets must be int32 or int64, got {offsets.dtype}")
    if labels.device != x.device or offsets.device != x.device:
        raise ValueError(
            f"{op}: labels ({labels.device}) and offsets ({offsets.device}) must be on x's device {x.device}"
        )
    if not check_values:
        return
    _check_finite(op, "x", x)
    _check_finite(op, "codebook", codebook)
    off = offsets.tolist()
    K, C = codebook.shape[0], len(off) - 1
    if off[0] != 0 or off[-1] != K:
        raise ValueError(f"{op}: offsets must start at 0 and end at K = {K}, got {off[0]} .. {off[-1]}")
    for c in range(C):
        if off[c] > off[c + 1]:
            raise ValueError(
                f"{op}: offsets must be non-decreasing, but offsets[{c}] = {off[c]} > offsets[{c + 1}] = {off[c + 1]}"
            )
    if labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < -1 or hi >= C:
            bad = lo if lo < -1 else hi
            raise ValueError(f"{op}: labels must be in [-1, {C}) (-1 = search all codes), found {bad}")
        if not any(off[c] == off[c + 1] for c in range(C)):
            return  # no empty group, so no label can point to one
        sizes = offsets[1:] - offsets[:-1]
        used = labels[labels >= 0].to(torch.int64)
        empty_used = used[sizes[used] == 0]
        if empty_used.numel():
            raise ValueError(f"{op}: label {int(empty_used[0])} points to an empty code group (offsets give it 0 codes)")


def validate_cluster_stats(index, x, K, check_values: bool) -> None:
    op = "cluster_stats"
    _check_features(op, "x", x)
    _require_tensor(op, "index", index)
    if index.dim() != 1 or index.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: index must be [N] = [{x.shape[0]}], got shape {_shape(index)}")
    if index.dtype != torch.int64:
        raise TypeError(f"{op}: index must be int64, got {index.dtype}")
    if index.device != x.device:
        raise ValueError(f"{op}: index is on {index.device} but x is on {x.device}")
    if isinstance(K, bool) or not isinstance(K, int) or K <= 0:
        raise ValueError(f"{op}: K must be a positive int, got {K!r}")
    if check_values and index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"{op}: index must be in [0, {K}), found {lo if lo < 0 else hi}")
        _check_finite(op, "x", x)


def validate_ema_update(cluster_size, embed_sum, codebook, counts, sums, decay, eps) -> None:
    op = "ema_update"
    for name, t in (("cluster_size", cluster_size), ("embed_sum", embed_sum), ("codebook", codebook),
                    ("counts", counts), ("sums", sums)):
        _require_tensor(op, name, t)
        if t.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be float32, got {t.dtype}")
        if t.device != embed_sum.device:
            raise ValueError(f"{op}: {name} is on {t.device} but embed_sum is on {embed_sum.device}")
    if embed_sum.dim() != 2:
        raise ValueError(f"{op}: embed_sum must be [K, D], got shape {_shape(embed_sum)}")
    if codebook.shape != embed_sum.shape or sums.shape != embed_sum.shape:
        raise ValueError(
            f"{op}: codebook {_shape(codebook)} and sums {_shape(sums)} must match embed_sum {_shape(embed_sum)}"
        )
    if cluster_size.shape != (embed_sum.shape[0],) or counts.shape != cluster_size.shape:
        raise ValueError(
            f"{op}: cluster_size {_shape(cluster_size)} and counts {_shape(counts)} must be [K] = [{embed_sum.shape[0]}]"
        )
    for name, t in (("cluster_size", cluster_size), ("embed_sum", embed_sum), ("codebook", codebook)):
        if not t.is_contiguous():  # the kernels write these through raw pointers
            raise ValueError(
                f"{op}: {name} is updated in place and must be contiguous, got strides {list(t.stride())}"
            )
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"{op}: decay must be in [0, 1], got {decay}")
    if eps < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    labels: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    *,
    mode: str = "exact",
    backend: str | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every token, without materialising the N x K distance matrix.

    Args:
        x: [N, D] float32 / bfloat16 / float16 tokens.
        codebook: [K, D], same dtype and device as x.
        labels: optional [N] int32/int64 class of each token in [-1, C); -1 searches all codes.
        offsets: [C+1] int32/int64 with the class groups: class c owns codes
            [offsets[c], offsets[c+1]); offsets[0] = 0, offsets[C] = K. Required with labels.
        mode: "exact" (the float32 argmin through the fastest certified path the backend has:
            on the CPU bf16 candidates where it has AMX or AVX512_BF16), "fast_exact" (forces
            the low-precision candidates) or "exact_fp32" (forces float32 candidates); all three
            return the same index.
        backend: force "reference", "cpu", "cuda" or "triton"; None: the option `backend`
            (SGCVQ_BACKEND or `sgcvq.set_options`, else "auto").
        check: validate values too (label range, offsets, finiteness): one host sync.

    Returns:
        index [N] int64 (ties to the lowest index) and sqdist [N] float32 = ||x_i - e_index||^2.
        sqdist is differentiable w.r.t. x and codebook (auto backend).
    """
    validate_nearest_code(x, codebook, labels, offsets, mode, _checking(check))
    load()
    b = _resolve_backend(backend)
    if b == "auto":
        if _measured_triton(x, labels):
            return torch.ops.sgcvq.nearest_code_triton(x, codebook, labels, offsets, mode)
        if x.is_cuda and HAS_CUDA_EXTENSION:
            return _cuda_search(x, codebook, labels, offsets, mode)
        return torch.ops.sgcvq.nearest_code(x, codebook, labels, offsets, mode)
    if b == "cuda":
        _forced("nearest_code", b, x.device)  # the checks and their messages
        return _cuda_search(x, codebook, labels, offsets, mode)
    return _forced("nearest_code", b, x.device)(x, codebook, labels, offsets, mode)


def cluster_stats(
    index: torch.Tensor,
    x: torch.Tensor,
    K: int,
    *,
    deterministic: bool | None = None,
    backend: str | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster counts [K] float32 and sums [K, D] float32 of x [N, D] grouped by index [N] int64.

    deterministic: bit-identical results run to run; defaults to
    torch.are_deterministic_algorithms_enabled(). The CPU kernel is always deterministic.
    """
    validate_cluster_stats(index, x, K, _checking(check))
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    load()
    b = _resolve_backend(backend)
    if b == "auto":
        return torch.ops.sgcvq.cluster_stats(index, x, K, deterministic)
    return _forced("cluster_stats", b, x.device)(index, x, K, deterministic)


def ema_update(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    codebook: torch.Tensor,
    counts: torch.Tensor,
    sums: torch.Tensor,
    decay: float,
    eps: float,
    *,
    backend: str | None = None,
) -> None:
    """In place EMA codebook update (docs/method.md §1.6) on float32 buffers.

    cluster_size [K], embed_sum [K, D], codebook [K, D] are updated; counts [K] and sums [K, D]
    are this step's statistics (from cluster_stats).
    """
    validate_ema_update(cluster_size, embed_sum, codebook, counts, sums, decay, eps)
    load()
    b = _resolve_backend(backend)
    if b == "auto":
        return torch.ops.sgcvq.ema_update(cluster_size, embed_sum, codebook, counts, sums, float(decay), float(eps))
    return _forced("ema_update", b, embed_sum.device)(cluster_size, embed_sum, codebook, counts, sums,
                                                      float(decay), float(eps))


# --------------------------------------------------------------------------------------------
# Fake (meta) kernels for torch.compile, and autograd
# --------------------------------------------------------------------------------------------
def _nearest_code_fake(x, codebook, labels=None, offsets=None, mode="exact"):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


def _cluster_stats_fake(index, x, K, deterministic=False):
    return x.new_empty(K, dtype=torch.float32), x.new_empty(K, x.shape[1], dtype=torch.float32)


def _ema_update_fake(cluster_size, embed_sum, codebook, counts, sums, decay, eps):
    return None


def _nearest_code_setup_context(ctx, inputs, output):
    x, codebook = inputs[0], inputs[1]
    index, _ = output
    ctx.save_for_backward(x, codebook, index)
    ctx.mark_non_differentiable(index)


def _nearest_code_backward(ctx, grad_index, grad_sqdist):
    # d sqdist_i / d x_i = 2 (x_i - e_k),  d sqdist_i / d e_k = -2 (x_i - e_k)
    x, codebook, index = ctx.saved_tensors
    grad_x = grad_codebook = None
    if grad_sqdist is None:
        return None, None, None, None, None
    diff = (x.float() - codebook.float()[index]) * (2.0 * grad_sqdist[:, None])
    if ctx.needs_input_grad[0]:
        grad_x = diff.to(x.dtype)
    if ctx.needs_input_grad[1]:
        grad_codebook = torch.zeros(codebook.shape, dtype=torch.float32, device=codebook.device)
        grad_codebook.index_add_(0, index, -diff)
        grad_codebook = grad_codebook.to(codebook.dtype)
    return grad_x, grad_codebook, None, None, None


def _register_fakes_and_autograd(kernel_op: bool, triton_op: bool) -> None:
    """Called by load() once the ops exist (register_autograd needs the op's schema)."""
    torch.library.register_fake("sgcvq::nearest_code")(_nearest_code_fake)
    torch.library.register_fake("sgcvq::cluster_stats")(_cluster_stats_fake)
    torch.library.register_fake("sgcvq::ema_update")(_ema_update_fake)
    torch.library.register_autograd(
        "sgcvq::nearest_code", _nearest_code_backward, setup_context=_nearest_code_setup_context
    )
    if kernel_op:
        torch.library.register_fake("sgcvq::nearest_code_kernel")(
            lambda x, codebook, labels=None, offsets=None, mode="exact", kernel="generic":
            _nearest_code_fake(x, codebook, labels, offsets, mode))
        torch.library.register_autograd(
            "sgcvq::nearest_code_kernel", lambda ctx, gi, gs: _nearest_code_backward(ctx, gi, gs) + (None,),
            setup_context=_nearest_code_setup_context)
    if triton_op:
        torch.library.register_fake("sgcvq::nearest_code_triton")(_nearest_code_fake)
        torch.library.register_autograd(
            "sgcvq::nearest_code_triton", _nearest_code_backward, setup_context=_nearest_code_setup_context
        )
