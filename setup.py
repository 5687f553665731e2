"""Build of sgcvq: the CPU op library always, the CUDA one where torch has CUDA and nvcc is found.

    python setup.py build_ext --inplace      # development build next to the sources
    pip install --no-build-isolation .       # install against the torch already installed

`--no-build-isolation` matters: an isolated build would fetch a second torch from the registry.
"""
import glob
import os
import platform
import warnings

from setuptools import setup

from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# The AVX-512 kernels: x86-64 only. Elsewhere (aarch64: Graviton, Grace, Apple silicon)
# csrc/cpu/portable/ stands in for them (the bf16 search off) and the portable scans serve.
X86_ONLY = ["csrc/cpu/bf16_tile_avx512.cpp", "csrc/cpu/nearest_code_bf16.cpp"]


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_sources():
    sources = _rel("csrc/ops.cpp") + _rel("csrc/cpu/*.cpp") + _rel("csrc/cpu/avx2/*.cpp")
    if is_x86():
        return sources
    return [s for s in sources if s not in X86_ONLY] + _rel("csrc/cpu/portable/*.cpp")


def cpu_extension():
    # -fopenmp: at::parallel_for is inlined into our code and uses OpenMP pragmas.
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"]
    return cpp_extension.CppExtension(
        "sgcvq._C",
        sources=cpu_sources(),
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


def cuda_extension():
    """The CUDA op library `sgcvq._C_cuda`, or None with the reason printed.

    The kernels (csrc/cuda/*.cu) include only CUDA headers; csrc/cuda/ops_cuda.cpp is the torch glue
    and registers them under TORCH_LIBRARY_IMPL(sgcvq, CUDA, m).
    """
    import torch

    if torch.version.cuda is None:
        print("sgcvq: torch has no CUDA: building the CPU extension only")
        return None
    if cpp_extension.CUDA_HOME is None:
        warnings.warn("sgcvq: torch has CUDA but nvcc was not found (set CUDA_HOME): no CUDA extension")
        return None
    sources = _rel("csrc/cuda/*.cu") + _rel("csrc/cuda/*.cpp")
    if not sources:
        return None
    # sm_80 (A100) and sm_90a (H100, arch-specific features); override with TORCH_CUDA_ARCH_LIST.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    print(f"sgcvq: building the CUDA extension for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    return cpp_extension.CUDAExtension(
        "sgcvq._C_cuda",
        sources=sources,
        extra_compile_args={
            "cxx": ["-O3", "-fvisibility=hidden"],
            # NOTE: never --use_fast_math: the search must be exact (IEEE division and sqrt, no
            # flush-to-zero surprises in the certified bounds).
            "nvcc": ["-O3", "-lineinfo"],
        },
    )


# Keep parallel compile jobs in check on small machines (flash-attention's habit).
os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))

ext_modules = [cpu_extension()]
cuda_ext = cuda_extension()
if cuda_ext is not None:
    ext_modules.append(cuda_ext)

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
