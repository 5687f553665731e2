"""One place for every run-time choice of the library: the options object and its order.

Each choice below can come from four places, and the first that gives one wins:

1. an explicit argument of the call (`backend=` on the ops, `mode=`, `candidates=` on the Triton
   launcher): the caller asked for it by name;
2. the environment (`SGCVQ_*`, read ONCE, when this module is first imported; `reload()` reads it
   again after a change to os.environ, e.g. in tests): the user's override from outside the program;
3. the global setter, `set_options(...)` or the context manager `options(...)`: the program's
   own preference;
4. the default, which for the GPU kernel is the dispatch table measured on a GPU
   (`sgcvq/gpu_dispatch.json`, see `sgcvq.gpu_dispatch`).

The CPU kernels' own switches (SGCVQ_CPU_*) are read by the C++ extension itself; `capabilities()`
reports what they chose. docs/options.md lists every variable.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator

__all__ = ["Options", "ENV_VARS", "current", "set_options", "options", "reload", "environment", "explain",
           "capabilities"]

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
CUDA_KERNELS = ("auto", "generic", "sm90")
TRITON_CANDIDATES = ("auto", "bf16", "tf32")
TRITON_EXACT_FP32_DOTS = ("tf32x3", "ieee")


@dataclasses.dataclass(frozen=True)
class Options:
    """The resolved options (environment over setter over default).

    backend: "auto" lets the dispatcher choose per call; "reference", "cpu", "cuda", "triton"
        force one backend for every op (SGCVQ_BACKEND).
    gpu_dispatch: which measured table chooses the GPU path of an "auto" call on CUDA tensors:
        "" the shipped table, "off" none (the CUDA extension's generic kernel, else Triton), or a
        path to another table (SGCVQ_GPU_DISPATCH).
    cuda_kernel: the CUDA extension's search kernel: "auto" (the table's choice), "generic"
        (nearest_code.cu, every GPU), "sm90" (the Hopper kernel nearest_code_sm90.cu where it
        applies: sm_90a build on an sm_90 device, float32 / bfloat16, 16 <= D <= 256, D % 8 == 0,
        mode "exact"; elsewhere the generic one) (SGCVQ_CUDA_SM90=1 -> "sm90", =0 -> "generic").
    triton_autotune: time every tile shape of the Triton search per autotune key (True), or
        take the first of each family (False: short test runs) (SGCVQ_TRITON_AUTOTUNE=0).
    triton_candidates: the Triton first pass's operands for float32 inputs: "auto" (bfloat16 at
        D >= 32, TF32 below), "bf16" or "tf32" (SGCVQ_TRITON_CANDIDATES).
    triton_exact_fp32_dot: the dot of the Triton float32-grade pass, "tf32x3" or "ieee"
        (SGCVQ_TRITON_EXACT_FP32_DOT).
    """

    backend: str = "auto"
    gpu_dispatch: str = ""
    cuda_kernel: str = "auto"
    triton_autotune: bool = True
    triton_candidates: str = "auto"
    triton_exact_fp32_dot: str = "tf32x3"


_CHOICES = {
    "backend": BACKENDS,
    "cuda_kernel": CUDA_KERNELS,
    "triton_candidates": TRITON_CANDIDATES,
    "triton_exact_fp32_dot": TRITON_EXACT_FP32_DOTS,
}


# Environment variable -> (field, parser from the string to the field's value). A parser returns
# the value unchecked; `_check` names the variable when a value is not allowed.
def _flag(text: str):
    if text in ("0", "1"):
        return text == "1"
    return text  # kept as given: `_check` reports it


ENV_VARS = {
    "SGCVQ_BACKEND": ("backend", str),
    "SGCVQ_GPU_DISPATCH": ("gpu_dispatch", str),
    "SGCVQ_CUDA_SM90": ("cuda_kernel", lambda t: {"1": "sm90", "0": "generic"}.get(t, t)),
    "SGCVQ_TRITON_AUTOTUNE": ("triton_autotune", _flag),
    "SGCVQ_TRITON_CANDIDATES": ("triton_candidates", str),
    "SGCVQ_TRITON_EXACT_FP32_DOT": ("triton_exact_fp32_dot", str),
}


def _check(field: str, value, source: str) -> None:
    if field == "triton_autotune":
        if not isinstance(value, bool):
            raise ValueError(f"sgcvq: {source} must be 0 or 1 (triton_autotune), got {value!r}")
        return
    if field == "gpu_dispatch":
        if not isinstance(value, str):
            raise ValueError(f"sgcvq: {source} must be '', 'off' or a path to a table, got {value!r}")
        return
    allowed = _CHOICES[field]
    if value not in allowed:
        if source.startswith("SGCVQ_CUDA_SM90"):
            raise ValueError(f"sgcvq: SGCVQ_CUDA_SM90 must be '1' or '0', got {os.environ.get('SGCVQ_CUDA_SM90')!r}")
        # "backend must be one of": the wording the op layer has always used for this error
        raise ValueError(f"sgcvq: {field} must be one of {allowed} ({source}), got {value!r}")


def _read_environment() -> dict:
    """{field: value} for each SGCVQ_* option variable that is set (and not empty)."""
    out = {}
    for var, (field, parse) in ENV_VARS.items():
        text = os.environ.get(var)
        if text:
            out[field] = (parse(text), var)
    return out


_table_listeners: list = []


def _invalidate_tables() -> None:
    for fn in _table_listeners:
        fn()


def on_change(fn) -> None:
    """Call fn() whenever the options change (the dispatch table caches what it loaded)."""
    _table_listeners.append(fn)


_env: dict = {}  # field -> (value, variable), from the last reload()
_set_stack: list[dict] = [{}]  # setter values; the context manager pushes a layer
_resolved: Options | None = None
_error: Exception | None = None


def reload() -> Options:
    """Read the environment again (after os.environ changed) and return the resolved options."""
    global _env
    _env = _read_environment()
    _invalidate_tables()
    return _resolve()


def _resolve() -> Options:
    global _resolved, _error
    values, _error = {}, None
    for layer in _set_stack:
        values.update(layer)
    for field, (value, var) in _env.items():
        values[field] = value
    try:
        for field, (value, var) in _env.items():
            _check(field, value, var)
        _resolved = Options(**values)
    except ValueError as exc:
        # An invalid environment value must not break `import sgcvq`: every call that reads
        # the options raises it instead, naming the variable.
        _resolved, _error = None, exc
    return _resolved


def current() -> Options:
    """The options now in force (a cached object: cheap enough for every call)."""
    if _resolved is None:
        if _error is not None:
            raise _error
        _resolve()
        if _error is not None:
            raise _error
    return _resolved


def _validated(kw: dict) -> dict:
    fields = {f.name for f in dataclasses.fields(Options)}
    for name, value in kw.items():
        if name not in fields:
            raise TypeError(f"sgcvq.set_options: unknown option {name!r} (options: {sorted(fields)})")
        if name == "triton_autotune" and not isinstance(value, bool):
            raise ValueError(f"sgcvq.set_options: triton_autotune must be True or False, got {value!r}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"sgcvq.set_options: {name} must be one of {_CHOICES[name]}, got {value!r}")
        if name == "gpu_dispatch" and not isinstance(value, str):
            raise ValueError(f"sgcvq.set_options: gpu_dispatch must be '', 'off' or a path, got {value!r}")
    return kw


def set_options(**kw) -> None:
    """Set options for the rest of the process (below the environment: a SGCVQ_* variable that
    is set still wins). `set_options(backend=None)` clears a value set earlier."""
    layer = _set_stack[0]
    checked = _validated({k: v for k, v in kw.items() if v is not None})
    for name, value in kw.items():
        if value is None:
            layer.pop(name, None)
    layer.update(checked)
    _invalidate_tables()
    _resolve()  # an invalid environment value is reported by current(), not here


@contextlib.contextmanager
def options(**kw) -> Iterator[Options]:
    """Options for the duration of a `with` block (same rank as `set_options`)."""
    _set_stack.append(_validated(dict(kw)))
    _invalidate_tables()
    try:
        yield _resolve() or current()
    finally:
        _set_stack.pop()
        _invalidate_tables()
        _resolve()


def environment() -> dict:
    """{variable: value} of the SGCVQ_* option variables read at the last reload()."""
    return {var: os.environ.get(var) for var in ENV_VARS if _env.get(ENV_VARS[var][0], (None, None))[1] == var}


def explain(field: str) -> str:
    """Where the value of one option comes from: "environment (VAR)", "set_options" or "default"."""
    if field in _env:
        return f"environment ({_env[field][1]})"
    if any(field in layer for layer in _set_stack):
        return "set_options"
    return "default"


reload()


# --------------------------------------------------------------------------------------------
# What runs here, and why
# --------------------------------------------------------------------------------------------
_DISPATCH_DTYPES = ("float32", "bfloat16", "float16")
_DISPATCH_WIDTHS = (8, 64, 256)  # one D per shape family: the small-D kernels, mid, the paper's


def _cpu_report(ops) -> dict:
    out: dict = {"extension_built": ops.HAS_CPU_EXTENSION}
    if not ops.HAS_CPU_EXTENSION:
        out["why"] = f"{ops.CPU_EXTENSION_ERROR} (python setup.py build_ext --inplace): the reference runs"
        return out
    from . import _C

    # The C++ side owns its switches (SGCVQ_CPU_*); whatever keys it reports are passed on.
    for name in ("cpu_capabilities", "cpu_options"):
        fn = getattr(_C, name, None)
        if fn is None:
            continue
        try:
            out["features" if name == "cpu_capabilities" else "options"] = dict(fn())
        except Exception as exc:  # e.g. an SGCVQ_CPU_BF16 this CPU cannot run
            out[f"{name}_error"] = str(exc)
    return out


def _dispatch_rows(ops, gpu_dispatch) -> tuple[list, str]:
    import torch

    if torch.cuda.is_available():
        caps = sorted({tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())})
        has_cuda, has_triton, note = ops.HAS_CUDA_EXTENSION, ops._HAS_TRITON_OP or (
            not ops.HAS_CUDA_EXTENSION and ops._triton_available()), "this machine's GPUs"
    else:
        caps = sorted({tuple(e["capability"]) for e in gpu_dispatch.table()["entries"]
                       if isinstance(e, dict) and e.get("capability")}) or [(9, 0)]
        has_cuda, has_triton = True, True
        note = ("no GPU here: what a GPU of each capability in the table would run with the CUDA "
                "extension and Triton installed")
    rows = []
    for cap in caps:
        for dtype in _DISPATCH_DTYPES:
            for D in _DISPATCH_WIDTHS:
                for grouped in (False, True):
                    c = gpu_dispatch.choose(getattr(torch, dtype), D, grouped, cap,
                                            has_cuda_extension=has_cuda, has_triton=has_triton)
                    rows.append({"capability": list(cap), "dtype": dtype, "D": D, "grouped": grouped,
                                 "backend": c.backend, "kernel": c.kernel, "reason": c.reason})
    return rows, note


def capabilities() -> dict:
    """What runs on this machine and why: the options and where each comes from, the CPU
    extension's features and chosen paths, the CUDA extension and Triton, and the GPU path per
    dtype and shape family with the evidence (the measured table's entry) behind it."""
    import torch

    from . import gpu_dispatch, ops

    opts = current()
    try:
        import triton

        triton_info = {"available": True, "version": triton.__version__,
                       "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    except ImportError:
        triton_info = {"available": False, "why": "triton is not installed"}
    cuda = {"available": torch.cuda.is_available(), "extension_built": ops.HAS_CUDA_EXTENSION,
            "kernel_op": ops._HAS_KERNEL_OP}
    if torch.cuda.is_available():
        cuda["devices"] = [{"name": torch.cuda.get_device_name(i),
                            "capability": list(torch.cuda.get_device_capability(i))}
                           for i in range(torch.cuda.device_count())]
    elif not ops.HAS_CUDA_EXTENSION:
        cuda["why"] = "no CUDA device" + ("" if torch.version.cuda else " and a CPU-only torch (no CUDA extension)")
    rows, note = _dispatch_rows(ops, gpu_dispatch)
    t = gpu_dispatch.table()
    return {
        "options": dataclasses.asdict(opts),
        "sources": {f.name: explain(f.name) for f in dataclasses.fields(Options)},
        "environment": environment(),
        "cpu": _cpu_report(ops),
        "cuda": cuda,
        "triton": triton_info,
        "gpu_dispatch": {"table": {k: t.get(k) for k in ("device", "source", "written")},
                         "setting": opts.gpu_dispatch or "shipped", "choices": rows, "note": note},
    }
