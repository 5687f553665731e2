"""sgcvq.compat.VectorQuantize against the real vector-quantize-pytorch VectorQuantize (the pinned 1.34.1).

Same seed, same constructor arguments, same inputs: the same initial state, then over several
training steps (with an optimizer where the peer has parameters) the same indices, quantized
outputs, losses and loss breakdowns, input gradients and state (codebook, EMA statistics,
projections) to 1e-5. Plus the state_dict both ways, the methods, and every unsupported option.
"""
import inspect
import warnings

import pytest
import torch

from sgcvq.compat import VectorQuantize
from sgcvq.compat.vector_quantize import _UNSUPPORTED, PEER_RELEASE

from peers import require  # noqa: E402

vqp = require("vector_quantize_pytorch", "vector-quantize-pytorch")


def test_mirrors_the_pinned_release():
    import importlib.metadata

    assert importlib.metadata.version("vector-quantize-pytorch") == PEER_RELEASE

L = (37, 20)  # lens of the two sequences in the masked cases
CASES = {
    "defaults": (dict(dim=16, codebook_size=32), (2, 37, 16), {}),
    "straight_through": (dict(dim=16, codebook_size=32, rotation_trick=False), (2, 37, 16), {}),
    "codebook_dim": (dict(dim=16, codebook_size=32, codebook_dim=8), (2, 37, 16), {}),
    "codebook_dim_layernorm": (dict(dim=16, codebook_size=32, codebook_dim=8, layernorm_after_project_in=True),
                               (2, 37, 16), {}),
    "heads_shared": (dict(dim=16, codebook_size=32, heads=2), (2, 37, 16), {}),
    "heads_separate": (dict(dim=16, codebook_size=32, heads=2, separate_codebook_per_head=True), (2, 37, 16), {}),
    "heads_separate_proj": (dict(dim=16, codebook_size=32, heads=2, codebook_dim=4, separate_codebook_per_head=True),
                            (2, 37, 16), {}),
    "cosine": (dict(dim=16, codebook_size=32, use_cosine_sim=True), (2, 37, 16), {}),
    "kmeans": (dict(dim=16, codebook_size=32, kmeans_init=True), (2, 37, 16), {}),
    "kmeans_cosine_heads": (dict(dim=16, codebook_size=32, kmeans_init=True, use_cosine_sim=True, heads=2,
                                 separate_codebook_per_head=True), (2, 37, 16), {}),
    "dead_codes": (dict(dim=16, codebook_size=32, dead_code_threshold_ratio=0.5), (2, 37, 16), {}),
    "dead_codes_reset_ratio": (dict(dim=16, codebook_size=32, dead_code_threshold_ratio=0.5,
                                    reset_cluster_size_ratio=0.25), (2, 37, 16), {}),
    "dead_codes_cosine": (dict(dim=16, codebook_size=32, dead_code_threshold_ratio=0.5, use_cosine_sim=True),
                          (2, 37, 16), {}),
    "deprecated_threshold_count": (dict(dim=16, codebook_size=32, threshold_ema_dead_code=2), (2, 37, 16), {}),
    "deprecated_threshold_ratio": (dict(dim=16, codebook_size=32, threshold_ema_dead_code=0.4), (2, 37, 16), {}),
    "deprecated_reset_count": (dict(dim=16, codebook_size=32, dead_code_threshold_ratio=0.5, reset_cluster_size=3),
                               (2, 37, 16), {}),
    "deprecated_both_ratios": (dict(dim=16, codebook_size=32, threshold_ema_dead_code=0.4, reset_cluster_size=0.2),
                               (2, 37, 16), {}),
    "dead_codes_heads_kmeans": (dict(dim=16, codebook_size=32, kmeans_init=True, heads=2, dead_code_threshold_ratio=0.3),
                                (2, 37, 16), {}),
    "dead_codes_more_than_tokens": (dict(dim=16, codebook_size=300, dead_code_threshold_ratio=0.5, heads=2,
                                         separate_codebook_per_head=True), (1, 20, 16), {}),
    "dead_codes_stats_only": (dict(dim=16, codebook_size=32, dead_code_threshold_ratio=0.5), (2, 37, 16),
                              {"ema_update": False}),
    "orthogonal": (dict(dim=16, codebook_size=32, orthogonal_reg_weight=10.0), (2, 37, 16), {}),
    "orthogonal_active_only": (dict(dim=16, codebook_size=32, orthogonal_reg_weight=1.0,
                                    orthogonal_reg_active_codes_only=True), (2, 37, 16), {}),
    "orthogonal_max_codes": (dict(dim=16, codebook_size=32, orthogonal_reg_weight=1.0, orthogonal_reg_max_codes=10),
                             (2, 37, 16), {}),
    "orthogonal_cosine": (dict(dim=16, codebook_size=32, orthogonal_reg_weight=10.0, use_cosine_sim=True),
                          (2, 37, 16), {}),
    "learnable": (dict(dim=16, codebook_size=32, learnable_codebook=True, ema_update=False), (2, 37, 16), {}),
    "learnable_st": (dict(dim=16, codebook_size=32, learnable_codebook=True, ema_update=False, rotation_trick=False),
                     (2, 37, 16), {}),
    "freeze": (dict(dim=16, codebook_size=32, freeze_codebook=True), (2, 37, 16), {}),
    "no_commitment": (dict(dim=16, codebook_size=32, commitment_weight=0.0), (2, 37, 16), {}),
    "no_input_gradient": (dict(dim=16, codebook_size=32, route_gradients_to_input=False), (2, 37, 16), {}),
    "dim_1": (dict(dim=1, codebook_size=8), (2, 37, 1), {}),
    "image_fmap": (dict(dim=16, codebook_size=32, accept_image_fmap=True), (2, 16, 5, 6), {}),
    "image_fmap_heads": (dict(dim=16, codebook_size=32, accept_image_fmap=True, heads=2,
                              separate_codebook_per_head=True), (2, 16, 5, 6), {}),
    "fmap_3d_proj": (dict(dim=16, codebook_size=32, accept_3d_fmap=True, codebook_dim=8), (2, 16, 3, 4, 5), {}),
    "channel_first": (dict(dim=16, codebook_size=32, channel_last=False), (2, 16, 37), {}),
    "one_token": (dict(dim=16, codebook_size=32), (5, 16), {}),
    "one_token_heads": (dict(dim=16, codebook_size=32, heads=2), (5, 16), {}),
    "lens_dead_codes": (dict(dim=16, codebook_size=32, dead_code_threshold_ratio=0.5), (2, 37, 16), {"lens": L}),
    "mask_keep_input": (dict(dim=16, codebook_size=32, return_zeros_for_masked_padding=False), (2, 37, 16),
                        {"mask": "random"}),
    "lens_kmeans": (dict(dim=16, codebook_size=32, kmeans_init=True, dead_code_threshold_ratio=0.25), (2, 37, 16),
                    {"lens": L}),
    "lens_cosine": (dict(dim=16, codebook_size=32, use_cosine_sim=True), (2, 37, 16), {"lens": L}),
    "lens_learnable": (dict(dim=16, codebook_size=32, learnable_codebook=True, ema_update=False), (2, 37, 16),
                       {"lens": L}),
    "forward_freeze": (dict(dim=16, codebook_size=32), (2, 37, 16), {"freeze_codebook": True}),
    "directional_reparam": (dict(dim=16, codebook_size=32, directional_reparam=True, dead_code_threshold_ratio=0.1),
                            (2, 37, 16), {}),
    "directional_reparam_heads": (dict(dim=16, codebook_size=32, directional_reparam=True, dead_code_threshold_ratio=0.5,
                                       heads=2, separate_codebook_per_head=True, codebook_dim=4), (2, 37, 16), {}),
}


