"""The training loop behind `sgcvq train`.

One optimizer step = `train.grad_accum` micro-batches through the generator (encoder, quantizer,
decoder) and, from `train.disc_start` on, the same micro-batches through the discriminator.
Everything a step depends on (weights, optimizer moments, quantizer buffers, RNG states, data
position) is in the checkpoint, so `--resume` continues with exactly the step an uninterrupted run
would have taken.

The step never waits on the host: losses, PSNR and gradient norms stay on the device as tensors and
are read (one transfer) only when a log row is written, a checkpoint is taken or the run ends; the
finiteness check of the loss runs then too (every step on the CPU, where reading is free).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..checkpoint import (capture_rng_state, latest_checkpoint, load_checkpoint, restore_rng_state,
                          save_checkpoint)
from ..config import Config, config_from_dict, config_to_dict, save_config
from ..metrics import psnr
from .batch_stream import BatchStream, resolve_loader_settings
from .build import build_models, build_optimizer, build_train_dataset, check_classes, prepare_for_device
from .process_group import DistInfo, all_gather_objects, barrier, init_distributed, resolve_device
from .ema import WeightEMA
from .precision import autocast_context, make_grad_scaler, resolve_amp
from .run_log import RunLog
from .steps import DiscriminatorStep, GeneratorStep, frozen

__all__ = ["train", "Trainer", "TrainResult", "quantizer_scalars", "read_logs"]


@dataclass
class TrainResult:
    """What a finished (or time-limited) run leaves behind."""

    out_dir: Path
    step: int
    checkpoint: Path | None
    last_logs: dict = field(default_factory=dict)
    skipped_files: int = 0
    wall_s: float = 0.0


def quantizer_scalars(quantizer) -> dict[str, float]:
    """The scalar entries of `quantizer.metrics()` (lists such as per-class usage are left out)."""
    out = {}
    for k, v in quantizer.metrics().items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _active_fraction(scalars: dict[str, float]) -> float | None:
    for key in ("active_code_fraction", "active_fraction", "active"):
        if key in scalars:
            return scalars[key]
    return None


def _scalar_logs(logs: dict, prefix: str) -> dict:
    """The scalar entries of a loss's logs, as detached tensors (still on the device) or numbers."""
    out = {}
    for k, v in (logs or {}).items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[f"{prefix}/{k}"] = v.detach().reshape(())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = float(v)
    return out


