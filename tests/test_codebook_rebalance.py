"""Group sizes that follow demand and split re-seeds (sgcvq/codebook_rebalance.py, issue 24)."""
import pytest
import torch

from sgcvq import FastSemanticQuantizer
from sgcvq.codebook_rebalance import group_targets, rebalance_permutation
from sgcvq.semantic import class_offsets_from_sizes, code_classes, sample_class_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sizes,errors", [([10, 10, 10], [9.0, 1.0, 2.0]), ([3, 50, 7, 2], [1.0, 0.1, 5.0, 0.3]),
                                          ([5, 5], [0.0, 1.0])])
def test_group_targets_move_codes_toward_error_mass(sizes, errors):
    K, min_codes = sum(sizes), 2
    new = group_targets(sizes, errors, min_codes, rate=0.5)
    assert sum(new) == K and min(new) >= min(min_codes, min(sizes))
    target = [K * e / sum(errors) for e in errors]
    for s, n, t in zip(sizes, new, target):
        # every group moves toward its target and never past it
        assert min(s, t) - 1 <= n <= max(s, t) + 1
    gap = sum(abs(s - t) for s, t in zip(sizes, target))
    assert sum(abs(n - t) for n, t in zip(new, target)) < gap


def test_group_targets_settle_and_ignore_no_error():
    assert group_targets([4, 4], [0.0, 0.0], 1, 0.5) == [4, 4]
    assert group_targets([5, 5], [1.0, 1.0], 1, 0.5) == [5, 5]
    sizes = [30, 2]
    for _ in range(30):  # repeated moves reach the error-proportional sizes and stay there
        sizes = group_targets(sizes, [1.0, 3.0], 1, 0.5)
    assert sizes in ([8, 24], [9, 23])
    assert group_targets(sizes, [1.0, 3.0], 1, 0.5) == sizes


def test_rebalance_permutation_moves_the_least_used_codes_and_keeps_groups_contiguous():
    torch.manual_seed(0)
    sizes, new_sizes = [6, 3, 5], [3, 7, 4]
    offsets = class_offsets_from_sizes(sizes)
    cluster_size = torch.rand(14)
    perm, new_offsets, moved = rebalance_permutation(cluster_size, offsets, new_sizes)
    assert sorted(perm.tolist()) == list(range(14))
    assert new_offsets.tolist() == [0, 3, 10, 14]
    old_class = code_classes(offsets)
    new_class = code_classes(new_offsets)
    assert (moved == (old_class[perm] != new_class)).all()
    for c, give in ((0, 3), (2, 1)):
        group = torch.arange(offsets[c], offsets[c + 1])
        least = group[torch.sort(cluster_size[group], stable=True).indices[:give]]
        assert set(perm[moved].tolist()) >= set(least.tolist())
    assert int(moved.sum()) == 4
    # survivors keep their order inside their group
    for c in range(3):
        kept = perm[(new_class == c) & ~moved]
        assert (kept[1:] > kept[:-1]).all()