def make_pair(kw):
    """Ours and the peer's from the same seed: the same random numbers draw the same initial state."""
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the deprecated arguments' FutureWarning (tested on its own)
        warnings.simplefilter("ignore", FutureWarning)
        ours = VectorQuantize(**kw)
    torch.manual_seed(0)
    theirs = vqp.VectorQuantize(**kw)
    return ours, theirs


def forward_kwargs(fkw, shape, g):
    out = dict(fkw)
    if "lens" in out:
        out["lens"] = torch.tensor(out["lens"])
    if out.get("mask") == "random":
        out["mask"] = torch.rand(shape[0], shape[1], generator=g) > 0.3
    return out


def assert_same_state(ours, theirs, what):
    so, st = ours.state_dict(), theirs.state_dict()
    assert sorted(so) == sorted(st)
    for k in st:
        torch.testing.assert_close(so[k].float(), st[k].float(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m, k=k: f"{k} {what}: {m}")


def assert_float32_near_ties(ours, x, codebook, io, it, step):
    """Where the indices differ, ours must be the float64 argmin and the peer's choice must sit
    within float32 rounding of it (the peer's float32 distances cannot order such a pair).
    1.34.1's zero-start EMA makes them: a code that wins one token moves to it up to eps, while a
    re-seeded code is set to the same token. Channel-last sequence input only."""
    assert x.dim() == 3 and ours.channel_last, f"indices differ at step {step} (not a case that can tie)"
    with torch.no_grad():
        xh = ours._split_heads(ours.project_in(x)).double()  # [c, b, n, d]
        if ours.use_cosine_sim:
            xh = torch.nn.functional.normalize(xh, dim=-1, eps=1e-6)
    io3, it3 = io.view(*io.shape[:2], -1), it.view(*it.shape[:2], -1)  # [b, n, heads]
    for b, n, h in (io3 != it3).nonzero().tolist():
        if ours.separate_codebook_per_head:  # [heads, b, n, d]
            c, tok = h, xh[h, b, n]
        else:  # one codebook: [1, b * heads, n, d]
            c, tok = 0, xh[0, b * ours.heads + h, n]
        d = (tok[None] - codebook[c].double()).pow(2).sum(-1)
        mine, peer = int(io3[b, n, h]), int(it3[b, n, h])
        assert mine == int(d.argmin()), f"step {step}: ours ({mine}) is not the float64 argmin ({int(d.argmin())})"
        assert d[peer] - d[mine] <= 1e-5 * d[mine], f"step {step}: the peer's {peer} is not a float32 near-tie"


def run_parity(ours, theirs, shape, fkw, steps, train, seed):
    ours.train(train)
    theirs.train(train)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1) if list(ours.parameters()) else None
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1) if list(theirs.parameters()) else None
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randn(*shape, generator=g)
        kw = forward_kwargs(fkw, shape, g)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        codebook = ours._codebook.embed.detach().clone()
        torch.manual_seed(100 + step)
        qo, io, lo, bo = ours(xo, return_loss_breakdown=True, **kw)
        torch.manual_seed(100 + step)
        qt, it, lt, bt = theirs(xt, return_loss_breakdown=True, **kw)
        assert io.shape == it.shape and io.dtype == it.dtype
        if not torch.equal(io, it):
            # a float32 near-tie: the runs part here, so the comparison ends with this step
            assert_float32_near_ties(ours, x, codebook, io, it, step)
            assert step >= 2, f"a near-tie at step {step}: too early for the case to test anything"
            return
        assert qo.shape == qt.shape and qo.dtype == qt.dtype
        torch.testing.assert_close(qo, qt, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-6)
        for a, b in zip(bo, bt):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        if train:
            w = torch.randn(qo.shape, generator=g)
            for opt in (opt_o, opt_t):
                if opt is not None:
                    opt.zero_grad()
            ((qo * w).sum() + lo).backward()
            ((qt * w).sum() + lt).backward()
            # NOTE: 1e-4 for the gradient: the rotation trick's w = (u + q) / ||u + q|| amplifies
            # rounding for a token that points almost opposite its code (small d per head)
            torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-4, atol=1e-4)
            for opt in (opt_o, opt_t):
                if opt is not None:
                    opt.step()
        else:
            assert float(lo) == 0.0
        assert_same_state(ours, theirs, f"after step {step}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_parity_with_peer(case):
    kw, shape, fkw = CASES[case]
    ours, theirs = make_pair(kw)
    assert_same_state(ours, theirs, "at construction")
    before = theirs._codebook.embed.clone()
    run_parity(ours, theirs, shape, fkw, steps=4, train=True, seed=len(case))
    moved = not torch.equal(theirs._codebook.embed, before)
    frozen = kw.get("freeze_codebook") or fkw.get("freeze_codebook")
    assert moved != bool(frozen)  # the comparison was between codebooks that really changed


@pytest.mark.parametrize("case", ["defaults", "codebook_dim", "heads_shared", "heads_separate_proj", "cosine",
                                  "kmeans", "image_fmap", "one_token", "lens_dead_codes"])
def test_eval_parity_and_zero_loss(case):
    kw, shape, fkw = CASES[case]
    ours, theirs = make_pair(kw)
    run_parity(ours, theirs, shape, fkw, steps=2, train=False, seed=7)


def test_dead_codes_are_replaced_by_batch_tokens():
    ours, theirs = make_pair(dict(dim=8, codebook_size=64, dead_code_threshold_ratio=0.5))
    x = torch.randn(1, 50, 8) * 0.1 + 5.0  # far from every initial code: most codes stay unused
    ours.train()(x)
    tokens = x.reshape(-1, 8)
    codebook = ours.codebook
    replaced = (codebook[:, None] == tokens[None]).all(-1).any(-1)
    # more dead codes than tokens: one token each for 50 of them, the rest wait
    assert int(replaced.sum()) == 50
    # counts start at zero; after one step (decay 0.8) the mean count is 0.2 · 50 / 64, and a
    # re-seeded code restarts at reset_cluster_size_ratio (= the threshold ratio) times it
    reset = 0.5 * 0.2 * 50 / 64
    torch.testing.assert_close(ours._codebook.cluster_size[0][replaced], torch.full((50,), reset), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kw,ratio,reset", [
    (dict(threshold_ema_dead_code=2), 2 / 32, 2 / 32),
    (dict(threshold_ema_dead_code=0.3), 0.3, 0.3),
    (dict(dead_code_threshold_ratio=0.2, reset_cluster_size=4), 0.2, 4 / 32),
    (dict(threshold_ema_dead_code=5, reset_cluster_size=0.5), 5 / 32, 0.5),
])
def test_deprecated_dead_code_arguments_warn_and_convert_as_the_peer(kw, ratio, reset):
    with pytest.warns(FutureWarning, match="deprecated"):
        ours = VectorQuantize(16, 32, **kw)
    theirs = vqp.VectorQuantize(16, 32, **kw)
    assert ours.dead_code_threshold_ratio == theirs._codebook.dead_code_threshold_ratio == pytest.approx(ratio)
    assert ours.reset_cluster_size_ratio == theirs._codebook.reset_cluster_size_ratio == pytest.approx(reset)


