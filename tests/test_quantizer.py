"""FastSemanticQuantizer: assignment, straight-through, EMA/class statistics, re-seeding, k-means,
label pooling, pyramid weights, dtypes, state, compile and input validation."""
import itertools

import pytest
import torch

import sgcvq
from sgcvq import FastSemanticQuantizer
from sgcvq.kmeans import kmeans_per_group
from sgcvq.semantic import code_classes, group_sizes_for, pool_labels


def sample_inputs(B=2, N=61, D=12, C=None, unlabelled=0.2):
    """Fresh random tokens [B, N, D] and, with C, token labels [B, N] in [-1, C)."""
    x = torch.randn(B, N, D)
    if C is None:
        return x, None
    labels = torch.randint(0, C, (B, N))
    labels[torch.rand(B, N) < unlabelled] = -1
    return x, labels


def buffers(vq):
    return {k: v.clone() for k, v in vq.state_dict().items()}


def clustered_batch(centres_per_class, class_probs, n, noise):
    """Tokens around per-class cluster centres; returns x [1, n, D], labels [1, n]."""
    C = len(centres_per_class)
    labels = torch.multinomial(torch.tensor(class_probs), n, replacement=True)
    x = torch.empty(n, centres_per_class[0].shape[1])
    for c in range(C):  # C is tiny; the data generator is not the code under test
        m = labels == c
        centres = centres_per_class[c]
        pick = torch.randint(0, centres.shape[0], (int(m.sum()),))
        x[m] = centres[pick] + noise * torch.randn(int(m.sum()), centres.shape[1])
    return x[None], labels[None]


# ------------------------------------------------------------------------------------------------
# Assignment and the semantic guarantee
# ------------------------------------------------------------------------------------------------
def test_plain_assignment_is_the_global_nearest_code():
    vq = FastSemanticQuantizer(12, 53, threshold_dead=0).eval()
    x, _ = sample_inputs()
    q, idx, loss = vq(x)
    ref, _ = sgcvq.nearest_code_reference(x.reshape(-1, 12), vq.codebook)
    assert idx.shape == (2, 61) and idx.dtype == torch.int64
    assert torch.equal(idx.reshape(-1), ref)
    torch.testing.assert_close(q, vq.codebook[idx], rtol=0, atol=0)
    torch.testing.assert_close(loss, 0.25 * ((x - vq.codebook[idx]) ** 2).mean())


@pytest.mark.parametrize("group_sizes", ["equal", [3, 17, 1, 8, 11]])
def test_every_index_is_in_its_tokens_group_and_unlabelled_tokens_search_all(group_sizes):
    C, K = 5, 40
    vq = FastSemanticQuantizer(12, K, num_classes=C, group_sizes=group_sizes, threshold_dead=0.5)
    for _ in range(3):  # training steps: the codebook moves, the guarantee holds throughout
        x, labels = sample_inputs(C=C)
        codebook = vq.codebook.clone()
        _, idx, _ = vq(x, labels)
        off = vq.class_offsets
        lab = labels.clamp(min=0)
        labelled = labels >= 0
        assert ((idx >= off[lab]) & (idx < off[lab + 1]))[labelled].all()
        ref_all, _ = sgcvq.nearest_code_reference(x.reshape(-1, 12), codebook)
        assert torch.equal(idx.reshape(-1)[~labelled.reshape(-1)], ref_all[~labelled.reshape(-1)])
        ref_grouped, _ = sgcvq.nearest_code_reference(x.reshape(-1, 12), codebook, labels.reshape(-1), off)
        assert torch.equal(idx.reshape(-1), ref_grouped)


def test_feature_map_layout_matches_channel_last():
    a = FastSemanticQuantizer(8, 32, num_classes=4, threshold_dead=0, channel_last=False).eval()
    b = FastSemanticQuantizer(8, 32, num_classes=4, threshold_dead=0, channel_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 8, 5, 7)
    labels = torch.randint(-1, 4, (3, 5, 7))
    qa, ia, la = a(x, labels)
    qb, ib, lb = b(x.permute(0, 2, 3, 1), labels)
    assert qa.shape == x.shape and ia.shape == (3, 5, 7)
    assert torch.equal(ia, ib)
    torch.testing.assert_close(qa, qb.permute(0, 3, 1, 2))
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.decode_indices(ia), qa)
    torch.testing.assert_close(b.decode_indices(ib), qb)
    torch.testing.assert_close(a.get_codes_from_indices(ia), a.codebook[ia])


