"""A DistributedSampler that can start mid-epoch, so `--resume` replays the exact data order."""
from __future__ import annotations

import itertools

from torch.utils.data import DistributedSampler

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (shuffled by `seed + epoch`, the same on every rank) that skips the
    first `start` samples of this rank's share of the epoch.

    Works without an initialised process group when num_replicas and rank are given (one process).
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Next iteration yields epoch `epoch` from this rank's sample number `start` on."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)