@pytest.mark.parametrize("kw", [dict(dead_code_threshold_ratio=1.0), dict(dead_code_threshold_ratio=-0.1),
                                dict(threshold_ema_dead_code=40), dict(dead_code_threshold_ratio=0.1,
                                                                       reset_cluster_size_ratio=-1.0)])
def test_bad_dead_code_ratios_are_clear_errors(kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(ValueError, match="dead_code_threshold_ratio|reset_cluster_size_ratio"):
            VectorQuantize(16, 32, **kw)


def test_kmeans_init_writes_the_codebook_only_and_waits_for_a_non_empty_batch():
    kw = dict(dim=8, codebook_size=16, kmeans_init=True)
    ours, theirs = make_pair(kw)
    empty = torch.randn(2, 0, 8)
    ours.train()(empty)
    theirs.train()(empty)
    assert not bool(ours._codebook.initted) and not bool(theirs._codebook.initted)
    run_parity(ours, theirs, (2, 37, 8), {}, steps=1, train=False, seed=3)
    assert bool(ours._codebook.initted)
    assert float(ours._codebook.cluster_size.abs().sum()) == 0.0  # eval: k-means ran, no EMA yet
    assert float(ours._codebook.embed_avg.abs().sum()) == 0.0


def test_state_dict_round_trips_with_strict_load():
    kw = dict(dim=16, codebook_size=32, codebook_dim=8, heads=2, separate_codebook_per_head=True,
              dead_code_threshold_ratio=0.1, kmeans_init=True)
    ours, theirs = make_pair(kw)
    x = torch.randn(3, 29, 16)
    for _ in range(3):
        theirs.train()(x)
        ours.train()(x * 0.5)
    # peer checkpoint -> ours
    torch.manual_seed(1)
    fresh = VectorQuantize(**kw)
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    q1, i1, _ = fresh.eval()(x)
    q2, i2, _ = theirs.eval()(x)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(q1, q2, rtol=1e-5, atol=1e-6)
    # ours -> peer
    torch.manual_seed(2)
    peer = vqp.VectorQuantize(**kw)
    peer.load_state_dict(ours.state_dict(), strict=True)
    q1, i1, _ = peer.eval()(x)
    q2, i2, _ = ours.eval()(x)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(q1, q2, rtol=1e-5, atol=1e-6)
    # a learnable codebook is a parameter in both
    ours, theirs = make_pair(dict(dim=16, codebook_size=32, learnable_codebook=True, ema_update=False))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()] == ["_codebook.embed"]