# ------------------------------------------------------------------------------------------------
# Straight-through estimator and losses
# ------------------------------------------------------------------------------------------------
def test_straight_through_gradient_is_identity_and_loss_gradcheck_float64():
    vq = FastSemanticQuantizer(6, 16, num_classes=2, semantic_loss_weight=0.3, threshold_dead=0).eval()
    vq.class_centers.normal_()
    x = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-1, 2, (2, 9))
    q, idx, loss = vq(x, labels)
    assert q.dtype == torch.float64 and loss.dtype == torch.float64
    # forward value: exactly the code; backward: identity
    torch.testing.assert_close(q.detach(), vq.codebook[idx].double(), rtol=0, atol=0)
    g = torch.randn_like(q)
    (gx,) = torch.autograd.grad(q, x, g, retain_graph=True)
    torch.testing.assert_close(gx, g, rtol=0, atol=0)
    # gradcheck of the module's backward path. The losses are smooth where the assignment is
    # fixed. q itself is piecewise constant, so its numerical derivative is 0 while the ST
    # estimator says identity: q - sg(q) + sg(x) has forward value x (numerical derivative I) and
    # the analytic derivative of q (must be I).
    def f(inp):
        q, _, loss = vq(inp, labels)
        return loss, q - q.detach() + inp.detach()

    torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,level_weights", [(torch.float64, None), (torch.float32, None),
                                                 (torch.float32, [4.0, 0.25]), (torch.bfloat16, [2.0, 1.0])])
def test_commitment_loss_and_gradient(dtype, level_weights):
    # float32/bf16 take the fused path (value from the search's sqdist, custom backward);
    # compare with autograd through the explicit formula
    vq = FastSemanticQuantizer(4, 8, threshold_dead=0, level_weights=level_weights).eval()
    w = vq.channel_scale ** 2 if level_weights is not None else torch.ones(4)
    x = torch.randn(1, 5, 4).to(dtype).requires_grad_(True)
    q, _, loss = vq(x)
    gq = torch.randn_like(q)
    (g,) = torch.autograd.grad((loss, q), x, (torch.tensor(1.7, dtype=loss.dtype), gq))
    xf = x.detach().float().requires_grad_(True)
    expected_loss = 0.25 * (((xf - q.detach().float()) ** 2) * w).mean()
    (expected,) = torch.autograd.grad(1.7 * expected_loss + (xf * gq.float()).sum(), xf)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.float(), expected_loss.detach(), **tol)
    torch.testing.assert_close(g.float(), expected, **tol)


def test_semantic_loss_value():
    vq = FastSemanticQuantizer(5, 12, num_classes=3, semantic_loss_weight=0.5, commitment_weight=0.0,
                               threshold_dead=0).eval()
    vq.class_centers.normal_()
    x, labels = sample_inputs(N=40, D=5, C=3)
    _, _, loss = vq(x, labels)
    m = labels >= 0
    mu = vq.class_centers[labels.clamp(min=0)]
    expected = 0.5 * ((x - mu) ** 2).sum(-1)[m].sum() / (m.sum() * 5)
    torch.testing.assert_close(loss, expected)


# ------------------------------------------------------------------------------------------------
# Training-mode statistics
# ------------------------------------------------------------------------------------------------
def test_eval_does_not_change_buffers_and_train_does():
    vq = FastSemanticQuantizer(8, 24, num_classes=3, kmeans_init=True, kmeans_iters=2)
    x, labels = sample_inputs(D=8, C=3)
    before = buffers(vq)
    vq.eval()
    vq(x, labels)
    vq(x)
    after = buffers(vq)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    vq.train()
    vq(x, labels)
    changed = buffers(vq)
    assert not torch.equal(changed["codebook"], before["codebook"])
    assert int(changed["steps"]) == 1 and bool(changed["kmeans_done"])


