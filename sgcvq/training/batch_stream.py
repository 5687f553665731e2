"""An endless stream of batches that knows its position (epoch, batch within the epoch)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .sampler import ResumableDistributedSampler

__all__ = ["BatchStream"]


class BatchStream:
    """Yields batches forever, epoch after epoch, and can be restarted at a saved position.

    The position counts batches handed to the caller (not batches prefetched by workers), so a
    checkpoint taken after step s resumes with exactly the batch step s+1 would have seen. Datasets
    are expected to be deterministic per index (random augmentation inside workers would not be
    replayed).
    """

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False, epoch: int = 0, batch_in_epoch: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = ResumableDistributedSampler(dataset, world_size, rank, seed)
        self.batches_per_epoch = self.sampler.num_samples // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data: the dataset has {len(dataset)} samples, fewer than one batch per process "
                f"(batch_size={batch_size} x {world_size} process(es)); lower data.batch_size or add data"
            )
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.epoch = epoch
        self.batch_in_epoch = batch_in_epoch
        self._it = None

    def state(self) -> dict:
        """JSON-safe position, for the checkpoint."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def _start(self):
        self.sampler.set_position(self.epoch, self.batch_in_epoch * self.batch_size)
        # NOTE: a loader draws its workers' base seed from its generator when an iterator starts. From
        # the global RNG that draw would happen at a different step in a resumed run than in an
        # uninterrupted one and shift every later random number; a per-epoch generator keeps it out.
        gen = torch.Generator().manual_seed(self.sampler.seed * 1_000_003 + self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=True,
                            generator=gen)
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._it = None
        if self._it is None:
            self._start()
        batch = next(self._it)
        self.batch_in_epoch += 1
        return batch