@pytest.mark.parametrize("kw,shape", [
    (dict(dim=16, codebook_size=32), (2, 7, 16)),
    (dict(dim=16, codebook_size=32, heads=2, codebook_dim=4, separate_codebook_per_head=True), (2, 7, 16)),
    (dict(dim=16, codebook_size=32, heads=2), (2, 7, 16)),
    (dict(dim=16, codebook_size=32, accept_image_fmap=True, codebook_dim=8), (2, 16, 3, 4)),
])
def test_codes_and_output_from_indices(kw, shape):
    ours, theirs = make_pair(kw)
    x = torch.randn(*shape)
    q, idx, loss = ours.eval()(x)
    assert float(loss) == 0.0
    torch.testing.assert_close(ours.get_codes_from_indices(idx), theirs.get_codes_from_indices(idx))
    if not kw.get("accept_image_fmap") and not (kw.get("heads", 1) > 1 and not kw.get("separate_codebook_per_head")):
        torch.testing.assert_close(ours.get_codes_from_indices(idx, project_out=True),
                                   theirs.get_codes_from_indices(idx, project_out=True))
    # the output from the indices is the eval forward's output (the peer's method fails for shared
    # heads and feature maps with projections; ours follows forward there)
    torch.testing.assert_close(ours.get_output_from_indices(idx), q, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.codebook, theirs.codebook)


