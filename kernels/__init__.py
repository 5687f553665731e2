"""Triton kernels of sgcvq, installed as `sgcvq.kernels` (never import as plain `kernels`)."""
