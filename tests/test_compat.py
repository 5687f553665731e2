"""A small VQGAN-shaped autoencoder trains with each drop-in swapped in as its quantizer."""
import pytest
import torch
from torch import nn

from sgcvq.compat import TamingVectorQuantizer, VectorQuantize, VectorQuantizer, VectorQuantizer2


class TinyVQGAN(nn.Module):
    """taming's VQModel layout: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder,
    with the quantizer built as taming builds it (`VectorQuantizer(n_embed, embed_dim, beta=0.25,
    remap=..., sane_index_shape=...)`) or any other module with taming's forward."""

    def __init__(self, quantize: nn.Module, embed_dim: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.SiLU(), nn.Conv2d(32, 32, 4, 2, 1))
        self.quant_conv = nn.Conv2d(32, embed_dim, 1)
        self.quantize = quantize
        self.post_quant_conv = nn.Conv2d(embed_dim, 32, 1)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(32, 3, 4, 2, 1))

    def encode(self, x, **kw):  # as taming's VQModel.encode
        h = self.quant_conv(self.encoder(x))
        return self.quantize(h, **kw)

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x, **kw):
        quant, diff, _ = self.encode(x, **kw)
        return self.decode(quant), diff


class ChannelFirstVQ(nn.Module):
    """vector-quantize-pytorch's VectorQuantize behind taming's (z_q, loss, info) interface."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, z, **kw):
        q, idx, loss = self.vq(z, **kw)
        return q, loss, (None, None, idx)


def _quantizers():
    out = {
        "taming_v2_legacy": lambda: VectorQuantizer2(64, 16, beta=0.25),
        "taming_v2": lambda: VectorQuantizer2(64, 16, beta=0.25, legacy=False, sane_index_shape=True),
        "taming_v1": lambda: VectorQuantizer(64, 16, beta=0.25),
        "taming_ema": lambda: VectorQuantizer2(64, 16, beta=0.25, ema=True),
        "taming_semantic": lambda: TamingVectorQuantizer(64, 16, beta=0.25, num_classes=4),
    }
    out.update({
        "vq_ema": lambda: ChannelFirstVQ(VectorQuantize(16, 64, accept_image_fmap=True, dead_code_threshold_ratio=0.1)),
        "vq_learnable": lambda: ChannelFirstVQ(VectorQuantize(16, 64, accept_image_fmap=True, learnable_codebook=True,
                                                              ema_update=False, rotation_trick=False)),
        "vq_heads_proj": lambda: ChannelFirstVQ(VectorQuantize(16, 64, codebook_dim=4, heads=2,
                                                               separate_codebook_per_head=True,
                                                               accept_image_fmap=True, use_cosine_sim=True)),
    })
    return out


QUANTIZERS = _quantizers()


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_vqgan_trains_with_each_swap(kind):
    torch.manual_seed(0)
    model = TinyVQGAN(QUANTIZERS[kind]())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    kw = {"labels": torch.randint(0, 4, (4, 16, 16))} if kind == "taming_semantic" else {}
    params_before = {n: p.detach().clone() for n, p in model.quantize.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.quantize.named_buffers() if b.is_floating_point()}
    losses = []
    for _ in range(30):
        opt.zero_grad()
        xrec, qloss = model(x, **kw)
        rec = (xrec - x).abs().mean()
        (rec + qloss).backward()
        for name, p in model.encoder.named_parameters():  # straight-through reaches the encoder
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(float(rec.detach()))
    assert sum(losses[-5:]) < 0.97 * sum(losses[:5]), losses  # the reconstruction improves
    moved = [n for n, p in model.quantize.named_parameters() if not torch.equal(p, params_before[n])]
    moved += [n for n, b in model.quantize.named_buffers() if n in buffers_before and not torch.equal(b, buffers_before[n])]
    assert moved, "the codebook never changed"
    model.eval()
    with torch.no_grad():
        quant, qloss, (_, _, idx) = model.encode(x, **kw)
    assert quant.shape == (4, 16, 4, 4) and idx.dtype == torch.int64
    if kind.startswith("vq_"):
        assert float(qloss) == 0.0  # vector-quantize-pytorch returns a zero loss in eval
    if kind in ("taming_v2_legacy", "taming_v1", "taming_ema"):
        torch.testing.assert_close(model.quantize.get_codebook_entry(idx.reshape(-1), (4, 4, 4, 16)), quant)