def test_constructor_mirrors_the_peer_signature():
    ours = inspect.signature(VectorQuantize.__init__).parameters
    theirs = inspect.signature(vqp.VectorQuantize.__init__).parameters
    for name, p in theirs.items():
        assert name in ours, f"{name} missing"
        assert ours[name].default == p.default, name
        assert ours[name].kind == p.kind, name
    extras = [n for n, p in ours.items() if n not in theirs]
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extras), extras
    fwd_o = inspect.signature(VectorQuantize.forward).parameters
    fwd_t = inspect.signature(vqp.VectorQuantize.forward).parameters
    assert list(fwd_o)[: len(fwd_t)] == list(fwd_t)
    assert all(fwd_o[n].default == p.default for n, p in fwd_t.items() if n != "x")


BAD_VALUES = {
    "commitment_use_cross_entropy_loss": True,
    "codebook_diversity_loss_weight": 0.1,
    "stochastic_sample_codes": True,
    "straight_through": True,
    "vq_bridge": torch.nn.Identity(),
    "manual_ema_update": True,
    "in_place_codebook_optimizer": torch.optim.SGD,
    "affine_param": True,
    "sync_affine_param": True,
    "sync_update_v": 0.5,
    "sync_codebook": True,
}


@pytest.mark.parametrize("arg", sorted(BAD_VALUES))
def test_unsupported_options_raise_with_their_name(arg):
    with pytest.raises(ValueError, match=arg):
        VectorQuantize(16, 32, **{arg: BAD_VALUES[arg]})


