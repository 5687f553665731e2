"""sgcvq.compat.VectorQuantizer2 / VectorQuantizer against taming-transformers' documented behaviour.

taming-transformers is not installable, so its side is written here from first principles (what
taming/modules/vqvae/quantize.py computes): the argmin over embedding.weight, the legacy and
non-legacy loss formulas, the straight-through output, the info tuple and index shapes, the remap
rules and the state_dict keys.
"""
import numpy as np
import pytest
import torch
from torch import nn

from sgcvq.compat import TamingVectorQuantizer, VectorQuantizer, VectorQuantizer2


def sample_inputs(B=2, C=5, H=3, W=7, K=23, seed=0, spread=1.0):
    """z near random codes (far from ties) and a codebook; fresh random data per case."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(K, C, generator=g) * spread
    pick = torch.randint(0, K, (B, H, W), generator=g)
    z = codebook[pick].permute(0, 3, 1, 2) + 0.2 * torch.randn(B, C, H, W, generator=g)
    return z.contiguous(), codebook


class TamingReference(nn.Module):
    """taming's VectorQuantizer2 forward, from its formulas: plain torch, dense distances."""

    def __init__(self, weight, beta, legacy):
        super().__init__()
        self.embedding = nn.Embedding(*weight.shape)
        self.embedding.weight.data.copy_(weight)
        self.beta, self.legacy = beta, legacy

    def forward(self, z):
        zc = z.permute(0, 2, 3, 1).contiguous()
        flat = zc.view(-1, zc.shape[-1])
        e = self.embedding.weight
        d = (flat ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * flat @ e.t()
        idx = d.argmin(1)
        zq = self.embedding(idx).view(zc.shape)
        commit = ((zq.detach() - zc) ** 2).mean()
        codebook = ((zq - zc.detach()) ** 2).mean()
        loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
        zq = zc + (zq - zc).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), loss, idx


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("B,C,H,W,K", [(2, 5, 3, 7, 23), (1, 16, 4, 4, 64), (3, 3, 1, 5, 1)])
def test_forward_matches_taming_over_training_steps(legacy, B, C, H, W, K):
    z0, codebook = sample_inputs(B, C, H, W, K, seed=K + C)
    ours = VectorQuantizer2(K, C, beta=0.25, legacy=legacy)
    ours.embedding.weight.data.copy_(codebook)
    ref = TamingReference(codebook, 0.25, legacy)
    proj_ours, proj_ref = nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 1)
    proj_ref.load_state_dict(proj_ours.state_dict())
    opt_ours = torch.optim.SGD([*ours.parameters(), *proj_ours.parameters()], lr=0.5)
    opt_ref = torch.optim.SGD([*ref.parameters(), *proj_ref.parameters()], lr=0.5)
    for step in range(4):
        z = z0 + 0.05 * step
        zq, loss, (perplexity, min_encodings, idx) = ours(proj_ours(z))
        zq_r, loss_r, idx_r = ref(proj_ref(z))
        assert perplexity is None and min_encodings is None
        assert idx.shape == (B * H * W,) and idx.dtype == torch.int64
        assert torch.equal(idx, idx_r)
        torch.testing.assert_close(zq, zq_r, rtol=1e-5, atol=1e-5)
        assert zq.shape == z.shape and zq.is_contiguous()
        torch.testing.assert_close(loss, loss_r, rtol=1e-5, atol=1e-7)
        for opt in (opt_ours, opt_ref):
            opt.zero_grad()
        ((zq * torch.linspace(-1, 1, C)[:, None, None]).sum() + loss).backward()
        ((zq_r * torch.linspace(-1, 1, C)[:, None, None]).sum() + loss_r).backward()
        torch.testing.assert_close(ours.embedding.weight.grad, ref.embedding.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(proj_ours.weight.grad, proj_ref.weight.grad, rtol=1e-5, atol=1e-5)
        opt_ours.step()
        opt_ref.step()
    torch.testing.assert_close(ours.embedding.weight, ref.embedding.weight, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours.embedding.weight, codebook)  # the codebook learned by gradient


def test_loss_values_legacy_and_not():
    z, codebook = sample_inputs(seed=3)
    for legacy, factor in ((True, 1.25), (False, 1.25)):
        vq = VectorQuantizer2(23, 5, beta=0.25, legacy=legacy)
        vq.embedding.weight.data.copy_(codebook)
        zq, loss, _ = vq(z)
        torch.testing.assert_close(loss, factor * ((zq - z) ** 2).mean(), rtol=1e-5, atol=1e-7)
    # the split between the two terms shows in the gradients: z gets 1 (legacy) or beta
    for legacy, w_z, w_e in ((True, 1.0, 0.25), (False, 0.25, 1.0)):
        vq = VectorQuantizer2(23, 5, beta=0.25, legacy=legacy)
        vq.embedding.weight.data.copy_(codebook)
        zz = z.clone().requires_grad_()
        zq, loss, (_, _, idx) = vq(zz)
        loss.backward()
        e = codebook[idx].view(2, 3, 7, 5).permute(0, 3, 1, 2)
        torch.testing.assert_close(zz.grad, w_z * 2 * (z - e) / z.numel(), rtol=1e-5, atol=1e-8)
        counts = torch.bincount(idx, minlength=23).float()
        sums = torch.zeros(23, 5).index_add_(0, idx, z.permute(0, 2, 3, 1).reshape(-1, 5))
        torch.testing.assert_close(vq.embedding.weight.grad, w_e * 2 * (counts[:, None] * codebook - sums) / z.numel(),
                                   rtol=1e-5, atol=1e-7)


def test_straight_through_gradient_is_identity():
    z, codebook = sample_inputs(seed=4)
    vq = VectorQuantizer2(23, 5, beta=0.25)
    vq.embedding.weight.data.copy_(codebook)
    zz = z.clone().requires_grad_()
    zq, _, _ = vq(zz)
    g = torch.randn_like(zq)
    zq.backward(g)
    torch.testing.assert_close(zz.grad, g)
    assert vq.embedding.weight.grad is None  # the output carries no gradient into the codebook


def test_init_state_dict_and_sane_index_shape():
    torch.manual_seed(0)
    vq = VectorQuantizer2(50, 6, beta=0.25, sane_index_shape=True)
    assert isinstance(vq.embedding, nn.Embedding)
    assert list(vq.state_dict()) == ["embedding.weight"]
    w = vq.embedding.weight
    assert w.abs().max() <= 1 / 50 and w.std() > 0.25 / 50  # uniform(-1/n_e, 1/n_e)
    z = torch.randn(2, 6, 3, 4)
    _, _, (_, _, idx) = vq(z)
    assert idx.shape == (2, 3, 4)
    # get_codebook_entry as taming's transformer stage calls it
    zq, _, (_, _, flat) = VectorQuantizer2(50, 6, beta=0.25)(z)
    vq2 = VectorQuantizer2(50, 6, beta=0.25)
    vq2.load_state_dict(vq.state_dict(), strict=True)
    zq2, _, (_, _, flat2) = vq2(z)
    torch.testing.assert_close(vq2.get_codebook_entry(flat2, (2, 3, 4, 6)), zq2, rtol=0, atol=1e-6)
    assert vq2.get_codebook_entry(flat2, None).shape == (24, 6)


def test_remap_rules(tmp_path):
    used = np.array([7, 3, 11, 3, 0], dtype=np.int64)  # code 3 twice: the first position wins
    path = tmp_path / "used.npy"
    np.save(path, used)
    torch.manual_seed(1)
    vq = VectorQuantizer2(16, 4, beta=0.25, remap=str(path), unknown_index=2)
    assert vq.re_embed == 5 and sorted(vq.state_dict()) == ["embedding.weight", "used"]
    codes = torch.tensor([[7, 3, 0, 5], [11, 1, 3, 7]])
    expected = torch.tensor([[0, 1, 4, 2], [2, 2, 1, 0]])  # 5 and 1 unknown -> 2
    assert torch.equal(vq.remap_to_used(codes), expected)
    back = vq.unmap_to_all(torch.tensor([[0, 1, 4], [2, 3, 1]]))
    assert torch.equal(back, torch.tensor([[7, 3, 0], [11, 3, 3]]))
    # "extra": unknown codes get position len(used), which unmaps to used[0]
    extra = VectorQuantizer2(16, 4, beta=0.25, remap=str(path), unknown_index="extra")
    assert extra.re_embed == 6 and extra.unknown_index == 5
    assert torch.equal(extra.remap_to_used(torch.tensor([[5, 0]])), torch.tensor([[5, 4]]))
    assert torch.equal(extra.unmap_to_all(torch.tensor([[5, 4]])), torch.tensor([[7, 0]]))
    # "random": draws from the CPU generator in [0, re_embed)
    rnd = VectorQuantizer2(16, 4, beta=0.25, remap=str(path))
    torch.manual_seed(5)
    out = rnd.remap_to_used(torch.tensor([[1, 2, 7, 4, 6]]))
    torch.manual_seed(5)
    draws = torch.randint(0, 5, (4,))
    assert torch.equal(out, torch.tensor([[draws[0], draws[1], 0, draws[2], draws[3]]]))
    # forward: indices [N, 1] as positions in `used`; get_codebook_entry maps them back
    vq.embedding.weight.data.copy_(torch.randn(16, 4) * 3)
    z = vq.embedding.weight.data[torch.tensor([7, 3, 11, 0, 3, 7])].view(2, 1, 3, 4).permute(0, 3, 1, 2)
    zq, _, (_, _, idx) = vq(z.contiguous())
    assert idx.shape == (6, 1)
    assert torch.equal(idx[:, 0], torch.tensor([0, 1, 2, 4, 1, 0]))
    torch.testing.assert_close(vq.get_codebook_entry(idx, (2, 1, 3, 4)), zq)


def test_v1_info_tuple():
    z, codebook = sample_inputs(seed=6)
    vq = VectorQuantizer(23, 5, beta=0.25)
    vq.embedding.weight.data.copy_(codebook)
    zq, loss, (perplexity, min_encodings, idx) = vq(z)
    ref_zq, ref_loss, ref_idx = TamingReference(codebook, 0.25, True)(z)
    assert idx.shape == (42, 1) and torch.equal(idx[:, 0], ref_idx)
    onehot = torch.zeros(42, 23)
    onehot[torch.arange(42), ref_idx] = 1
    assert torch.equal(min_encodings, onehot)
    e_mean = onehot.mean(0)
    torch.testing.assert_close(perplexity, torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10))))
    torch.testing.assert_close(zq, ref_zq, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(vq.get_codebook_entry(idx[:, 0], (2, 3, 7, 5)), zq, rtol=0, atol=1e-6)


def test_taming_checkpoint_loads_in_both_modes():
    z, codebook = sample_inputs(seed=7)
    taming_ckpt = {"quantize.embedding.weight": codebook.clone()}  # what VQModel's state_dict holds
    wrapper = nn.Module()
    wrapper.quantize = VectorQuantizer2(23, 5, beta=0.25)
    missing, unexpected = wrapper.load_state_dict(taming_ckpt, strict=False)
    assert not missing and not unexpected
    assert torch.equal(wrapper.quantize.embedding.weight, codebook)
    # the EMA opt-in: the taming codebook becomes the EMA codebook, nothing left missing
    wrapper.quantize = VectorQuantizer2(23, 5, beta=0.25, ema=True)
    missing, unexpected = wrapper.load_state_dict(taming_ckpt, strict=True)
    assert not missing and not unexpected
    q = wrapper.quantize.quantizer
    assert torch.equal(q.codebook, codebook) and torch.equal(q.embed_sum, codebook)
    assert torch.equal(wrapper.quantize.embedding.weight, codebook)
    _, _, (_, _, idx) = wrapper.quantize.eval()(z)
    assert torch.equal(idx, TamingReference(codebook, 0.25, True)(z)[2])


def test_ema_and_semantic_opt_in():
    z, codebook = sample_inputs(B=2, C=8, H=4, W=4, K=32, seed=8)
    vq = VectorQuantizer2(32, 8, beta=0.25, ema=True, threshold_dead=0)
    vq.quantizer.codebook.copy_(codebook)
    vq.quantizer.embed_sum.copy_(codebook)
    zz = z.clone().requires_grad_()
    zq, loss, (_, _, idx) = vq(zz)
    assert vq.embedding.weight.requires_grad is False and not list(vq.parameters())
    assert idx.shape == (32,)
    # the commitment term with taming's legacy weight 1.0
    torch.testing.assert_close(loss, ((zq.detach() - z) ** 2).mean(), rtol=1e-5, atol=1e-7)
    assert not torch.equal(vq.quantizer.codebook, codebook)  # EMA moved it
    sem = VectorQuantizer2(32, 8, beta=0.25, legacy=False, num_classes=4, sane_index_shape=True)
    labels = torch.randint(0, 4, (2, 4, 4))
    _, loss, (_, _, idx) = sem(z, labels=labels)
    off = sem.quantizer.class_offsets
    assert idx.shape == (2, 4, 4) and ((idx >= off[labels]) & (idx < off[labels + 1])).all()
    # the alias keeps sgcvq 0.1's call working (labels now by keyword)
    alias = TamingVectorQuantizer(32, 8, beta=0.25, num_classes=4)
    _, _, (_, _, idx) = alias(z, labels=labels)
    assert idx.shape == (32,)


def test_bad_arguments_name_themselves(tmp_path):
    vq = VectorQuantizer2(8, 4, beta=0.25)
    with pytest.raises(ValueError, match="temp"):
        vq(torch.randn(1, 4, 2, 2), temp=0.5)
    with pytest.raises(ValueError, match="rescale_logits"):
        vq(torch.randn(1, 4, 2, 2), rescale_logits=True)
    with pytest.raises(ValueError, match="return_logits"):
        vq(torch.randn(1, 4, 2, 2), return_logits=True)
    with pytest.raises(ValueError, match=r"z must be \[B, C, H, W\] with C = e_dim = 4"):
        vq(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="labels"):
        vq(torch.randn(1, 4, 2, 2), labels=torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="decay"):
        VectorQuantizer2(8, 4, 0.25, decay=0.9)
    with pytest.raises(ValueError, match="n_e"):
        VectorQuantizer2(0, 4, 0.25)
    path = tmp_path / "used.npy"
    np.save(path, np.array([1, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="unknown_index"):
        VectorQuantizer2(8, 4, 0.25, remap=str(path), unknown_index="bogus")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(dtype):
    """z in another dtype (codebook float32, as under autocast): the same indices as the float32
    reference on the same values; z_q, its gradient and the loss in z's dtype."""
    z, codebook = sample_inputs(seed=9)
    z = z.to(dtype)
    vq = VectorQuantizer2(23, 5, beta=0.25)
    vq.embedding.weight.data.copy_(codebook)
    zz = z.clone().requires_grad_()
    zq, loss, (_, _, idx) = vq(zz)
    _, ref_loss, ref_idx = TamingReference(codebook, 0.25, True)(z.float())
    assert torch.equal(idx, ref_idx)
    assert zq.dtype == dtype and loss.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float64 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(zq.float(), codebook[idx].view(2, 3, 7, 5).permute(0, 3, 1, 2), **tol)
    torch.testing.assert_close(loss.float(), ref_loss, **tol)
    loss.backward()
    assert zz.grad.dtype == dtype and vq.embedding.weight.grad.dtype == torch.float32
