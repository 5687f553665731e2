"""The group loss (sgcvq/model/semantic_loss.py) against a dense reference, and in the model."""
import pytest
import torch
import torch.nn.functional as F

from sgcvq.model import SGCVQGAN, ModelConfig
from sgcvq.model.semantic_loss import group_distances, group_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(x, labels, codebook, offsets, tau):
    """Dense float64: all N x K distances, per-group minimum, scale-normalised cross-entropy."""
    d = torch.cdist(x.double(), codebook.double()).pow(2)
    off = offsets.tolist()
    g = torch.stack([d[:, off[c]:off[c + 1]].min(1).values for c in range(len(off) - 1)], 1)
    keep = labels >= 0
    g, lab = g[keep], labels[keep]
    s = g.gather(1, lab[:, None]).mean().detach()
    return F.cross_entropy(-g / (tau * s), lab)


def _assert_matches_reference(N, D, sizes, ignore_every, loss_kw, reference):
    """group_loss(**loss_kw) on random groups against reference(x64, labels, codebook, offsets) in
    float64, value and gradient; every ignore_every-th token has the ignore label (when N > 1).
    Returns x (with its gradient) and the labels."""
    K, C = sum(sizes), len(sizes)
    offsets = torch.tensor([0] + torch.tensor(sizes).cumsum(0).tolist())
    codebook = torch.randn(K, D)
    labels = torch.randint(0, C, (N,))
    if N > 1:
        labels[::ignore_every] = -1  # ignore tokens take no part
    x = torch.randn(N, D, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    loss = group_loss(x, labels, codebook, offsets, C, **loss_kw)
    ref = reference(x64, labels, codebook, offsets)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-3, atol=1e-6)
    return x, labels


@pytest.mark.parametrize("N,D,sizes,tau", [(37, 5, [3, 7, 1, 9], 1.0), (64, 8, [5, 5, 6], 0.3), (1, 3, [2, 2], 2.0)])
def test_group_loss_matches_a_dense_reference_in_value_and_gradient(N, D, sizes, tau):
    x, labels = _assert_matches_reference(N, D, sizes, 5, {"temperature": tau},
                                          lambda *a: _reference(*a, tau))
    assert torch.all(x.grad[labels < 0] == 0)


def test_group_distances_are_the_per_group_minimum_and_do_not_reach_the_codebook():
    codebook = torch.randn(10, 4, requires_grad=True)
    offsets = torch.tensor([0, 4, 10])
    x = torch.randn(6, 4)
    g = group_distances(x, codebook, offsets, 2)
    d = torch.cdist(x, codebook.detach()).pow(2)
    torch.testing.assert_close(g, torch.stack([d[:, :4].min(1).values, d[:, 4:].min(1).values], 1),
                               rtol=1e-5, atol=1e-5)
    assert not g.requires_grad  # x needs no grad here and the codebook is detached


def test_group_loss_subsets_tokens_and_handles_no_labelled_token():
    codebook, offsets = torch.randn(6, 3), torch.tensor([0, 3, 6])
    x = torch.randn(50, 3, requires_grad=True)
    labels = torch.randint(0, 2, (50,))
    group_loss(x, labels, codebook, offsets, 2, max_tokens=7).backward()
    assert int((x.grad.abs().sum(1) > 0).sum()) == 7
    zero = group_loss(x, torch.full((50,), -1), codebook, offsets, 2)
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="temperature"):
        group_loss(x, labels, codebook, offsets, 2, temperature=0.0)


def _model(**kw):
    cfg = ModelConfig(resolution=16, base_channels=8, channel_mult=(1, 2), embed_dim=6, codebook_size=18,
                      num_classes=3, kmeans_iters=1, **kw)
    torch.manual_seed(0)
    return SGCVQGAN(cfg).train()


def test_group_loss_reaches_the_encoder_in_the_model():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.randint(0, 3, (2, 16, 16))
    grads, losses = [], []
    for weight in (0.0, 1.0):
        model = _model(group_loss_weight=weight)
        out = model(images, labels=labels)
        out.quant_loss.backward()
        grads.append(model.encoder.conv_in.weight.grad.clone())
        losses.append(out.quant_loss.item())
    assert losses[1] > losses[0]  # the group loss adds a positive term
    assert not torch.allclose(grads[0], grads[1])  # and a gradient that reaches the first encoder layer
    # evaluation: the loss is a training signal only
    model = _model(group_loss_weight=1.0).eval()
    ref = _model(group_loss_weight=0.0).eval()
    with torch.no_grad():
        assert model(images, labels=labels).quant_loss.item() == pytest.approx(ref(images, labels=labels).quant_loss.item())


def test_group_loss_warmup_ramps_the_weight():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.randint(0, 3, (2, 16, 16))
    model = _model(group_loss_weight=1.0, group_loss_warmup=4)
    tokens = model.encode_features(images).permute(0, 2, 3, 1)
    tok_labels = model.token_labels(labels, tuple(tokens.shape[1:3]))
    model(images, labels=labels)  # one training step: steps = 1
    quarter = model._group_loss(tokens, tok_labels).item()
    model.quantizer.steps.fill_(4)
    full = model._group_loss(tokens, tok_labels).item()
    assert full > 0 and quarter == pytest.approx(full / 4, rel=1e-5)


