"""FastSemanticQuantizer under torch.distributed: 2 CPU processes with gloo.

Every rank sees different data; the statistics are summed with one flat all-reduce per step and
re-seeding / k-means seeds come from rank 0, so the codebooks must stay bit-identical."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
STEPS = 5


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for semantic_on in (True, False):  # one process group for both runs: spawning is the slow part
            _train(rank, out_dir, semantic_on)
    finally:
        dist.destroy_process_group()


def _train(rank: int, out_dir: str, semantic_on: bool) -> None:
    from sgcvq import FastSemanticQuantizer

    calls = {"all_reduce": 0, "broadcast": 0}
    real_all_reduce, real_broadcast = dist.all_reduce, dist.broadcast

    def counting_all_reduce(*a, **k):
        calls["all_reduce"] += 1
        return real_all_reduce(*a, **k)

    def counting_broadcast(*a, **k):
        calls["broadcast"] += 1
        return real_broadcast(*a, **k)

    dist.all_reduce, dist.broadcast = counting_all_reduce, counting_broadcast

    torch.manual_seed(0)  # identical construction on every rank
    if semantic_on:
        # group sizes that move (every 2 steps) and split re-seeds: decided from all-reduced state
        vq = FastSemanticQuantizer(8, 48, num_classes=3, threshold_dead=1.5, kmeans_init=True, kmeans_iters=3,
                                   semantic_loss_weight=0.1, rebalance_every=2, reseed_split=True)
    else:
        vq = FastSemanticQuantizer(8, 48, threshold_dead=0)
    torch.manual_seed(100 + rank)  # different data (and different local RNG) per rank
    per_step = []
    for step in range(STEPS):
        x = torch.randn(2, 40, 8) + rank
        labels = torch.randint(-1, 3, (2, 40)) if semantic_on else None
        if semantic_on:  # class 2 spread wider: the rebalance moves codes to it
            x = torch.where(labels[..., None] == 2, 4 * x, x)
        before = dict(calls)
        vq(x, labels)
        per_step.append({k: calls[k] - before[k] for k in calls})
        torch.save(x, os.path.join(out_dir, f"x_{semantic_on}_{rank}_{step}.pt"))
    dist.all_reduce, dist.broadcast = real_all_reduce, real_broadcast
    torch.save({"state": vq.state_dict(), "calls": per_step}, os.path.join(out_dir, f"{semantic_on}_rank{rank}.pt"))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Runs the 2-rank training once; returns a loader of (rank results) per configuration."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


def _results(out, semantic_on):
    return [torch.load(out / f"{semantic_on}_rank{r}.pt") for r in range(WORLD)]


def test_ddp_codebooks_bit_identical_with_reseeding_and_kmeans(ddp_run):
    r0, r1 = _results(ddp_run, True)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    assert int(r0["state"]["codes_reseeded"]) > 0  # the broadcast decisions were exercised
    assert bool(r0["state"]["kmeans_done"])
    assert r0["state"]["class_offsets"].tolist() != [0, 16, 32, 48]  # the groups moved, alike on both ranks
    # ONE all-reduce per training step (after the k-means step), one broadcast for re-seeding
    for calls in r0["calls"][1:]:
        assert calls == {"all_reduce": 1, "broadcast": 1}, r0["calls"]


def test_ddp_equals_one_process_on_the_concatenated_batch(ddp_run):
    from sgcvq import FastSemanticQuantizer

    r0, r1 = _results(ddp_run, False)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    torch.manual_seed(0)
    single = FastSemanticQuantizer(8, 48, threshold_dead=0)
    for step in range(STEPS):
        xs = [torch.load(ddp_run / f"x_False_{r}_{step}.pt") for r in range(WORLD)]
        single(torch.cat(xs))
    # the same EMA, up to the order of the float32 sums across ranks
    for name in ("codebook", "cluster_size", "embed_sum", "class_centers", "last_counts"):
        torch.testing.assert_close(r0["state"][name], single.state_dict()[name], rtol=1e-5, atol=1e-5)
    assert all(c == {"all_reduce": 1, "broadcast": 0} for c in r0["calls"])
