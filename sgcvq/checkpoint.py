"""Checkpoints that a killed run can never leave half-written.

A checkpoint is one directory `<out>/checkpoints/step_00001234/` holding

* `weights.safetensors` — every tensor of the model, the discriminator and the weight EMA,
  prefixed `model.`, `disc.`, `ema.` (safetensors: no pickle, loadable anywhere);
* `optim.pt` — the optimizer (and grad-scaler) state dicts, loaded with `weights_only=True`;
* `state.json` — step, config, RNG states (torch, CUDA, numpy, python) and the data position.

It is written into a temporary sibling directory, every file fsync'ed, and then renamed into place
with `os.replace` (atomic on POSIX), the parent directory fsync'ed after. A reader therefore sees
either a complete checkpoint or none, and `latest_checkpoint` only ever lists complete ones.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
    "Checkpoint",
    "resolve_checkpoint",
]

_PREFIX = "step_"
_WEIGHTS = "weights.safetensors"
_OPTIM = "optim.pt"
_STATE = "state.json"


class Checkpoint(dict):
    """A loaded checkpoint: `state` (the JSON), `tensors` (flat safetensors dict), `optim`, `path`.

    `group("model")` returns the state dict of one prefixed group (model, disc, ema).
    """

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        head = prefix + "."
        return {k[len(head):]: v for k, v in self["tensors"].items() if k.startswith(head)}


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as JSON-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(_unb64(state["torch"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [_unb64(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flatten(groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    flat = {}
    for prefix, state in groups.items():
        for name, tensor in state.items():
            # A copy on the CPU: safetensors refuses tensors that share storage (tied weights) and
            # the copy detaches the file from training tensors that keep changing.
            flat[f"{prefix}.{name}"] = tensor.detach().to("cpu", copy=True).contiguous()
    return flat


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    optim: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 0,
) -> Path:
    """Write checkpoint `step` atomically under `ckpt_root` and return its directory.

    tensors: {"model": state_dict, "disc": state_dict, "ema": state_dict, ...};
    optim: picklable-with-weights_only state dicts (optimizers, grad scaler);
    state: JSON-safe dict (step, config, RNG, data position). keep_last > 0 prunes older ones.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        save_file(_flatten(tensors), str(tmp / _WEIGHTS), metadata={"format": "pt", "step": str(step)})
        torch.save(optim, tmp / _OPTIM)
        with open(tmp / _STATE, "w") as fh:
            json.dump({**state, "step": step}, fh)
        for name in (_WEIGHTS, _OPTIM, _STATE):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last > 0:
        prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under `ckpt_root`, oldest first (temporary directories are skipped)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit():
            found.append((int(p.name[len(_PREFIX):]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(ckpt_root: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and stale temporary directories."""
    root = Path(ckpt_root)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for p in root.glob(".tmp-*"):
        # Left by a run killed mid-write; a live writer's tmp dir only exists inside save_checkpoint.
        shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a checkpoints/ folder or a run folder; return the checkpoint.

    Raises FileNotFoundError naming the path when nothing loadable is there.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if (p / _STATE).is_file() and (p / _WEIGHTS).is_file():
        return p
    for root in (p, p / "checkpoints"):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise FileNotFoundError(
        f"{str(p)!r} is not a checkpoint (no {_STATE} + {_WEIGHTS}) and holds no step_* checkpoints"
    )


def load_checkpoint(path: str | Path, with_optim: bool = True) -> Checkpoint:
    """Load a checkpoint written by `save_checkpoint` (tensors on the CPU)."""
    ckpt_dir = resolve_checkpoint(path)
    with open(ckpt_dir / _STATE) as fh:
        state = json.load(fh)
    tensors = load_file(str(ckpt_dir / _WEIGHTS))
    optim = torch.load(ckpt_dir / _OPTIM, map_location="cpu", weights_only=True) if with_optim else None
    return Checkpoint(state=state, tensors=tensors, optim=optim, path=ckpt_dir)
