"""ema_update (docs/method.md §1.6) on the "auto" path and the "cpu" / "reference" backends."""
from __future__ import annotations

import pytest
import torch

import sgcvq
from sgcvq import ema_update_reference

BACKENDS = ("auto", "cpu", "reference")


def sample_inputs(K: int, D: int) -> dict:
    """EMA state (cluster_size [K] > 0, embed_sum [K, D], codebook [K, D]) and one step's
    statistics (counts [K], some zero, and sums [K, D]), all float32."""
    counts = torch.randint(0, 20, (K,)).float()
    return {
        "cluster_size": torch.rand(K) * 5 + 0.1,
        "embed_sum": torch.randn(K, D),
        "codebook": torch.randn(K, D),
        "counts": counts,
        "sums": torch.randn(K, D) * counts[:, None],
    }


BUFFERS = ("cluster_size", "embed_sum", "codebook")


def apply(update, state: dict, decay: float, eps: float) -> dict:
    """Runs `update` on a copy of `state` and returns the updated buffers."""
    s = {k: v.clone() for k, v in state.items()}
    update(s["cluster_size"], s["embed_sum"], s["codebook"], s["counts"], s["sums"], decay, eps)
    return {k: s[k] for k in BUFFERS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay,eps", [(0.99, 1e-5), (0.8, 1e-3), (0.0, 1e-5), (1.0, 0.0)])
@pytest.mark.parametrize("K,D", [(1, 1), (7, 3), (300, 65)])
def test_matches_reference(K, D, decay, eps, backend):
    state = sample_inputs(K, D)
    got = apply(lambda *a: sgcvq.ema_update(*a, backend=backend), state, decay, eps)
    want = apply(ema_update_reference, state, decay, eps)
    for name in BUFFERS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computation(backend):
    # K = 2, D = 1, decay 0.5, eps 0.1, worked out by hand:
    #   N = 0.5 [1, 3] + 0.5 [3, 1] = [2, 2];   M = 0.5 [[2], [6]] + 0.5 [[10], [2]] = [[6], [4]]
    #   total = 4;  smoothed = (N + 0.1) / (4 + 2 * 0.1) * 4 = [2, 2];  codebook = M / 2 = [[3], [2]]
    state = {
        "cluster_size": torch.tensor([1.0, 3.0]),
        "embed_sum": torch.tensor([[2.0], [6.0]]),
        "codebook": torch.tensor([[-7.0], [7.0]]),
        "counts": torch.tensor([3.0, 1.0]),
        "sums": torch.tensor([[10.0], [2.0]]),
    }
    got = apply(lambda *a: sgcvq.ema_update(*a, backend=backend), state, 0.5, 0.1)
    torch.testing.assert_close(got["cluster_size"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(got["embed_sum"], torch.tensor([[6.0], [4.0]]))
    torch.testing.assert_close(got["codebook"], torch.tensor([[3.0], [2.0]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_laplace_smoothing_keeps_an_unused_code_finite(backend):
    # Code 1 has never been used (N = 0): eps keeps its divisor positive instead of 0.
    # N = [4, 0], total 4, eps 0.5: smoothed = ([4, 0] + 0.5) / (4 + 1) * 4 = [3.6, 0.4].
    state = {
        "cluster_size": torch.tensor([4.0, 0.0]),
        "embed_sum": torch.tensor([[8.0, 4.0], [1.0, -1.0]]),
        "codebook": torch.zeros(2, 2),
        "counts": torch.tensor([4.0, 0.0]),
        "sums": torch.tensor([[8.0, 4.0], [0.0, 0.0]]),
    }
    got = apply(lambda *a: sgcvq.ema_update(*a, backend=backend), state, 1.0, 0.5)
    torch.testing.assert_close(got["codebook"], torch.tensor([[8 / 3.6, 4 / 3.6], [1 / 0.4, -1 / 0.4]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_statistics(backend):
    state = sample_inputs(50, 9)
    strided = dict(state, counts=torch.stack([state["counts"]] * 2, 1)[:, 0], sums=state["sums"].t().contiguous().t())
    assert not strided["counts"].is_contiguous() and not strided["sums"].is_contiguous()
    got = apply(lambda *a: sgcvq.ema_update(*a, backend=backend), strided, 0.9, 1e-5)
    want = apply(ema_update_reference, state, 0.9, 1e-5)
    for name in BUFFERS:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_updates_in_place():
    state = sample_inputs(20, 4)
    ptrs = {name: state[name].data_ptr() for name in BUFFERS}
    before = {name: state[name].clone() for name in BUFFERS}
    assert sgcvq.ema_update(*state.values(), 0.9, 1e-5) is None
    for name in BUFFERS:
        assert state[name].data_ptr() == ptrs[name]
        assert not torch.equal(state[name], before[name]), f"{name} was not updated"


def test_opcheck():
    state = sample_inputs(30, 6)
    torch.library.opcheck(torch.ops.sgcvq.ema_update.default, (*state.values(), 0.95, 1e-5))
