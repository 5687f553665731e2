"""Which CPU kernels this machine can run, for the tests' skip marks."""
from __future__ import annotations

import contextlib
import os

import sgcvq
from sgcvq import ops


def avx2_here() -> bool:
    """The AVX2 kernels can run here (x86-64 with AVX2 + FMA + F16C): SGCVQ_CPU_AVX2=1 is accepted
    and the certified int16 path is offered."""
    if not ops.HAS_CPU_EXTENSION:
        return False
    old = os.environ.get("SGCVQ_CPU_AVX2")
    os.environ["SGCVQ_CPU_AVX2"] = "1"
    try:
        return "avx2int16" in sgcvq._C.cpu_capabilities()["bf16_paths"]
    except RuntimeError:  # "this CPU has no AVX2"
        return False
    finally:
        if old is None:
            del os.environ["SGCVQ_CPU_AVX2"]
        else:
            os.environ["SGCVQ_CPU_AVX2"] = old


@contextlib.contextmanager
def cpu_setting(name: str, value: str):
    """The CPU kernels' switch `name` = value for the duration (they read it on every call); the
    old value (or none) afterwards."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
