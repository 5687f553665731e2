"""SGC-VQGAN model, discriminator, losses and LPIPS (small CPU sizes)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from sgcvq.model import LPIPS, SGCVQGAN, ModelConfig, PatchDiscriminator, VQGANLoss, adaptive_weight, hinge_d_loss
from sgcvq.model.lpips import ENV_VAR

NUM_CLASSES = 5


def small_config(factor: int = 8, num_classes: int | None = NUM_CLASSES, **overrides) -> ModelConfig:
    mult = {8: (1, 2, 2, 2), 16: (1, 1, 2, 2, 2)}[factor]
    cfg = ModelConfig(resolution=32, base_channels=8, channel_mult=mult, embed_dim=12, codebook_size=40,
                      num_classes=num_classes, kmeans_init=False, disc_channels=8, disc_layers=2)
    return dataclasses.replace(cfg, **overrides)


def sample_inputs(batch: int = 2, size: int = 32, num_classes: int = NUM_CLASSES):
    images = torch.rand(batch, 3, size, size) * 2 - 1
    labels = torch.randint(0, num_classes, (batch, size, size))
    labels[0, : size // 4, : size // 4] = 255  # an all-ignore corner
    return images, labels


@pytest.mark.parametrize("factor", [8, 16])
@pytest.mark.parametrize("num_classes", [NUM_CLASSES, None], ids=["sgc", "plain"])
@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "nolabels"])
def test_forward_backward_shapes(factor, num_classes, with_labels):
    model = SGCVQGAN(small_config(factor, num_classes))
    images, labels = sample_inputs()
    out = model(images, labels if with_labels else None)
    h = 32 // factor
    assert model.downsample_factor == factor
    assert out.recon.shape == images.shape and out.recon.dtype == torch.float32
    assert out.indices.shape == (2, h, h) and out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 40
    assert out.quant_loss.dim() == 0 and torch.isfinite(out.quant_loss)
    if with_labels:
        assert out.token_labels.shape == (2, h, h) and out.token_labels.dtype == torch.int64
    else:
        assert out.token_labels is None
    ((out.recon - images).abs().mean() + out.quant_loss).backward()
    for name, module in (("encoder", model.encoder), ("pyramid", model.pyramid), ("decoder", model.decoder)):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), f"no gradient reaches the {name}"


def test_token_labels_are_the_cell_majority():
    model = SGCVQGAN(small_config(8))
    labels = torch.full((1, 32, 32), 255, dtype=torch.int64)  # tokens of 8x8 pixels: a 4x4 grid
    labels[0, :8, :8] = 3
    labels[0, :8, :3] = 1  # 24 pixels of 1 vs 40 of 3: majority 3
    labels[0, :8, 8:16] = 2
    labels[0, :2, 8:16] = 255  # ignore pixels do not vote
    labels[0, 8:16, 0:8] = torch.tensor([0, 4]).repeat(32)[:64].view(8, 8)  # a 32/32 tie: lowest class
    tokens = model.token_labels(labels, (4, 4))
    assert tokens[0, 0, 0] == 3 and tokens[0, 0, 1] == 2 and tokens[0, 1, 0] == 0
    assert tokens[0, 3, 3] == -1  # no labelled pixel


def test_sgc_tokens_use_their_class_group():
    model = SGCVQGAN(small_config(8))
    images, labels = sample_inputs(batch=3)
    out = model(images, labels)
    offsets = model.quantizer.class_offsets
    labelled = out.token_labels >= 0
    cls = out.token_labels[labelled]
    idx = out.indices[labelled]
    assert labelled.any()
    assert ((idx >= offsets[cls]) & (idx < offsets[cls + 1])).all()


def test_encode_matches_eval_forward_and_never_updates_the_codebook():
    model = SGCVQGAN(small_config(8))
    images, labels = sample_inputs()
    model(images, labels)  # one training step moves the codebook away from its start
    before = model.quantizer.codebook.clone()
    indices = model.encode(images, labels)  # model still in training mode
    torch.testing.assert_close(model.quantizer.codebook, before, rtol=0, atol=0)
    assert model.training and model.quantizer.training
    model.eval()
    with torch.no_grad():
        out = model(images, labels)
    assert torch.equal(indices, out.indices)
    torch.testing.assert_close(model.decode_indices(out.indices), out.recon)


def test_pyramid_level_weights_reach_the_quantizer():
    model = SGCVQGAN(small_config(8, level_weights=(1.0, 4.0)))
    assert list(model.quantizer.level_dims) == [6, 6]
    assert list(model.quantizer.level_weights) == [1.0, 4.0]


@pytest.mark.parametrize("change, match", [
    (dict(resolution=40), "resolution=40"),
    (dict(channel_mult=(1,)), "channel_mult"),
    (dict(level_weights=(1.0,)), "level_weights"),
    (dict(num_classes=300), "num_classes"),
])
def test_config_errors_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        SGCVQGAN(small_config(8, **change))


def test_bad_inputs_are_clear_errors():
    model = SGCVQGAN(small_config(8))
    images, labels = sample_inputs()
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(2, 3, 40, 40))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    labels[1, 0, 0] = 7  # class 7 does not exist with 5 classes
    with pytest.raises(ValueError, match=r"outside 0\.\.4.*\[7\]"):
        model(images, labels)
    with pytest.raises(ValueError, match="do not match images"):
        model(images, labels[:, :16])


@pytest.mark.parametrize("layers, size, patches", [(2, 32, 6), (3, 64, 6), (3, 32, 2)])
def test_discriminator_shapes(layers, size, patches):
    disc = PatchDiscriminator(small_config(8, disc_layers=layers))
    logits = disc(torch.rand(3, 3, size, size) * 2 - 1)
    assert logits.shape == (3, 1, patches, patches)


def test_hinge_d_loss_value():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    expected = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 1.5) / 3)
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(expected))


def test_adaptive_weight_is_the_grad_norm_ratio():
    model = SGCVQGAN(small_config(8))
    disc = PatchDiscriminator(model.cfg)
    images, labels = sample_inputs()
    out = model(images, labels)
    nll = (out.recon - images).abs().mean()
    g_loss = -disc(out.recon).mean()
    weight = adaptive_weight(nll, g_loss, model.last_layer, disc_weight=0.5)
    g_nll = torch.autograd.grad(nll, model.last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, model.last_layer, retain_graph=True)[0]
    expected = 0.5 * g_nll.norm() / (g_gan.norm() + 1e-4)
    assert torch.isfinite(weight) and weight > 0
    torch.testing.assert_close(weight, expected)
    with torch.no_grad():  # no graph: no weight, no crash
        out = model(images)
        assert adaptive_weight((out.recon - images).abs().mean(), -disc(out.recon).mean(), model.last_layer, 0.5) == 0


def test_generator_and_discriminator_losses_around_disc_start():
    model = SGCVQGAN(small_config(8))
    disc = PatchDiscriminator(model.cfg)
    loss = VQGANLoss(disc_start=10, disc_weight=0.5)
    images, labels = sample_inputs()
    out = model(images, labels)
    total, logs = loss.generator_loss(images, out, model.last_layer, 9, disc)
    assert logs["disc_factor"] == 0 and logs["d_weight"] == 0
    torch.testing.assert_close(total, logs["l1"] + out.quant_loss.detach())
    total, logs = loss.generator_loss(images, out, model.last_layer, 10, disc)
    assert logs["disc_factor"] == 1 and torch.isfinite(logs["d_weight"]) and logs["d_weight"] > 0
    expected = logs["l1"] + logs["d_weight"] * logs["g"] + logs["quant"]
    torch.testing.assert_close(total.detach(), expected)
    total.backward()
    assert torch.isfinite(model.last_layer.grad).all()
    d_loss, d_logs = loss.discriminator_loss(images, out.recon.detach(), disc, 10)
    assert d_loss.requires_grad and torch.isfinite(d_loss) and set(d_logs) == {"d", "logits_real", "logits_fake"}
    d_before, _ = loss.discriminator_loss(images, out.recon.detach(), disc, 9)
    assert d_before == 0


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------
def test_lpips_missing_weights_says_how_to_supply_them(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        VQGANLoss(perceptual_weight=1.0)
    message = str(err.value)
    for needed in ("lpips_weights=PATH", ENV_VAR, "LPIPS(net='vgg')", ".safetensors", "nothing is downloaded",
                   "perceptual_weight=0"):
        assert needed in message, needed
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VQGANLoss(perceptual_weight=1.0, lpips_weights=str(missing))
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VQGANLoss(perceptual_weight=1.0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read LPIPS weights.*garbage.pth"):
        LPIPS.from_file(garbage)
    VQGANLoss(perceptual_weight=0.0)  # off: no weights needed


def _random_lpips_state() -> dict:
    net = LPIPS()
    state = {k: torch.randn_like(v) * 0.05 for k, v in net.state_dict().items()}
    for i in range(5):  # released heads are non-negative
        state[f"lin{i}.model.1.weight"] = state[f"lin{i}.model.1.weight"].abs()
    return state


def test_lpips_runs_from_a_saved_file(tmp_path, monkeypatch):
    state = _random_lpips_state()
    # The lpips package's state dict also holds lins.* copies and the scaling buffers: ignored.
    lpips_style = dict(state, **{f"lins.{i}.model.1.weight": state[f"lin{i}.model.1.weight"] for i in range(5)})
    lpips_style["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(lpips_style, tmp_path / "lpips_vgg.pth")
    save_file(state, str(tmp_path / "lpips_vgg.safetensors"))
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    from_pth = LPIPS.from_file(tmp_path / "lpips_vgg.pth")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "lpips_vgg.safetensors"))
    from_st = LPIPS.from_file()
    for name, value in state.items():
        torch.testing.assert_close(from_pth.state_dict()[name], value)
    d = from_pth(a, b)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(from_st(a, b), d)
    torch.testing.assert_close(from_pth(a, a), torch.zeros(2), atol=1e-6, rtol=0)
    a.requires_grad_(True)
    from_pth(a, b).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in from_pth.parameters())
    from_pth.train()
    assert not from_pth.training  # frozen metric network: dropout stays off


def test_lpips_incomplete_weights_are_rejected(tmp_path):
    state = _random_lpips_state()
    del state["lin3.model.1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lack 1 key.*lin3"):
        LPIPS.from_file(tmp_path / "partial.pth")


def test_perceptual_loss_enters_the_generator_loss(tmp_path):
    torch.save(_random_lpips_state(), tmp_path / "w.pth")
    model = SGCVQGAN(small_config(8))
    images, labels = sample_inputs()
    out = model(images, labels)
    loss = VQGANLoss(disc_start=10**9, perceptual_weight=0.7, lpips_weights=str(tmp_path / "w.pth"))
    total, logs = loss.generator_loss(images, out, model.last_layer, 0, PatchDiscriminator(model.cfg))
    assert logs["lpips"] > 0
    torch.testing.assert_close(logs["nll"], logs["l1"] + 0.7 * logs["lpips"])