def test_ema_update_and_class_centres_follow_the_ops():
    K, D, C, decay = 20, 6, 4, 0.9
    vq = FastSemanticQuantizer(D, K, num_classes=C, decay=decay, threshold_dead=0)
    x, labels = sample_inputs(N=50, D=D, C=C)
    labels[0, :] = torch.where(labels[0] == 3, 2, labels[0])
    labels[1, :] = torch.where(labels[1] == 3, 1, labels[1])  # class 3 absent from the batch
    vq.class_centers.normal_()
    start = buffers(vq)
    _, idx, _ = vq(x, labels)
    counts, sums = sgcvq.cluster_stats_reference(idx.reshape(-1), x.reshape(-1, D), K)
    N = start["cluster_size"].clone()
    M = start["embed_sum"].clone()
    E = start["codebook"].clone()
    sgcvq.ema_update_reference(N, M, E, counts, sums, decay, 1e-5)
    torch.testing.assert_close(vq.cluster_size, N)
    torch.testing.assert_close(vq.embed_sum, M)
    torch.testing.assert_close(vq.codebook, E)
    flat_x, flat_l = x.reshape(-1, D), labels.reshape(-1)
    for c in range(3):  # first sight of a class: the centre takes the batch mean
        torch.testing.assert_close(vq.class_centers[c], flat_x[flat_l == c].mean(0))
        assert vq.class_counts[c] == (flat_l == c).sum()
    torch.testing.assert_close(vq.class_centers[3], start["class_centers"][3])  # absent: unchanged
    # second step: EMA blend for present classes
    mu0 = vq.class_centers.clone()
    x2, _ = sample_inputs(N=50, D=D)
    vq(x2, labels)
    flat2 = x2.reshape(-1, D)
    for c in range(3):
        torch.testing.assert_close(vq.class_centers[c], decay * mu0[c] + (1 - decay) * flat2[flat_l == c].mean(0))


def test_reseeding_revives_dead_codes_and_keeps_every_code_active():
    torch.manual_seed(1)
    C, K, D = 4, 64, 8
    probs = [0.62, 0.25, 0.09, 0.04]  # skewed class mix
    offsets = [torch.randn(1, D) * 6 for _ in range(C)]
    centres = [o + 2.0 * torch.randn(40, D) for o in offsets]  # 40 clusters per class, 16 codes

    def run(threshold):
        vq = FastSemanticQuantizer(D, K, num_classes=C, threshold_dead=threshold, metrics_window=8,
                                   max_idle_steps=5)
        vq.codebook.add_(50.0)  # a bad start: every code far from the data
        vq.embed_sum.copy_(vq.codebook)
        gen_state = torch.get_rng_state()
        for _ in range(30):
            x, labels = clustered_batch(centres, probs, 2048, 0.3)
            q, idx, _ = vq(x, labels)
        torch.set_rng_state(gen_state)
        return vq.metrics()

    on = run(1.0)
    off = run(0.0)
    assert on["active_fraction"] == 1.0, on
    assert all(u == 1.0 for u in on["per_class_usage"]), on
    assert on["codes_reseeded"] >= K  # every code started dead
    assert off["codes_reseeded"] == 0
    assert off["active_fraction"] < 0.5  # without re-seeding most codes never win a token


def test_reseeding_picks_tokens_of_the_codes_class():
    C, K, D = 3, 12, 4
    vq = FastSemanticQuantizer(D, K, num_classes=C, threshold_dead=1e9)  # every code is dead
    x, labels = sample_inputs(N=30, D=D, C=C)
    labels[:, :3] = torch.tensor([0, 1, 2])  # every class present
    vq(x, labels)
    flat_x, flat_l = x.reshape(-1, D), labels.reshape(-1)
    cls = code_classes(vq.class_offsets)
    for k in range(K):
        same_class = flat_x[flat_l == cls[k]]
        assert (vq.codebook[k] == same_class).all(dim=1).any(), k
    assert int(vq.codes_reseeded) == K
    # reset count: at least the threshold, so the code is not judged dead again at once
    assert (vq.cluster_size >= 1e9).all()
    torch.testing.assert_close(vq.embed_sum, vq.codebook * vq.cluster_size[:, None])


