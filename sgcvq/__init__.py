"""sgcvq: semantic-guided clustering vector quantization on compiled kernels."""
from .ops import BACKENDS, MODES, available_backends, cluster_stats, ema_update, nearest_code
from .reference import cluster_stats_reference, ema_update_reference, nearest_code_reference
from .quantizer import FastSemanticQuantizer
from .options import capabilities, set_options
from . import ops, options

__version__ = "0.1.0"


def __getattr__(name: str):
    # The compiled extensions load on first use (sgcvq.ops.load), not at `import sgcvq`: reading
    # sgcvq._C or sgcvq._C_cuda loads them first.
    if name in ("_C", "_C_cuda"):
        ops.load()
        if name in globals():
            return globals()[name]
        raise AttributeError(f"sgcvq.{name} is not available: {ops.CPU_EXTENSION_ERROR or 'the CUDA extension is not built'}")
    raise AttributeError(f"module 'sgcvq' has no attribute {name!r}")

__all__ = [
    "nearest_code",
    "cluster_stats",
    "ema_update",
    "available_backends",
    "BACKENDS",
    "MODES",
    "nearest_code_reference",
    "cluster_stats_reference",
    "ema_update_reference",
    "FastSemanticQuantizer",
    "capabilities",
    "set_options",
    "options",
]