def test_weighted_token_sampling_takes_the_heaviest_first():
    offsets = class_offsets_from_sizes([1, 1])
    x = torch.arange(12, dtype=torch.float32).view(6, 2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    weights = torch.tensor([0.0, 1e6, 0.0, 0.0, 0.0, 1e6])
    for _ in range(5):
        seeds, has_token = sample_class_tokens(x, labels, code_classes(offsets), offsets, weights=weights)
        assert has_token.all() and (seeds == x[[1, 5]]).all()


def _scenes(step: int, D: int = 6):
    """Two classes: class 0 a tight blob, class 1 spread wide (it needs the codes)."""
    g = torch.Generator().manual_seed(step)
    labels = (torch.rand(1, 256, generator=g) < 0.5).long()
    x = torch.randn(1, 256, D, generator=g) * torch.where(labels[..., None] == 1, 3.0, 0.05)
    return x, labels


def _trained(steps: int, **kwargs) -> FastSemanticQuantizer:
    torch.manual_seed(1)
    vq = FastSemanticQuantizer(6, 32, num_classes=2, group_sizes=[16, 16], threshold_dead=0.05, max_idle_steps=20,
                               kmeans_init=True, min_codes_per_class=2, **kwargs)
    for step in range(steps):
        vq(*_scenes(step))
    return vq


def test_rebalancing_gives_the_spread_class_the_codes_and_the_search_stays_grouped():
    vq = _trained(60, rebalance_every=5, reseed_split=True)
    sizes = (vq.class_offsets[1:] - vq.class_offsets[:-1]).tolist()
    assert sum(sizes) == 32 and sizes[1] >= 24, sizes
    assert vq.group_sizes == sizes
    assert (vq.code_class == code_classes(vq.class_offsets)).all()
    # the EMA state moved with its codes: e = M / N up to the smoothing of the ema_update op
    torch.testing.assert_close(vq.embed_sum / vq.cluster_size[:, None].clamp(min=1e-3), vq.codebook,
                               rtol=0.05, atol=0.05)
    vq.eval()
    x, labels = _scenes(999)
    _, idx, _ = vq(x, labels)
    assert (vq.code_class[idx] == labels).all()
    assert vq.metrics()["per_class_usage"] is not None


def test_fixed_groups_without_rebalancing_have_no_new_state():
    vq = _trained(3)
    assert "group_error" not in vq.state_dict()
    assert (vq.class_offsets == torch.tensor([0, 16, 32])).all()


def test_rebalanced_checkpoint_resumes_exactly():
    kwargs = dict(rebalance_every=5, reseed_split=True)
    run = _trained(23, **kwargs)  # group sizes have moved by now
    assert run.group_sizes != [16, 16]
    state = {k: v.clone() for k, v in run.state_dict().items()}
    rng = torch.get_rng_state()
    for step in range(23, 40):
        run(*_scenes(step))
    resumed = FastSemanticQuantizer(6, 32, num_classes=2, group_sizes=[16, 16], threshold_dead=0.05,
                                    max_idle_steps=20, kmeans_init=True, min_codes_per_class=2, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.group_sizes == (state["class_offsets"][1:] - state["class_offsets"][:-1]).tolist()
    torch.set_rng_state(rng)
    for step in range(23, 40):
        resumed(*_scenes(step))
    for name, buf in run.state_dict().items():
        assert torch.equal(buf, resumed.state_dict()[name]), name
    assert (resumed.code_class == run.code_class).all() and resumed.group_sizes == run.group_sizes


def test_bad_rebalance_arguments():
    with pytest.raises(ValueError, match="rebalance_every"):
        FastSemanticQuantizer(4, 8, num_classes=2, rebalance_every=-1)
    with pytest.raises(ValueError, match="rebalance_rate"):
        FastSemanticQuantizer(4, 8, num_classes=2, rebalance_every=5, rebalance_rate=0.0)


def test_boundary_cells_search_all_codes_with_label_min_share():
    from sgcvq.semantic import pool_labels

    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 1], [2, 2, 255, 255]]])  # [1, 4, 4]
    assert pool_labels(labels, (2, 2), 3).tolist() == [[[0, 1], [2, 1]]]
    # the bottom-right cell is 1 of 2 voting pixels (50%); the others are pure
    assert pool_labels(labels, (2, 2), 3, min_share=0.75).tolist() == [[[0, 1], [2, -1]]]
    assert pool_labels(labels, (2, 2), 3, min_share=0.5).tolist() == [[[0, 1], [2, 1]]]


def test_model_searches_all_codes_for_boundary_tokens_only():
    from sgcvq.config import smoke_config
    from sgcvq.model import SGCVQGAN

    cfg = smoke_config(9).model
    cfg.label_min_share = 0.75
    model = SGCVQGAN(cfg).eval()
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    labels = torch.randint(0, 9, (2, 32, 32))
    labels[0] = 3  # image 0: every cell pure
    idx = model.encode(images, labels)
    code_class = model.quantizer.code_class
    assert (code_class[idx[0]] == 3).all()
    majority = model.token_labels(labels, tuple(idx.shape[-2:]))
    search = model._search_labels(labels, majority)
    assert (search[1] == -1).any() and (search[0] == 3).all()


def test_a_rebalance_permutes_the_codebook_its_ema_state_and_counters_together():
    vq = _trained(12, rebalance_every=1000, reseed_split=True)  # no scheduled rebalance yet
    names = ("codebook", "cluster_size", "embed_sum", "code_last_used", "code_last_event", "last_counts")
    before = {n: getattr(vq, n).clone() for n in names}
    offsets = vq.class_offsets.clone()
    vq.group_error.copy_(torch.tensor([0.1, 10.0]))  # class 1 holds nearly all the error
    moved = vq._rebalance()
    assert moved is not None and int(moved.sum()) > 0
    perm, new_offsets, again = rebalance_permutation(before["cluster_size"], offsets, vq.group_sizes)
    assert torch.equal(vq.class_offsets, new_offsets) and torch.equal(moved, again)
    for n in names:
        assert torch.equal(getattr(vq, n), before[n][perm]), n
    assert (vq.code_class == code_classes(new_offsets)).all()