def test_reseeding_falls_back_to_the_class_centre_when_the_batch_has_none():
    C, K, D = 2, 8, 4
    vq = FastSemanticQuantizer(D, K, num_classes=C, threshold_dead=0.0)
    x, _ = sample_inputs(N=40, D=D)
    labels = torch.zeros(2, 40, dtype=torch.int64)
    labels[0, :20] = 1
    vq(x, labels)  # both class centres known
    vq.threshold_dead = 1e9
    x2, _ = sample_inputs(N=40, D=D)
    mu1 = vq.class_centers[1].clone()
    vq(x2, torch.zeros(2, 40, dtype=torch.int64))  # class 1 absent
    group1 = vq.codebook[vq.class_offsets[1]:]
    assert ((group1 - mu1).norm(dim=1) < 0.5 * x2.std() * D ** 0.5).all()
    assert not (group1 == x2.reshape(-1, D)[:, None]).all(-1).any()  # not a token


# ------------------------------------------------------------------------------------------------
# k-means initialisation
# ------------------------------------------------------------------------------------------------
def test_kmeans_init_per_group():
    torch.manual_seed(2)
    C, D, per_class = 3, 6, 4
    K = C * per_class
    class_centres = [torch.randn(per_class, D) * 2 + 15 * torch.randn(1, D) for _ in range(C)]
    x, labels = clustered_batch(class_centres, [0.5, 0.3, 0.2], 1500, 0.05)
    vq = FastSemanticQuantizer(D, K, num_classes=C, kmeans_init=True, kmeans_iters=10, threshold_dead=0)
    vq(x, labels)
    assert bool(vq.kmeans_done)
    cls = code_classes(vq.class_offsets)
    all_centres = torch.cat(class_centres)
    centre_class = torch.arange(C).repeat_interleave(per_class)
    nearest = torch.cdist(vq.codebook, all_centres).argmin(1)
    assert torch.equal(centre_class[nearest], cls)  # every code sits in its own class's data
    # Lloyd beats its own seeds: the mean error is near the noise floor for most codes
    _, sq = sgcvq.nearest_code_reference(x[0], vq.codebook, labels[0], vq.class_offsets)
    assert sq.mean() < 0.5 * (torch.cdist(x[0], all_centres) ** 2).min(1).values.mean() + 4.0
    # the second training batch does not run k-means again
    snapshot = vq.codebook.clone()
    vq.decay = 1.0  # freeze the EMA so any change would come from a second k-means
    vq(x, labels)
    torch.testing.assert_close(vq.codebook, snapshot)


def test_kmeans_empty_clusters_keep_their_seed_and_absent_classes_keep_the_fallback():
    offsets = torch.tensor([0, 4, 6])
    cls = code_classes(offsets)
    two = torch.randn(2, 3)
    x = two[torch.randint(0, 2, (30,))]  # class 0: only two distinct tokens for four codes
    labels = torch.zeros(30, dtype=torch.int64)
    fallback = torch.randn(6, 3)
    codebook, counts = kmeans_per_group(x, labels, offsets, cls, fallback, iters=5)
    for k in range(4):  # every code of group 0 is one of the tokens (a seed or a cluster mean)
        assert torch.isclose(codebook[k], two, rtol=1e-6, atol=1e-6).all(dim=1).any()
    assert counts[:4].sum() == 30
    torch.testing.assert_close(codebook[4:], fallback[4:])  # class 1 has no token


def test_semantic_kmeans_waits_for_labels_and_plain_kmeans_runs_at_once():
    vq = FastSemanticQuantizer(6, 12, num_classes=3, kmeans_init=True, kmeans_iters=2, threshold_dead=0)
    x, labels = sample_inputs(D=6, C=3)
    vq(x)  # unlabelled: no groups to fit yet
    assert not bool(vq.kmeans_done)
    vq(x, labels)
    assert bool(vq.kmeans_done)
    plain = FastSemanticQuantizer(6, 12, kmeans_init=True, kmeans_iters=2, threshold_dead=0)
    plain(x)
    assert bool(plain.kmeans_done)
    _, sq = sgcvq.nearest_code_reference(x.reshape(-1, 6), plain.codebook)
    assert sq.mean() < 6.0 * 0.8  # below the spread of N(0, I) tokens around their mean


def test_unlabelled_batches_reseed_from_class_centres_only():
    vq = FastSemanticQuantizer(4, 8, num_classes=2, threshold_dead=0)
    x, labels = sample_inputs(D=4, C=2, unlabelled=0.0)
    vq(x, labels)
    vq.threshold_dead = 1e9
    x2 = torch.randn(2, 61, 4) + 100.0  # far away, unlabelled: must not become seeds
    vq(x2)
    assert (vq.codebook.abs() < 50).all()
    assert int(vq.codes_reseeded) == 8


