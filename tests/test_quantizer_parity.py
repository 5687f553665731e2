"""With guidance, k-means and re-seeding off, FastSemanticQuantizer's EMA VQ is exactly the standard
one (docs/method.md): from the same start state and inputs it tracks the reference EMA VQ
(sgcvq.reference.ema_vq_step_reference) step by step."""
import pytest
import torch

from sgcvq import FastSemanticQuantizer
from sgcvq.reference import ema_vq_step_reference


def clustered_stream(codebook: torch.Tensor, steps: int, batch: int, n: int, noise: float):
    """Tokens near random codes: assignments are far from ties, so both searches agree exactly."""
    K, D = codebook.shape
    for _ in range(steps):
        yield codebook[torch.randint(0, K, (batch, n))] + noise * torch.randn(batch, n, D)


@pytest.mark.parametrize("K,D,decay", [(37, 8, 0.9), (128, 33, 0.99)])
def test_ema_matches_the_reference_ema_vq(K, D, decay):
    """FastSemanticQuantizer's EMA is ours to define (the standard EMA VQ with Laplace smoothing,
    vector-quantize-pytorch 1.32's arithmetic): it tracks the float64-search reference step by step."""
    ours = FastSemanticQuantizer(D, K, decay=decay, eps=1e-5, threshold_dead=0, commitment_weight=0.25)
    start = torch.randn(K, D) * 3
    ours.codebook.copy_(start)
    ours.embed_sum.copy_(start)
    ours.cluster_size.fill_(1.0)
    ref_codebook, ref_sum, ref_size = start.clone(), start.clone(), torch.ones(K)
    ours.train()
    for x in clustered_stream(start, steps=6, batch=3, n=97, noise=0.3):
        q_ours, idx_ours, loss_ours = ours(x)
        idx_ref, q_ref, loss_ref = ema_vq_step_reference(x, ref_codebook, ref_size, ref_sum, decay, 1e-5, 0.25)
        assert torch.equal(idx_ours, idx_ref)
        torch.testing.assert_close(q_ours, q_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.cluster_size, ref_size, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.embed_sum, ref_sum, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.codebook, ref_codebook, rtol=0, atol=1e-5)
    # the codebook really moved: the comparison above is not between two frozen states
    assert (ours.codebook - start).abs().max() > 1e-2


@pytest.mark.parametrize("channel_last", [True, False])
def test_get_output_from_indices_is_the_eval_output(channel_last):
    vq = FastSemanticQuantizer(6, 29, threshold_dead=0, channel_last=channel_last).eval()
    x = torch.randn(2, 5, 7, 6) if channel_last else torch.randn(2, 6, 5, 7)
    q, idx, loss = vq(x)
    torch.testing.assert_close(vq.get_output_from_indices(idx), q, rtol=0, atol=0)
    # the eval loss stays the commitment loss (documented: a free validation metric)
    tokens = x if channel_last else x.movedim(1, -1)
    codes = vq.codebook[idx]
    torch.testing.assert_close(loss, 0.25 * (tokens - codes).pow(2).mean(), rtol=1e-5, atol=1e-7)


def test_compat_vector_quantize_and_fast_quantizer_agree():
    """Both sit on the same ops. From the same start state (N = 1, M = E) and inputs they pick the
    same codes and losses; their codebooks differ only by where eps enters the normalisation
    (Laplace smoothing here, vector-quantize-pytorch 1.34.1's (M + eps·E) / (N + eps) in the
    drop-in): O(eps) apart."""
    from sgcvq.compat import VectorQuantize

    K, D = 41, 12
    start = torch.randn(K, D) * 2
    ours = FastSemanticQuantizer(D, K, decay=0.8, threshold_dead=0, commitment_weight=1.0)
    drop_in = VectorQuantize(D, K, rotation_trick=False)
    ours.codebook.copy_(start)
    ours.embed_sum.copy_(start)
    drop_in.codebook = start
    drop_in._codebook.embed_avg.copy_(start[None])
    drop_in._codebook.cluster_size.fill_(1.0)
    for x in clustered_stream(start, steps=4, batch=2, n=61, noise=0.3):
        q1, i1, l1 = ours.train()(x)
        q2, i2, l2 = drop_in.train()(x)
        assert torch.equal(i1, i2)
        torch.testing.assert_close(q1, q2, rtol=0, atol=1e-4)
        torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.codebook, drop_in.codebook, rtol=0, atol=1e-4)
