"""Triton kernels of sgcvq, installed as `sgcvq.kernels` (never import as plain `kernels`).

One file per op: `nearest_code`, `cluster_stats`, `ema_update`, each a host launcher around
`_..._kernel` Triton kernels, with the schema and semantics of `sgcvq.reference`. `sgcvq.ops`
registers them for CUDA tensors when the CUDA C++ extension is not built, and calls them directly
for backend="triton" (on CPU tensors too under TRITON_INTERPRET=1). Inputs are validated there.

Importing this package imports triton (and compiles nothing): `sgcvq.ops` only imports it when
triton is importable.
"""
from .cluster_stats import cluster_stats
from .ema_update import ema_update
from .nearest_code import nearest_code

__all__ = ["nearest_code", "cluster_stats", "ema_update"]