def test_group_loss_on_the_coarse_level_leaves_the_fine_channels_without_gradient():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.randint(0, 3, (2, 16, 16))
    grads = {}
    for levels in ("all", "coarse"):
        model = _model(group_loss_weight=1.0, group_loss_levels=levels)
        model(images, labels=labels)  # k-means start
        tokens = model.encode_features(images).permute(0, 2, 3, 1).detach().requires_grad_(True)
        tok_labels = model.token_labels(labels, tuple(tokens.shape[1:3]))
        loss = model._group_loss(tokens, tok_labels)
        loss.backward()
        grads[levels] = (loss.item(), tokens.grad.reshape(-1, 6))
    fine = model.level_dims[0]
    assert grads["coarse"][0] == pytest.approx(grads["all"][0], rel=1e-5)  # same distances, same value
    assert torch.all(grads["coarse"][1][:, :fine] == 0)
    torch.testing.assert_close(grads["coarse"][1][:, fine:], grads["all"][1][:, fine:])
    assert grads["all"][1][:, :fine].abs().sum() > 0


def _hinge_reference(x, labels, codebook, offsets, margin):
    d = torch.cdist(x.double(), codebook.double()).pow(2)
    off = offsets.tolist()
    g = torch.stack([d[:, off[c]:off[c + 1]].min(1).values for c in range(len(off) - 1)], 1)
    keep = labels >= 0
    g, lab = g[keep], labels[keep]
    own = g.gather(1, lab[:, None]).squeeze(1)
    other = g.masked_fill(F.one_hot(lab, g.shape[1]).bool(), float("inf")).min(1).values
    s = own.mean().detach()
    return torch.relu(own - other + margin * s).mean() / s


@pytest.mark.parametrize("N,D,sizes,margin", [(41, 6, [3, 7, 1, 9], 0.5), (64, 8, [5, 5, 6], 0.0), (9, 3, [2, 2], 2.0)])
def test_hinge_group_loss_matches_a_dense_reference_in_value_and_gradient(N, D, sizes, margin):
    _assert_matches_reference(N, D, sizes, 4, {"margin": margin}, lambda *a: _hinge_reference(*a, margin))


def test_hinge_group_loss_leaves_tokens_already_in_their_group_alone():
    # two groups far apart; tokens sit on their own group's codes: no violation, no gradient
    codebook = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    offsets = torch.tensor([0, 2, 4])
    x = torch.tensor([[0.05, 0.01], [10.05, -0.01], [0.02, 0.03]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    loss = group_loss(x, labels, codebook, offsets, 2, margin=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)
    # a token nearer to the other group is pushed
    x.grad = None
    group_loss(x, torch.tensor([1, 1, 0]), codebook, offsets, 2, margin=1.0).backward()
    assert x.grad[0].abs().sum() > 0 and torch.all(x.grad[2] == 0)
    with pytest.raises(ValueError, match="margin"):
        group_loss(x, labels, codebook, offsets, 2, margin=-0.1)


def test_group_loss_weight_schedule_warms_up_and_decays():
    from sgcvq.model.semantic_loss import group_loss_weight_at

    assert group_loss_weight_at(7, 0.5) == 0.5
    assert group_loss_weight_at(2, 0.5, warmup=4) == pytest.approx(0.25)
    # falls linearly from step 10 to 0.1 at step 20, then stays
    w = [group_loss_weight_at(s, 0.5, decay_start=10, decay_steps=10, final_weight=0.1) for s in (9, 10, 15, 20, 99)]
    assert w == pytest.approx([0.5, 0.5, 0.3, 0.1, 0.1])
    assert group_loss_weight_at(10, 0.5, decay_start=10) == 0.0  # decay_steps 0: at once, to final_weight 0


def test_group_loss_decay_in_the_model_reaches_zero():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.randint(0, 3, (2, 16, 16))
    model = _model(group_loss_weight=1.0, group_loss_decay_start=2, group_loss_decay_steps=2)
    tokens = model.encode_features(images).permute(0, 2, 3, 1)
    tok_labels = model.token_labels(labels, tuple(tokens.shape[1:3]))
    model(images, labels=labels)  # steps = 1: full weight
    full = model._group_loss(tokens, tok_labels).item()
    model.quantizer.steps.fill_(3)
    half = model._group_loss(tokens, tok_labels).item()
    model.quantizer.steps.fill_(4)
    assert full > 0 and half == pytest.approx(full / 2, rel=1e-4)
    assert model._group_loss(tokens, tok_labels).item() == 0.0
    with pytest.raises(ValueError, match="group_loss_margin"):
        ModelConfig(group_loss_margin=-1.0).validate()


def test_every_semantic_sweep_variant_is_a_valid_demo_config():
    """benchmarks/semantic_sweep.py: each variant's overrides apply to the demo config and validate."""
    import importlib.util
    from pathlib import Path

    from sgcvq.config import apply_overrides, demo_config
    from sgcvq.data import CLASS_NAMES

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "semantic_sweep.py"
    spec = importlib.util.spec_from_file_location("semantic_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    for name, (overrides, what) in sweep.VARIANTS.items():
        cfg = apply_overrides(demo_config(len(CLASS_NAMES), 10), overrides)
        cfg.model.validate()
        assert what, name
    coarse = apply_overrides(demo_config(len(CLASS_NAMES), 10), sweep.VARIANTS["hinge_l0.05_m1_coarse"][0])
    assert coarse.model.group_loss_levels == "coarse" and coarse.model.group_loss_margin == 1.0
