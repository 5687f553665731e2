"""TamingVectorQuantizer: taming-transformers' VectorQuantizer interface, inside a small VQGAN."""
import pytest
import torch
from torch import nn

from sgcvq.compat import TamingVectorQuantizer


def taming_vector_quantizer_forward(z, embedding_weight):
    """taming/modules/vqvae/quantize.py VectorQuantizer.forward's assignment, shapes and order
    (z [B, C, H, W] -> z_q [B, C, H, W], indices [B*H*W, 1]); written out here as the contract."""
    zc = z.permute(0, 2, 3, 1).contiguous()
    flat = zc.view(-1, embedding_weight.shape[1])
    d = (flat ** 2).sum(1, keepdim=True) + (embedding_weight ** 2).sum(1) - 2 * flat @ embedding_weight.t()
    idx = torch.argmin(d, dim=1).unsqueeze(1)
    z_q = embedding_weight[idx[:, 0]].view(zc.shape).permute(0, 3, 1, 2).contiguous()
    return z_q, idx


class TinyVQGAN(nn.Module):
    """VQModel's layout: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder."""

    def __init__(self, n_embed=64, embed_dim=16, **quantizer_kwargs):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.SiLU(), nn.Conv2d(32, 32, 4, 2, 1))
        self.quant_conv = nn.Conv2d(32, embed_dim, 1)
        self.quantize = TamingVectorQuantizer(n_embed, embed_dim, beta=0.25, **quantizer_kwargs)
        self.post_quant_conv = nn.Conv2d(embed_dim, 32, 1)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(32, 3, 4, 2, 1))

    def encode(self, x, labels=None):  # as in taming's VQModel.encode
        h = self.quant_conv(self.encoder(x))
        quant, emb_loss, info = self.quantize(h, labels)
        return quant, emb_loss, info

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x, labels=None):
        quant, diff, _ = self.encode(x, labels)
        return self.decode(quant), diff


def test_taming_shapes_and_assignment_match():
    vq = TamingVectorQuantizer(37, 8, beta=0.25).eval()
    z = torch.randn(3, 8, 5, 6)
    z_q, loss, (perplexity, min_encodings, indices) = vq(z)
    ref_zq, ref_idx = taming_vector_quantizer_forward(z, vq.quantizer.codebook)
    assert z_q.shape == (3, 8, 5, 6) and z_q.is_contiguous()
    assert indices.shape == (3 * 5 * 6, 1) and indices.dtype == torch.int64
    assert min_encodings is None
    assert perplexity.dim() == 0 and 1.0 <= float(perplexity) <= 37.0
    assert torch.equal(indices, ref_idx)
    torch.testing.assert_close(z_q, ref_zq)
    torch.testing.assert_close(loss, 0.25 * ((z - ref_zq) ** 2).mean())
    # get_codebook_entry as the transformer stage calls it: flat indices and (B, H, W, C)
    torch.testing.assert_close(vq.get_codebook_entry(indices.reshape(-1), shape=(3, 5, 6, 8)), z_q)
    assert vq.get_codebook_entry(indices, shape=None).shape == (90, 8)
    # perplexity as taming computes it from the one-hot encodings
    onehot = torch.nn.functional.one_hot(indices[:, 0], 37).float()
    e_mean = onehot.mean(0)
    torch.testing.assert_close(perplexity, torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10))))


@pytest.mark.parametrize("semantic", [False, True])
def test_runs_inside_a_vqgan_with_backward(semantic):
    kwargs = dict(num_classes=4) if semantic else {}
    model = TinyVQGAN(**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # the quantizer has buffers, no parameters
    x = torch.randn(2, 3, 16, 16)
    labels = torch.randint(0, 4, (2, 16, 16)) if semantic else None  # pixel maps, pooled 4x4
    codebook_before = model.quantize.quantizer.codebook.clone()
    for _ in range(2):
        opt.zero_grad()
        xrec, qloss = model(x, labels)
        loss = (xrec - x).abs().mean() + qloss
        loss.backward()
        # gradients reach the encoder through the straight-through estimator
        for name, p in model.encoder.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    assert not torch.equal(model.quantize.quantizer.codebook, codebook_before)  # EMA learned
    quant, _, (_, _, indices) = model.eval().encode(x, labels)
    assert indices.shape == (2 * 4 * 4, 1)
    torch.testing.assert_close(model.quantize.get_codebook_entry(indices.view(-1), (2, 4, 4, 16)), quant)
    if semantic:
        pooled = model.quantize.quantizer
        off = pooled.class_offsets
        from sgcvq.semantic import pool_labels

        tok = pool_labels(labels, (4, 4), 4).reshape(-1)
        idx = indices[:, 0]
        assert ((idx >= off[tok]) & (idx < off[tok + 1])).all()


def test_bad_input():
    vq = TamingVectorQuantizer(8, 4, beta=0.25)
    with pytest.raises(ValueError, match=r"z must be \[B, C, H, W\]"):
        vq(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="D = dim = 4"):
        vq(torch.randn(2, 3, 5, 5))
