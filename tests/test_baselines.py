"""The baseline quantizers (sgcvq/model/quantizers.py): each one's defining behaviour.

VQGAN: the codebook is a Parameter learned by gradient, nothing else moves it (no EMA, no
re-seeding), taming's init. CVQ: codebook by gradient plus anchor re-initialisation of unused
codes towards the batch features closest to them. And the model builds and trains with each kind.
"""
import math

import pytest
import torch

from sgcvq.model import SGCVQGAN, ModelConfig
from sgcvq.model.quantizers import ClusteredVQ, TamingVQ, build_quantizer, resolve_quantizer_kind

pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens(B=3, h=5, w=7, D=6):
    return torch.randn(B, h, w, D, requires_grad=True)


# ---------------------------------------------------------------------------------------------
# VQGAN (taming)
# ---------------------------------------------------------------------------------------------
def test_vqgan_codebook_gets_gradients_and_nothing_else_moves_it():
    vq = TamingVQ(6, 17, beta=0.25).train()
    K = 17
    assert torch.all(vq.codebook.abs() <= 1.0 / K)  # taming's uniform(-1/K, 1/K) init
    assert isinstance(vq.codebook, torch.nn.Parameter) and vq.codebook.requires_grad
    names = {n for n, _ in vq.named_buffers()}
    assert not names & {"cluster_size", "embed_sum", "vq.quantizer.codebook"}  # no EMA statistics
    before = vq.codebook.detach().clone()
    x = _tokens()
    q, idx, loss = vq(x)
    torch.testing.assert_close(vq.codebook.detach(), before, rtol=0, atol=0)  # the forward never writes it
    loss.backward()
    g = vq.codebook.grad
    assert g is not None and g.abs().sum() > 0
    # only codes that won a token get a gradient (no re-seeding, no dead-code pull)
    used = torch.zeros(K, dtype=torch.bool)
    used[idx.reshape(-1)] = True
    assert torch.all(g[~used] == 0) and torch.all(g[used].abs().sum(1) > 0)
    # taming's legacy loss: ||sg(q) - x||^2 + beta ||q - sg(x)||^2, both means over elements
    flat = x.detach().reshape(-1, 6)
    ref = (1 + 0.25) * (before[idx.reshape(-1)] - flat).pow(2).mean()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.detach(), before[idx], rtol=0, atol=1e-6)


def test_vqgan_indices_are_the_nearest_codes_and_labels_are_refused():
    vq = TamingVQ(4, 9)
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(9, 4))
    x = torch.randn(2, 3, 4, 4)
    _, idx, _ = vq.eval()(x)
    ref = torch.cdist(x.reshape(-1, 4).double(), vq.codebook.detach().double()).argmin(1)
    assert torch.equal(idx.reshape(-1), ref)
    with pytest.raises(ValueError, match="labels"):
        vq(x, labels=torch.zeros(2, 3, 4, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# CVQ-VAE
# ---------------------------------------------------------------------------------------------
def test_cvq_anchor_reinit_moves_unused_codes_to_their_closest_batch_features():
    K, D = 11, 5
    vq = ClusteredVQ(D, K, beta=0.25, decay=0.99).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(K, D) * 3)
    before = vq.codebook.detach().clone()
    # every token sits next to code 0: codes 1..K-1 win nothing
    x = before[0] + 0.01 * torch.randn(64, D)
    _, idx, _ = vq(x.view(4, 16, D))
    assert torch.all(idx == 0)
    after = vq.codebook.detach()
    closest = torch.cdist(before.double(), x.double()).argmin(1)  # the anchor of each code
    alpha = math.exp(-1e-3)  # an unused code: embed_prob 0
    expected = before[1:] * (1 - alpha) + x[closest[1:]] * alpha
    torch.testing.assert_close(after[1:], expected, rtol=1e-5, atol=1e-5)
    # the used code (all 64 tokens: p = 0.01) keeps its place: alpha = exp(-p K 10 / 0.01) ~ 0
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(vq.embed_prob, torch.cat([torch.tensor([0.01]), torch.zeros(K - 1)]))
    assert int(vq.codes_reinit) == K - 1
    # eval mode changes nothing
    vq.eval()(x.view(4, 16, D))
    torch.testing.assert_close(vq.codebook.detach(), after, rtol=0, atol=0)


def test_cvq_codebook_learns_by_gradient_with_cvq_loss():
    K, D = 7, 3
    vq = ClusteredVQ(D, K, beta=0.25).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(K, D))
    x = torch.randn(2, 9, D, requires_grad=True)
    q, idx, loss = vq(x)
    e = vq.codebook.detach()[idx.reshape(-1)]
    flat = x.detach().reshape(-1, D)
    ref = 0.25 * (e - flat).pow(2).mean() + (e - flat).pow(2).mean()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0
    # encoder side: straight-through identity plus the beta commitment term
    torch.testing.assert_close(x.grad.reshape(-1, D), 2 * 0.25 * (flat - e) / flat.numel(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# The model with each kind
# ---------------------------------------------------------------------------------------------
def _cfg(**kw):
    return ModelConfig(resolution=16, base_channels=8, channel_mult=(1, 2), embed_dim=6, codebook_size=18,
                       kmeans_iters=1, **kw)


@pytest.mark.parametrize("kind", ["ema", "vqgan", "cvq"])
def test_model_trains_a_step_with_each_baseline(kind):
    model = SGCVQGAN(_cfg(num_classes=None, quantizer=kind)).train()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(images)
    assert out.indices.shape == (2, 8, 8) and out.indices.max() < 18
    (out.recon.abs().mean() + out.quant_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    learned_by_gradient = kind != "ema"
    assert (getattr(model.quantizer.codebook, "grad", None) is not None) == learned_by_gradient
    assert 0 < model.quantizer.metrics()["active_fraction"] <= 1
    assert model.decode_indices(out.indices).shape == images.shape


def test_quantizer_kind_is_checked_against_num_classes():
    assert resolve_quantizer_kind("auto", 9) == "sgc" and resolve_quantizer_kind("auto", None) == "ema"
    with pytest.raises(ValueError, match="num_classes=null"):
        _cfg(num_classes=9, quantizer="vqgan").validate()
    with pytest.raises(ValueError, match="needs model.num_classes"):
        _cfg(num_classes=None, quantizer="sgc").validate()
    with pytest.raises(ValueError, match="ModelConfig.quantizer='vq'"):
        _cfg(num_classes=None, quantizer="vq").validate()
    assert isinstance(build_quantizer(_cfg(num_classes=None, quantizer="cvq"), (3, 3)), ClusteredVQ)


@pytest.mark.parametrize("kind", ["vqgan", "cvq"])
def test_baseline_state_dict_round_trips(kind):
    a = SGCVQGAN(_cfg(num_classes=None, quantizer=kind)).train()
    a(torch.rand(2, 3, 16, 16) * 2 - 1)
    b = SGCVQGAN(_cfg(num_classes=None, quantizer=kind))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.quantizer.codebook, a.quantizer.codebook, rtol=0, atol=0)
    assert b.quantizer.metrics() == a.quantizer.metrics()
