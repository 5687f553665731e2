"""Two-process DDP on the CPU (gloo, file:// rendezvous): ranks stay identical, rank 0 checkpoints."""
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

        cfg = smoke_config(max_steps=3, ckpt_every=3)
        cfg.train.disc_start = 2  # the discriminator's DDP step runs too
        cfg.train.grad_accum = 2  # and no_sync on the first micro-batch
        trainer = Trainer(cfg, out)
        trainer.run()
        torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                   f"{out}/rank{rank}.pt")
        torch.save({k: v.detach().clone() for k, v in trainer.disc.state_dict().items()},
                   f"{out}/disc{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ddp(tmp_path):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:  # gradients all-reduced, quantizer statistics synced: identical replicas
        torch.testing.assert_close(r0[k], r1[k], msg=f"rank 0 and rank 1 differ in {k}")
    d0, d1 = torch.load(out / "disc0.pt"), torch.load(out / "disc1.pt")
    for k in d0:
        if d0[k].is_floating_point() and "running" not in k:  # BatchNorm statistics stay per rank
            torch.testing.assert_close(d0[k], d1[k], msg=f"discriminator differs in {k}")
    ckpt = load_checkpoint(out)
    assert ckpt["state"]["step"] == 3 and ckpt["state"]["world_size"] == 2
    assert len(ckpt["state"]["rng_per_rank"]) == 2
    assert ckpt["state"]["rng_per_rank"][0] != ckpt["state"]["rng_per_rank"][1]
    for k in r0:
        torch.testing.assert_close(ckpt.group("model")[k], r0[k])
