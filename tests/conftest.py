"""Shared test setup.

TRITON_INTERPRET must be set before triton is first imported: without a GPU, the Triton kernels
run on CPU tensors through Triton's interpreter (small shapes, float32).
"""
import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    # Fresh random data per test, reproducible from the test's name (crc32, not hash(): Python
    # randomises string hashes per process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
