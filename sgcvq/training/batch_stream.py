"""An endless stream of batches that knows its position (epoch, batch within the epoch)."""
from __future__ import annotations

import multiprocessing
import os
import queue
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from .sampler import ResumableDistributedSampler

__all__ = ["BatchStream", "LoaderSettings", "resolve_loader_settings"]

# More workers than this rarely pays for one GPU's batches and costs memory and start-up.
_MAX_WORKERS_GPU = 8
_MAX_WORKERS_CPU = 4


@dataclass(frozen=True)
class LoaderSettings:
    """What the DataLoader is built with (data.num_workers / pin_memory / prefetch_factor resolved)."""

    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 4

    def describe(self) -> str:
        if self.num_workers == 0:
            return "data in the main process"
        pin = ", pinned" if self.pin_memory else ""
        return f"{self.num_workers} loader worker(s){pin}, {self.prefetch_factor} batches ahead each"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_loader_settings(num_workers, pin_memory, prefetch_factor: int, device: torch.device,
                            local_world_size: int = 1, main_process_only: bool = False) -> LoaderSettings:
    """Resolve the data.* loader options; "auto" picks by device and core count.

    num_workers "auto":
      GPU: the cores this process may use (its share of the machine under torchrun), less one for the
        training loop itself, at most 8: the GPU must never wait for images.
      CPU: only the cores the training threads leave idle (cores - torch.get_num_threads()), at most 4:
        on a CPU a loader worker competes with the step for the same cores. The synthetic scenes come
        from the SceneCache after their first epoch, so the main process then keeps up on its own.
      main_process_only (a segmenter model labels the images, which may hold a GPU): 0.
    pin_memory "auto": on for a GPU, off otherwise.
    """
    if num_workers == "auto":
        if main_process_only:
            workers = 0
        elif device.type == "cuda":
            workers = min(_MAX_WORKERS_GPU, max(_usable_cores() // max(local_world_size, 1) - 1, 0))
        else:
            spare = _usable_cores() - torch.get_num_threads() * max(local_world_size, 1)
            workers = min(_MAX_WORKERS_CPU, max(spare // max(local_world_size, 1), 0))
    elif isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0:
        workers = num_workers
    else:
        raise ValueError(f"data.num_workers must be 'auto' or an integer >= 0, got {num_workers!r}")
    if pin_memory == "auto":
        pin = device.type == "cuda"
    elif isinstance(pin_memory, bool):
        pin = pin_memory and device.type == "cuda"
    else:
        raise ValueError(f"data.pin_memory must be 'auto', true or false, got {pin_memory!r}")
    if not isinstance(prefetch_factor, int) or isinstance(prefetch_factor, bool) or prefetch_factor < 1:
        raise ValueError(f"data.prefetch_factor must be an integer >= 1, got {prefetch_factor!r}")
    return LoaderSettings(workers, pin, prefetch_factor)


class BatchStream:
    """Yields batches forever, epoch after epoch, and can be restarted at a saved position.

    The position counts batches handed to the caller (not batches prefetched by workers), so a
    checkpoint taken after step s resumes with exactly the batch step s+1 would have seen. Datasets
    are expected to be deterministic per index (random augmentation inside workers would not be
    replayed): then the batches do not depend on the number of workers either.

    Workers are started once per run (persistent) and keep `prefetch_factor` batches each ready.
    With `device` set, each batch comes back with its tensors on that device (copied from pinned
    memory without blocking when pin_memory is on).
    """

    def __init__(self, dataset, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False, epoch: int = 0, batch_in_epoch: int = 0,
                 prefetch_factor: int = 4, device: torch.device | None = None):
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
        self.prefetch_factor = prefetch_factor
        self.device = device
        self.epoch = epoch
        self.batch_in_epoch = batch_in_epoch
        self._loader = None
        self._it = None
        self._worker_skips: list[tuple[str, str]] = []
        self._skip_queue = None
        if num_workers > 0 and hasattr(dataset, "skip_sink"):
            self._skip_queue = multiprocessing.get_context().Queue()
            dataset.skip_sink = self._skip_queue

    def skipped(self) -> list[tuple[str, str]]:
        """Files the dataset skipped so far, in this process or in a loader worker, each once."""
        if self._skip_queue is not None:
            while True:
                try:
                    self._worker_skips.append(self._skip_queue.get_nowait())
                except queue.Empty:
                    break
        seen, out = set(), []
        for path, reason in list(getattr(self.dataset, "skipped", None) or []) + self._worker_skips:
            if str(path) not in seen:
                seen.add(str(path))
                out.append((path, reason))
        return out

    def state(self) -> dict:
        """JSON-safe position, for the checkpoint."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def _make_loader(self) -> DataLoader:
        # NOTE: a loader draws its workers' base seed from its generator when an iterator starts. From
        # the global RNG that draw would happen at a different step in a resumed run than in an
        # uninterrupted one and shift every later random number; a generator of its own keeps it out.
        gen = torch.Generator().manual_seed(self.sampler.seed * 1_000_003 + self.epoch)
        extra = {}
        if self.num_workers > 0:
            extra = {"persistent_workers": True, "prefetch_factor": self.prefetch_factor}
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=True,
                          generator=gen, **extra)

    def _start(self):
        # The sampler lives in this process: a persistent loader's next iterator reads its new position.
        self.sampler.set_position(self.epoch, self.batch_in_epoch * self.batch_size)
        if self._loader is None:
            self._loader = self._make_loader()
        self._it = iter(self._loader)

    def _to_device(self, batch):
        if self.device is None:
            return batch
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

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
        return self._to_device(batch)

    def close(self) -> None:
        """Stop the loader's workers (they also stop when the stream is garbage-collected)."""
        self._it = None
        self._loader = None
