"""sgcvq: semantic-guided clustering vector quantization on compiled kernels."""
from .ops import BACKENDS, MODES, available_backends, cluster_stats, ema_update, nearest_code
from .reference import cluster_stats_reference, ema_update_reference, nearest_code_reference
from .quantizer import FastSemanticQuantizer
from .options import capabilities, set_options
from . import options

__version__ = "0.1.0"

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