# ------------------------------------------------------------------------------------------------
# Group sizes and label pooling
# ------------------------------------------------------------------------------------------------
def test_group_sizes():
    assert group_sizes_for(3, 10, "equal") == [4, 3, 3]
    sizes = group_sizes_for(4, 100, "frequency", [0.7, 0.2, 0.09, 0.01], min_codes_per_class=5)
    assert sum(sizes) == 100 and min(sizes) >= 5
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] / sizes[1] == pytest.approx((0.7 / 0.2) ** 0.5, rel=0.1)
    vq = FastSemanticQuantizer(4, 100, num_classes=4, group_sizes="frequency",
                               class_frequencies=[0.7, 0.2, 0.09, 0.01], min_codes_per_class=5)
    assert vq.class_offsets.tolist() == [0] + list(itertools.accumulate(sizes))
    assert group_sizes_for(3, 9, [2, 3, 4]) == [2, 3, 4]


def pool_reference(pixels, f, C, ignore=255):
    B, H, W = pixels.shape
    out = torch.full((B, H // f, W // f), -1, dtype=torch.int64)
    for b, i, j in itertools.product(range(B), range(H // f), range(W // f)):
        cell = pixels[b, i * f:(i + 1) * f, j * f:(j + 1) * f].reshape(-1)
        cell = cell[cell != ignore]
        if cell.numel():
            counts = torch.bincount(cell, minlength=C)
            out[b, i, j] = int(torch.nonzero(counts == counts.max())[0])  # lowest class on ties
    return out


@pytest.mark.parametrize("f", [1, 2, 4])
def test_label_pooling_from_pixel_maps(f):
    C = 5
    pixels = torch.randint(0, C, (2, 3 * f, 5 * f))
    pixels[torch.rand(pixels.shape) < 0.3] = 255
    pixels[0, :f, :f] = 255  # a cell with no labelled pixel -> -1
    expected = pool_reference(pixels, f, C)
    assert expected[0, 0, 0] == -1
    assert torch.equal(pool_labels(pixels, (3, 5), C), expected)
    # through the module: maps for [B, H, W, D] tokens and for [B, N, D] tokens give the same
    vq = FastSemanticQuantizer(4, 20, num_classes=C, threshold_dead=0).eval()
    x = torch.randn(2, 3, 5, 4)
    _, idx_map, _ = vq(x, pixels)
    _, idx_tok, _ = vq(x, expected)
    _, idx_seq, _ = vq(x.reshape(2, 15, 4), pixels)
    assert torch.equal(idx_map, idx_tok) and torch.equal(idx_seq.reshape(2, 3, 5), idx_tok)


def test_label_pooling_tie_goes_to_the_lowest_class():
    pixels = torch.tensor([[[3, 1], [1, 3]]])
    assert pool_labels(pixels, (1, 1), 4).item() == 1


# ------------------------------------------------------------------------------------------------
# Pyramid weights
# ------------------------------------------------------------------------------------------------
def test_level_weights_weight_the_distance_and_output_is_unscaled():
    dims, w = [3, 5], [4.0, 0.25]
    vq = FastSemanticQuantizer(8, 30, level_weights=w, level_dims=dims, threshold_dead=0).eval()
    x, _ = sample_inputs(N=70, D=8)
    q, idx, loss = vq(x)
    codes = vq.get_codes_from_indices(torch.arange(30))  # unscaled codes
    wvec = torch.tensor([4.0] * 3 + [0.25] * 5)
    d = (((x.reshape(-1, 1, 8) - codes[None]) ** 2) * wvec).sum(-1)
    assert torch.equal(idx.reshape(-1), d.argmin(1))
    torch.testing.assert_close(q, codes[idx])
    torch.testing.assert_close(loss, 0.25 * (((x - q) ** 2) * wvec).mean())


def test_level_weights_equal_split():
    vq = FastSemanticQuantizer(6, 4, level_weights=[1.0, 9.0, 4.0])
    assert vq.level_dims == [2, 2, 2]
    torch.testing.assert_close(vq.channel_scale, torch.tensor([1.0, 1, 3, 3, 2, 2]))


# ------------------------------------------------------------------------------------------------
# Dtypes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_in_low_precision_out_buffers_float32(dtype):
    vq = FastSemanticQuantizer(8, 32, num_classes=2)
    x, labels = sample_inputs(D=8, C=2)
    x = x.to(dtype)
    codebook = vq.codebook.clone()
    q, idx, loss = vq(x, labels)  # a training step
    assert q.dtype == dtype and loss.dtype == torch.float32
    for name, b in vq.named_buffers():
        if b is not None and b.is_floating_point():
            assert b.dtype == torch.float32, name
    # the search is the float32 search of the (exactly) upcast input
    ref, _ = sgcvq.nearest_code_reference(x.float().reshape(-1, 8), codebook, labels.reshape(-1), vq.class_offsets)
    assert torch.equal(idx.reshape(-1), ref)
    torch.testing.assert_close(q, codebook[idx].to(dtype), rtol=0, atol=0)


def test_module_dtype_casts_keep_buffers_float32():
    vq = FastSemanticQuantizer(8, 32, num_classes=2).to(torch.bfloat16)
    assert all(b.dtype == torch.float32 for b in vq.buffers() if b is not None and b.is_floating_point())
    x, labels = sample_inputs(D=8, C=2)
    q, _, _ = vq.half()(x.half(), labels)
    assert q.dtype == torch.float16 and vq.codebook.dtype == torch.float32


def test_autocast_keeps_statistics_float32():
    vq = FastSemanticQuantizer(8, 32)
    x = torch.randn(2, 20, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, _, loss = vq(x)
    assert q.dtype == torch.float32
    assert vq.codebook.dtype == torch.float32 and vq.cluster_size.dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------
def test_state_dict_and_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    kw = dict(dim=8, codebook_size=24, num_classes=3, kmeans_init=True, kmeans_iters=2, threshold_dead=0.5)
    vq = FastSemanticQuantizer(**kw)
    for _ in range(3):
        x, labels = sample_inputs(D=8, C=3)
        vq(x, labels)
    names = set(vq.state_dict())
    assert {"codebook", "cluster_size", "embed_sum", "class_offsets", "class_centers"} <= names
    path = tmp_path / "vq.safetensors"
    save_file(vq.state_dict(), str(path))
    fresh = FastSemanticQuantizer(**kw)
    fresh.load_state_dict(load_file(str(path)))
    for k, v in vq.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    x, labels = sample_inputs(D=8, C=3)
    torch.manual_seed(5)
    out_a = vq(x, labels)
    torch.manual_seed(5)
    out_b = fresh(x, labels)  # k-means does not run again after loading a trained state
    for a, b in zip(out_a, out_b):
        assert torch.equal(a, b)
    assert torch.equal(vq.codebook, fresh.codebook)


def test_metrics():
    vq = FastSemanticQuantizer(4, 16, num_classes=2, threshold_dead=0.0, metrics_window=3)
    assert vq.metrics()["steps"] == 0
    x = torch.randn(1, 64, 4)
    labels = torch.zeros(1, 64, dtype=torch.int64)  # only class 0 is used
    vq(x, labels)
    m = vq.metrics()
    used = torch.unique(vq.last_counts.nonzero())
    assert m["steps"] == 1 and m["active_codes"] == used.numel() <= 8
    assert m["per_class_usage"][1] == 0.0 and m["per_class_usage"][0] == used.numel() / 8
    p = vq.last_counts[vq.last_counts > 0].double() / 64  # the step's 64 tokens over the used codes
    assert m["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------
def test_compile_fullgraph_eval_and_training():
    # aot_eager: dynamo tracing, fake kernels and functionalisation, without inductor's C++ build
    # (too slow for this suite on a shared 2-core machine; inductor was checked by hand)
    torch._dynamo.reset()
    vq = FastSemanticQuantizer(8, 32, num_classes=4, threshold_dead=0).eval()
    compiled = torch.compile(vq, fullgraph=True, backend="aot_eager")
    x, labels = sample_inputs(B=2, N=36, D=8, C=4)
    pixels = torch.randint(0, 4, (2, 12, 12))
    for lab in (labels, pixels, None):
        out_c = compiled(x, lab)
        out_e = vq(x, lab)
        for a, b in zip(out_c, out_e):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # training mode: the compiled step updates the buffers like the eager one
    eager = FastSemanticQuantizer(8, 32, num_classes=4, threshold_dead=0)
    train = FastSemanticQuantizer(8, 32, num_classes=4, threshold_dead=0)
    train.load_state_dict(eager.state_dict())
    compiled_train = torch.compile(train, backend="aot_eager")
    for _ in range(2):
        x, labels = sample_inputs(B=2, N=36, D=8, C=4)
        compiled_train(x, labels)
        eager(x, labels)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(train.state_dict()[k], v, rtol=1e-6, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dim=4, codebook_size=3, num_classes=5), "num_classes 5 > codebook_size 3"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes=[3, 4]), "sum to 7"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes=[8]), "1 entries"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes=[0, 8]), r"group_sizes\[0\]"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes="zipf"), "group_sizes must be"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes="frequency"), "class_frequencies"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes="frequency", class_frequencies=[1, -1]),
         "class_frequencies must be"),
        (dict(dim=4, codebook_size=8, num_classes=2, group_sizes="frequency", class_frequencies=[1, 1],
              min_codes_per_class=5), "min_codes_per_class 5"),
        (dict(dim=0, codebook_size=8), "dim must be"),
        (dict(dim=4, codebook_size=8, decay=1.5), "decay"),
        (dict(dim=4, codebook_size=8, threshold_dead=-1), "threshold_dead"),
        (dict(dim=5, codebook_size=8, level_weights=[1, 1]), "does not split"),
        (dict(dim=4, codebook_size=8, level_weights=[1, 1], level_dims=[1, 2]), "level_dims sum"),
        (dict(dim=4, codebook_size=8, level_weights=[1, 0]), "level_weights"),
        (dict(dim=4, codebook_size=8, search_mode="fast"), "search_mode"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastSemanticQuantizer(**kwargs)


def test_bad_forward_inputs():
    vq = FastSemanticQuantizer(4, 8, num_classes=2)
    plain = FastSemanticQuantizer(4, 8)
    maps = FastSemanticQuantizer(4, 8, num_classes=2, channel_last=False)
    x = torch.randn(2, 6, 4)
    ok = torch.zeros(2, 6, dtype=torch.int64)
    with pytest.raises(ValueError, match="D = dim = 4"):
        vq(torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match=r"\[B, D, H, W\] with D = dim = 4"):
        maps(torch.randn(2, 3, 4, 4))
    with pytest.raises(TypeError, match="float32, bfloat16"):
        vq(torch.ones(2, 6, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels are \\[2, 5\\] but tokens are \\[2, 6\\]"):
        vq(x, ok[:, :5])
    with pytest.raises(ValueError, match="integer multiple f"):
        maps(torch.randn(2, 4, 3, 3), torch.zeros(2, 7, 6, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer tensor"):
        vq(x, ok.float())
    with pytest.raises(ValueError, match=r"labels must be in \[-1, 2\).*found values in \[-2, 0\]"):
        vq(x, torch.where(ok == 0, -2, ok)[:, :] * (torch.arange(6) == 0))
    with pytest.raises(ValueError, match=r"labels must be in \[-1, 2\)"):
        vq(x, ok + 2)
    pixel_bad = torch.zeros(2, 6, 6, dtype=torch.int64)
    pixel_bad[0, 0, 0] = -1  # -1 is not a pixel value (255 is the ignore label)
    with pytest.raises(ValueError, match="ignore_label 255"):
        maps(torch.randn(2, 4, 3, 3), pixel_bad)
    pixel_ok = torch.full((2, 6, 6), 255)
    maps(torch.randn(2, 4, 3, 3), pixel_ok)  # all-ignore maps are fine: every token searches all
    with pytest.raises(ValueError, match="NaN or Inf"):
        vq(torch.where(torch.rand(2, 6, 4) < 0.1, float("nan"), 1.0), ok)
    with pytest.raises(ValueError, match="num_classes is None"):
        plain(x, ok)
    unchecked = FastSemanticQuantizer(4, 8, check_finite=False).eval()
    unchecked(torch.full((1, 3, 4), float("inf")))  # no error: the check is off
