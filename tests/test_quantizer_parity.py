"""With guidance, k-means and re-seeding off, FastSemanticQuantizer's EMA VQ is exactly the standard
one (DESIGN.md §1.6): from the same start state and inputs it tracks vector-quantize-pytorch's
VectorQuantize step by step."""
import pytest
import torch

from sgcvq import FastSemanticQuantizer


def clustered_stream(codebook: torch.Tensor, steps: int, batch: int, n: int, noise: float):
    """Tokens near random codes: assignments are far from ties, so both searches agree exactly."""
    K, D = codebook.shape
    for _ in range(steps):
        yield codebook[torch.randint(0, K, (batch, n))] + noise * torch.randn(batch, n, D)


@pytest.mark.parametrize("K,D,decay", [(37, 8, 0.9), (128, 33, 0.99)])
def test_ema_matches_vector_quantize_pytorch(K, D, decay):
    from peers import require

    vqp = require("vector_quantize_pytorch", "vector-quantize-pytorch")
    ours = FastSemanticQuantizer(D, K, decay=decay, eps=1e-5, threshold_dead=0, commitment_weight=0.25)
    theirs = vqp.VectorQuantize(
        D, K, decay=decay, eps=1e-5, kmeans_init=False, threshold_ema_dead_code=0, rotation_trick=False,
        commitment_weight=0.25,
    )
    # Identical start state. Their buffers: _codebook.embed [1, K, D], embed_avg [1, K, D],
    # cluster_size [1, K] (ones in 1.32.0, like our N = 1 start).
    start = torch.randn(K, D) * 3
    ours.codebook.copy_(start)
    ours.embed_sum.copy_(start)
    ours.cluster_size.fill_(1.0)
    theirs._codebook.embed.copy_(start[None])
    theirs._codebook.embed_avg.copy_(start[None])
    theirs._codebook.cluster_size.fill_(1.0)
    ours.train()
    theirs.train()

    for x in clustered_stream(start, steps=6, batch=3, n=97, noise=0.3):
        q_ours, idx_ours, loss_ours = ours(x)
        q_theirs, idx_theirs, loss_theirs = theirs(x)
        assert torch.equal(idx_ours, idx_theirs)
        torch.testing.assert_close(q_ours, q_theirs, rtol=0, atol=1e-5)
        torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.cluster_size, theirs._codebook.cluster_size[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.embed_sum, theirs._codebook.embed_avg[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.codebook, theirs._codebook.embed[0], rtol=0, atol=1e-5)
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
    """Both sit on the same ops: the drop-in with the peer's EMA (no rotation trick, no expiry) and
    FastSemanticQuantizer with the same decay, start state and inputs take the same steps."""
    from sgcvq.compat import VectorQuantize

    K, D = 41, 12
    start = torch.randn(K, D) * 2
    ours = FastSemanticQuantizer(D, K, decay=0.8, threshold_dead=0, commitment_weight=1.0)
    drop_in = VectorQuantize(D, K, rotation_trick=False)
    ours.codebook.copy_(start)
    ours.embed_sum.copy_(start)
    drop_in.codebook = start
    drop_in._codebook.embed_avg.copy_(start[None])
    for x in clustered_stream(start, steps=4, batch=2, n=61, noise=0.3):
        q1, i1, l1 = ours.train()(x)
        q2, i2, l2 = drop_in.train()(x)
        assert torch.equal(i1, i2)
        torch.testing.assert_close(q1, q2, rtol=0, atol=1e-5)
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.codebook, drop_in.codebook, rtol=0, atol=1e-6)