def test_every_unsupported_option_is_tested():
    assert set(_UNSUPPORTED) | {"sync_codebook"} == set(BAD_VALUES)


@pytest.mark.parametrize("arg,value", [("indices", torch.zeros(2, 5, dtype=torch.long)), ("topk", 2),
                                       ("codebook_transform_fn", lambda e: e), ("ema_update_weight", torch.ones(32)),
                                       ("accum_ema_update", True)])
def test_unsupported_forward_arguments_raise_with_their_name(arg, value):
    vq = VectorQuantize(16, 32)
    with pytest.raises(ValueError, match=arg):
        vq(torch.randn(2, 5, 16), **{arg: value})


def test_peer_assertions_are_clear_errors():
    with pytest.raises(ValueError, match="learnable_codebook"):
        VectorQuantize(16, 32, learnable_codebook=True)  # needs ema_update=False
    with pytest.raises(ValueError, match="use_cosine_sim"):
        VectorQuantize(16, 32, learnable_codebook=True, ema_update=False, use_cosine_sim=True)
    with pytest.raises(ValueError, match="dead_code_threshold_ratio"):
        VectorQuantize(16, 32, directional_reparam=True)
    with pytest.raises(ValueError, match="dim = 16"):
        VectorQuantize(16, 32)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="mask"):
        VectorQuantize(16, 32, heads=2)(torch.randn(2, 5, 16), lens=torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="mask or lens"):
        VectorQuantize(16, 32)(torch.randn(2, 5, 16), lens=torch.tensor([5, 3]), mask=torch.ones(2, 5, dtype=torch.bool))


def test_semantic_labels_restrict_the_search():
    vq = VectorQuantize(8, 40, num_classes=4, dead_code_threshold_ratio=0.5)
    assert "class_offsets" not in vq.state_dict()  # the state_dict keys stay the peer's
    x = torch.randn(3, 50, 8)
    labels = torch.randint(-1, 4, (3, 50))
    for _ in range(3):
        q, idx, loss = vq.train()(x, labels=labels)
    off = vq.class_offsets
    lab = labels.clamp(min=0)
    inside = (idx >= off[lab]) & (idx < off[lab + 1])
    assert inside[labels >= 0].all()
    # without labels every code is searched: the same as the plain quantizer's answer
    plain = VectorQuantize(8, 40)
    plain.load_state_dict(vq.state_dict())
    assert torch.equal(vq.eval()(x)[1], plain.eval()(x)[1])
    with pytest.raises(ValueError, match="num_classes"):
        plain(x, labels=labels)
    with pytest.raises(ValueError, match=r"labels must be in \[-1, 4\)"):
        vq(x, labels=labels + 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rotation_trick", [True, False])
def test_half_precision_inputs(dtype, rotation_trick):
    """The same indices and dtypes; values within the input dtype's rounding (ours computes the
    loss and the rotation in float32, the peer in the input dtype)."""
    kw = dict(dim=16, codebook_size=32, rotation_trick=rotation_trick)
    ours, theirs = make_pair(kw)
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        x = torch.randn(2, 37, 16, generator=g).to(dtype)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        qo, io, lo = ours(xo)
        qt, it, lt = theirs(xt)
        assert torch.equal(io, it)
        assert qo.dtype == qt.dtype == dtype and lo.dtype == lt.dtype
        torch.testing.assert_close(qo.float(), qt.float(), rtol=0.02, atol=0.05)
        torch.testing.assert_close(lo, lt, rtol=0.02, atol=1e-3)
        (qo.float().sum() + lo).backward()
        (qt.float().sum() + lt).backward()
        assert xo.grad.dtype == dtype
        torch.testing.assert_close(xo.grad.float(), xt.grad.float(), rtol=0.05, atol=0.05)
    assert_same_state(ours, theirs, "after half-precision steps")
