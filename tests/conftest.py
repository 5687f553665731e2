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


@pytest.fixture(autouse=True, scope="session")
def _sgcvq_ops_loaded():
    # sgcvq loads its extensions on the first op call; tests that call torch.ops.sgcvq.* directly
    # (opcheck, the C++ kernels' own checks) need them registered before. That `import sgcvq`
    # alone loads nothing is checked in fresh interpreters (test_lazy_import.py).
    from sgcvq import ops

    ops.load()


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    # Fresh random data per test, reproducible from the test's name (crc32, not hash(): Python
    # randomises string hashes per process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture(autouse=True)
def _options_follow_the_environment():
    # sgcvq reads its SGCVQ_* variables once (sgcvq.options). A test that changed os.environ
    # (monkeypatch, undone before this teardown: autouse fixtures are set up first, torn down
    # last) must not leave its values behind for the next test.
    yield
    from sgcvq import options

    options.reload()


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny models gain nothing from a second thread, and on a
    shared, busy machine OpenMP threads that spin-wait for each other make every step many times
    slower. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
