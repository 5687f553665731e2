"""Two-process DDP on the CPU (gloo, file:// rendezvous): ranks stay identical, rank 0 checkpoints and
logs, the quantizer all-reduces once per forward, and a run resumes with another process count."""
import csv
import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sgcvq.checkpoint import load_checkpoint
from sgcvq.config import smoke_config


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from sgcvq.training import Trainer

        cfg = smoke_config(max_steps=4, ckpt_every=2)
        cfg.train.disc_start = 2  # the discriminator's DDP step runs too
        cfg.train.grad_accum = 2  # and no_sync on the first micro-batch
        cfg.data.num_workers = 1  # a loader process per rank
        trainer = Trainer(cfg, out)
        trainer.run()
        torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                   f"{out}/rank{rank}.pt")
        torch.save({k: v.detach().clone() for k, v in trainer.disc.state_dict().items()},
                   f"{out}/disc{rank}.pt")
        # Collectives issued from Python in one more step: the quantizer's statistics (DDP's gradient
        # buckets are reduced by its C++ reducer, not through dist.all_reduce).
        calls, real = [], dist.all_reduce

        def counting(tensor, *args, **kwargs):
            calls.append(tensor.numel())
            return real(tensor, *args, **kwargs)

        dist.all_reduce = counting
        try:
            trainer.train_step()
        finally:
            dist.all_reduce = real
        with open(f"{out}/calls{rank}.json", "w") as fh:
            json.dump(calls, fh)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ddp_and_resume_with_one(tmp_path, capsys):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:  # gradients all-reduced, quantizer statistics synced: identical replicas
        torch.testing.assert_close(r0[k], r1[k], msg=f"rank 0 and rank 1 differ in {k}")
    d0, d1 = torch.load(out / "disc0.pt"), torch.load(out / "disc1.pt")
    for k in d0:
        if d0[k].is_floating_point() and "running" not in k:  # BatchNorm statistics stay per rank on CPUs
            torch.testing.assert_close(d0[k], d1[k], msg=f"discriminator differs in {k}")
    ckpt = load_checkpoint(out)
    assert ckpt["state"]["step"] == 4 and ckpt["state"]["world_size"] == 2
    assert len(ckpt["state"]["rng_per_rank"]) == 2
    assert ckpt["state"]["rng_per_rank"][0] != ckpt["state"]["rng_per_rank"][1]
    for k in r0:
        torch.testing.assert_close(ckpt.group("model")[k], r0[k])
    # Rank 0 alone writes the logs: one row per step.
    with open(out / "train_log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    # One all-reduce of one flat buffer per forward (2 micro-batches), identical on both ranks.
    c0, c1 = (json.loads((out / f"calls{r}.json").read_text()) for r in (0, 1))
    assert len(c0) == 2 and c0 == c1, (c0, c1)

    # Resume the 2-process run in one process: it continues (not as an exact replay) and says so.
    from sgcvq.training import train

    capsys.readouterr()
    resumed = train(smoke_config(max_steps=6), out, resume="auto")
    assert resumed.step == 6
    assert "resuming with 1 process(es) from a checkpoint written by 2" in capsys.readouterr().err
    state = load_checkpoint(resumed.checkpoint)["state"]
    assert state["world_size"] == 1 and len(state["rng_per_rank"]) == 1
    # The data position counts batches per process: the 1-process run goes on from batch 8 of epoch 0
    # (in its own 16-batch order of the epoch) and takes 2 steps x 2 micro-batches.
    assert state["data"] == {"epoch": 0, "batch_in_epoch": 12}