def read_logs(logs: dict) -> dict[str, float]:
    """Python floats of a step's logs: every device tensor comes back in one transfer."""
    keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in logs.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([logs[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values))
    return out


def _progress_fields(logs: dict[str, float]) -> dict[str, str]:
    post = {"loss": f"{logs['loss']:.4f}", "psnr": f"{logs['psnr']:.2f}"}
    active = _active_fraction({k[3:]: v for k, v in logs.items() if k.startswith("vq/")})
    if active is not None:
        post["active"] = f"{100 * active:.0f}%"
    return post


def _unwrap(m):
    return m.module if isinstance(m, DDP) else m


def _skipped(dataset) -> list:
    return list(getattr(dataset, "skipped", []) or [])


class Trainer:
    """Holds the state of one run; `run()` trains to `train.max_steps`."""

    def __init__(self, cfg: Config, out_dir: str | Path, resume: str | Path | None = None,
                 dist_info: DistInfo | None = None, overwrite: bool = False):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        probe_device = resolve_device(cfg.train.device)
        self.dist = dist_info or init_distributed(probe_device)
        self.device = resolve_device(cfg.train.device, self.dist.local_rank)
        self.ckpt_root = self.out_dir / "checkpoints"

        resume_ckpt = self._find_resume(resume)
        if resume_ckpt is None and latest_checkpoint(self.ckpt_root) is not None:
            if not overwrite:
                raise FileExistsError(
                    f"{str(self.out_dir)!r} already holds checkpoints: pass --resume to continue that run, "
                    "--overwrite to start again there, or another --out")
            if self.dist.is_main:
                shutil.rmtree(self.ckpt_root)
                shutil.rmtree(self.out_dir / "tensorboard", ignore_errors=True)
            barrier(self.dist)
        if resume_ckpt is not None:
            # The checkpoint's config wins (an exact continuation needs the same model, data, optimizer
            # and precision) except for the run length, logging and what belongs to this machine.
            saved = config_from_dict(resume_ckpt["state"]["config"])
            saved.train.max_steps = cfg.train.max_steps
            saved.train.time_limit_s = cfg.train.time_limit_s
            saved.train.device = cfg.train.device
            saved.train.compile = cfg.train.compile
            saved.train.channels_last = cfg.train.channels_last
            for key in ("num_workers", "pin_memory", "prefetch_factor", "cache"):  # same items either way
                setattr(saved.data, key, getattr(cfg.data, key))
            saved.log = cfg.log
            self.cfg = cfg = saved
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)

        # Same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        torch.manual_seed(cfg.train.seed)
        self.model, self.disc, self.loss = build_models(cfg, self.device)
        self.channels_last = prepare_for_device(cfg.train, self.model, self.disc, self.device,
                                                sync_batchnorm=self.dist.enabled)
        self.opt_g = build_optimizer(self.model.parameters(), cfg.optim, cfg.optim.lr, self.device)
        self.opt_d = build_optimizer(self.disc.parameters(), cfg.optim, cfg.optim.disc_lr or cfg.optim.lr,
                                     self.device)
        self.scaler_g = make_grad_scaler(self.device, self.amp_dtype)
        self.scaler_d = make_grad_scaler(self.device, self.amp_dtype)
        self.ema = WeightEMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        # On a GPU the input checks inside the model (finite features, labels in range) run on the
        # device and are read with the losses at log time (check_finite): no host read in a step.
        self._deferred = [m for m in self.model.modules() if hasattr(m, "raise_deferred_checks")]
        if self.device.type == "cuda":
            for m in self._deferred:
                m.defer_checks = True

        gen_step = GeneratorStep(self.model, self.loss)
        disc_step = DiscriminatorStep(self.disc, self.loss)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The quantizer all-reduces its own EMA statistics; broadcasting its buffers from rank 0
            # every forward would be redundant traffic.
            gen_step = DDP(gen_step, device_ids=ids, broadcast_buffers=False)
            disc_step = DDP(disc_step, device_ids=ids)
        self.gen_step, self.disc_step = gen_step, disc_step

        self.dataset = build_train_dataset(cfg.data)
        check_classes(cfg, self.dataset)
        # Per-rank randomness (dead-code re-seeding noise, ...) differs by rank from here on.
        torch.manual_seed(cfg.train.seed + 7919 * self.dist.rank)
        self.step = 0
        data_pos = {"epoch": 0, "batch_in_epoch": 0}
        if resume_ckpt is not None:
            data_pos = self._load_state(resume_ckpt)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size))
        self.loader = resolve_loader_settings(cfg.data.num_workers, cfg.data.pin_memory, cfg.data.prefetch_factor,
                                              self.device, local_world, cfg.data.segmenter is not None)
        self.stream = BatchStream(self.dataset, cfg.data.batch_size, self.dist.rank, self.dist.world_size,
                                  cfg.data.seed, self.loader.num_workers, self.loader.pin_memory,
                                  data_pos["epoch"], data_pos["batch_in_epoch"], self.loader.prefetch_factor,
                                  self.device)
        self.resumed_from = resume_ckpt["path"] if resume_ckpt is not None else None
        self._unchecked: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked for NaN/Inf

    # ----------------------------------------------------------------------------------------
    def _find_resume(self, resume):
        if resume is None:
            return None
        if resume == "auto":
            path = latest_checkpoint(self.ckpt_root)
            return load_checkpoint(path) if path is not None else None
        return load_checkpoint(resume)

    def _load_state(self, ckpt) -> dict:
        self.model.load_state_dict(ckpt.group("model"))
        self.disc.load_state_dict(ckpt.group("disc"))
        if self.ema is not None:
            ema_state = ckpt.group("ema")
            self.ema.load_state_dict(ema_state if ema_state else self.model.state_dict())
        optim = ckpt["optim"]
        self.opt_g.load_state_dict(optim["opt_g"])
        self.opt_d.load_state_dict(optim["opt_d"])
        for name, scaler in (("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)):
            if scaler is not None and optim.get(name):
                scaler.load_state_dict(optim[name])
        state = ckpt["state"]
        self.step = int(state["step"])
        rngs = state["rng_per_rank"]
        if len(rngs) == self.dist.world_size:
            restore_rng_state(rngs[self.dist.rank])
        else:  # a different number of processes: the exact replay is impossible, the run continues
            print(f"sgcvq: resuming with {self.dist.world_size} process(es) from a checkpoint written by "
                  f"{len(rngs)}; data order and RNG streams differ from an uninterrupted run", file=sys.stderr)
        return state["data"]

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state)."""
        self.check_finite()  # never a checkpoint of weights a NaN step has already reached
        rngs = all_gather_objects(self.dist, capture_rng_state())
        path = None
        if self.dist.is_main:
            tensors = {"model": self.model.state_dict(), "disc": self.disc.state_dict()}
            if self.ema is not None:
                tensors["ema"] = self.ema.state_dict()
            optim = {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                     "scaler_g": self.scaler_g.state_dict() if self.scaler_g else {},
                     "scaler_d": self.scaler_d.state_dict() if self.scaler_d else {}}
            state = {"config": config_to_dict(self.cfg), "rng_per_rank": rngs, "data": self.stream.state(),
                     "world_size": self.dist.world_size, "skipped_files": len(self.stream.skipped())}
            path = save_checkpoint(self.ckpt_root, self.step, tensors, optim, state, self.cfg.train.keep_last)
        barrier(self.dist)
        return path

    # ----------------------------------------------------------------------------------------
    def _optimizer_step(self, params, opt, scaler) -> torch.Tensor:
        clip = self.cfg.optim.grad_clip
        if scaler is not None:
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return norm.detach()

    def check_finite(self) -> None:
        """Raise FloatingPointError naming the first step since the last check whose generator loss
        was NaN or Inf (one device read for all of them). Before that, the model's deferred input
        checks (GPU) raise their ValueError."""
        for m in self._deferred:
            m.raise_deferred_checks()
        if not self._unchecked:
            return
        steps = [s for s, _ in self._unchecked]
        values = torch.stack([v for _, v in self._unchecked]).tolist()
        self._unchecked.clear()
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise FloatingPointError(f"step {step}: generator loss is {value}; lower optim.lr "
                                         "or use train.amp=fp32")

    def _backward(self, loss, scaler):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def train_step(self) -> dict:
        """One optimizer step of the generator and (after disc_start) of the discriminator.

        Returns the step's logs as device tensors (read them with `read_logs`); nothing in the step
        waits for the device.
        """
        cfg, accum = self.cfg, self.cfg.train.grad_accum
        disc_module = _unwrap(self.disc_step).disc
        disc_on = self.step >= cfg.train.disc_start
        self.model.train()
        self.disc.train()
        self.opt_g.zero_grad(set_to_none=True)
        kept, g_logs, loss_sum, psnr_sum = [], {}, 0.0, 0.0
        for micro in range(accum):
            batch = next(self.stream)
            images = batch["image"].to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(self.device, non_blocking=True) if cfg.model.num_classes else None
            sync = contextlib.nullcontext()
            if isinstance(self.gen_step, DDP) and micro < accum - 1:
                sync = self.gen_step.no_sync()  # all-reduce gradients once, on the last micro-batch
            with sync, frozen(disc_module):
                with autocast_context(self.device, self.amp_dtype):
                    out, g_loss, g_logs = self.gen_step(images, labels, self.step, disc_module)
                self._backward(g_loss / accum, self.scaler_g)
            loss_sum = loss_sum + g_loss.detach().float()
            with torch.no_grad():
                psnr_sum = psnr_sum + psnr(out.recon.detach().float().clamp(-1, 1), images.float()).mean()
            if disc_on:
                kept.append((images, out.recon.detach()))
        self._unchecked.append((self.step, loss_sum))
        if self.device.type == "cpu":
            self.check_finite()  # reading a CPU tensor costs nothing: fail at the very step
        g_norm = self._optimizer_step(self.model.parameters(), self.opt_g, self.scaler_g)
        if self.ema is not None:
            self.ema.update(self.model)
        logs = {"loss": loss_sum / accum, "psnr": psnr_sum / accum, "grad_norm/g": g_norm}
        logs.update(_scalar_logs(g_logs, "g"))

        if disc_on:
            self.opt_d.zero_grad(set_to_none=True)
            d_sum, d_logs = 0.0, {}
            for micro, (images, recon) in enumerate(kept):
                sync = contextlib.nullcontext()
                if isinstance(self.disc_step, DDP) and micro < accum - 1:
                    sync = self.disc_step.no_sync()
                with sync:
                    with autocast_context(self.device, self.amp_dtype):
                        d_loss, d_logs = self.disc_step(images, recon, self.step)
                    self._backward(d_loss / accum, self.scaler_d)
                d_sum = d_sum + d_loss.detach().float()
            logs["d_loss"] = d_sum / accum
            logs["grad_norm/d"] = self._optimizer_step(self.disc.parameters(), self.opt_d, self.scaler_d)
            logs.update(_scalar_logs(d_logs, "d"))
        self.step += 1
        return logs

    @staticmethod
    def _read_step_logs(logs: dict, quantizer) -> dict[str, float]:
        if logs and all(isinstance(v, float) for v in logs.values()):
            return logs  # already read (the last step was a log step)
        out = read_logs(logs)
        out.update({f"vq/{k}": v for k, v in quantizer_scalars(quantizer).items()})
        return out

    # ----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until train.max_steps (or train.time_limit_s); checkpoint periodically and at the end."""
        cfg, main = self.cfg, self.dist.is_main
        start = time.perf_counter()
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        skipped = _skipped(self.dataset)
        log = RunLog(self.out_dir, cfg.log.csv, cfg.log.tensorboard,
                     self.step if self.resumed_from is not None else None) if main else None
        if main:
            msg = f"sgcvq: training on {self.device} x{self.dist.world_size}, {len(self.dataset)} samples"
            if skipped:
                msg += f", {len(skipped)} unreadable file(s) skipped (first: {skipped[0][0]}: {skipped[0][1]})"
            if self.resumed_from is not None:
                msg += f", resumed from {self.resumed_from} at step {self.step}"
            msg += f"; {self.loader.describe()}"
            cache = getattr(self.dataset, "cache", None)
            if cache is not None:
                msg += f"; scene cache {cache.path} ({cache.filled_count()}/{cache.length} painted)"
            print(msg, file=sys.stderr)
            if skipped:
                log.text("data/skipped", "\n".join(f"{p}: {r}" for p, r in skipped), self.step)

        bar = None
        if main and cfg.log.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                       file=sys.stderr)
        logs: dict = {}
        quantizer = self.model.quantizer
        last_ckpt = latest_checkpoint(self.ckpt_root) if main else None
        saved_step = self.step if self.resumed_from is not None else -1
        try:
            while self.step < cfg.train.max_steps:
                logs = self.train_step()
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log.every == 0 or self.step == cfg.train.max_steps:
                    # Log time: the only place the loop reads the device (the NaN check included).
                    self.check_finite()
                    logs = self._read_step_logs(logs, quantizer)
                    skipped = self.stream.skipped()  # header checks and decode failures in any worker
                    if main:
                        log.log(self.step, {**logs, "data/skipped_files": len(skipped)})
                    if bar is not None:
                        bar.set_postfix(_progress_fields(logs), refresh=False)
                timed_out = cfg.train.time_limit_s > 0 and time.perf_counter() - start > cfg.train.time_limit_s
                if cfg.train.ckpt_every > 0 and self.step % cfg.train.ckpt_every == 0:
                    last_ckpt = self.save() or last_ckpt
                    saved_step = self.step
                if timed_out:
                    if main:
                        print(f"sgcvq: train.time_limit_s reached at step {self.step}", file=sys.stderr)
                    break
            if saved_step != self.step:
                last_ckpt = self.save() or last_ckpt
            self.check_finite()
            logs = self._read_step_logs(logs, quantizer)
            skipped = self.stream.skipped()
        finally:
            self.stream.close()  # stops the loader workers; a later step starts them again
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        wall = time.perf_counter() - start
        if main:
            summary = {"step": self.step, "wall_s": wall, "skipped_files": len(skipped),
                       "skipped": [[str(p), str(r)] for p, r in skipped], "last": logs}
            with open(self.out_dir / "train_summary.json", "w") as fh:
                json.dump(summary, fh, indent=1)
        return TrainResult(self.out_dir, self.step, last_ckpt, logs, len(skipped), wall)


def train(cfg: Config, out_dir: str | Path, resume: str | Path | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train `cfg` into `out_dir` (config.yaml, checkpoints/, train_log.csv, tensorboard/).

    resume: None (fresh run), "auto" (latest checkpoint in out_dir, if any) or a checkpoint path.
    Under torchrun, every process calls this; rank 0 writes the outputs.
    """
    return Trainer(cfg, out_dir, resume, overwrite=overwrite).run()
