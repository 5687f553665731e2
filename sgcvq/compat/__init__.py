"""Drop-in replacements for other projects' quantizers, on sgcvq's fused ops.

    from sgcvq.compat import VectorQuantize                       # vector-quantize-pytorch 1.34.1
    from sgcvq.compat import VectorQuantizer2 as VectorQuantizer  # taming-transformers' VQGAN

Each mirrors its peer's constructor, defaults, forward outputs, methods and state_dict keys
(parity tests in tests/test_compat_vq.py and tests/test_compat_taming.py).
"""
from .taming import TamingVectorQuantizer, VectorQuantizer, VectorQuantizer2
from .vector_quantize import LossBreakdown, VectorQuantize

__all__ = ["VectorQuantize", "LossBreakdown", "VectorQuantizer2", "VectorQuantizer", "TamingVectorQuantizer"]
