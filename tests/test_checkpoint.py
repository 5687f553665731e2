"""Checkpoints: atomic writes, round trips, RNG state, pruning, SIGKILL during training."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sgcvq.checkpoint import (capture_rng_state, latest_checkpoint, list_checkpoints, load_checkpoint,
                              resolve_checkpoint, restore_rng_state, save_checkpoint)


pytestmark = pytest.mark.usefixtures("one_thread")


def _save(root, step, keep_last=0):
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 5)).sum().backward()
    opt.step()
    tied = {"w": model.weight, "w_again": model.weight}  # shared storage must still save
    path = save_checkpoint(root, step, {"model": model.state_dict(), "extra": tied}, {"opt": opt.state_dict()},
                           {"config": {"a": 1}, "note": "x"}, keep_last=keep_last)
    return path, model, opt


def test_round_trip(tmp_path):
    path, model, opt = _save(tmp_path, 7)
    assert path.name == "step_00000007"
    ckpt = load_checkpoint(tmp_path)  # the folder resolves to its latest checkpoint
    assert ckpt["state"]["step"] == 7 and ckpt["state"]["config"] == {"a": 1}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ckpt.group("model")[k], v)
    torch.testing.assert_close(ckpt.group("extra")["w_again"], model.weight.detach())
    saved_opt = ckpt["optim"]["opt"]
    torch.testing.assert_close(saved_opt["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not list(tmp_path.glob(".tmp-*"))


def test_keep_last_and_stale_tmp_dirs(tmp_path):
    (tmp_path / ".tmp-step_00000009-abc").mkdir()  # left by a run killed mid-write
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no step_"):
        resolve_checkpoint(tmp_path)


def test_rng_state_round_trip():
    state = json.loads(json.dumps(capture_rng_state()))  # must survive JSON
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(a[0], b[0])
    assert np.array_equal(a[1], b[1]) and a[2] == b[2]


KILL_SCRIPT = r"""
import sys
from sgcvq.config import smoke_config
from sgcvq.training import train
cfg = smoke_config(max_steps=100000, ckpt_every=2)
train(cfg, sys.argv[1])
"""


def test_sigkill_during_training_leaves_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 120
        # Wait until at least two checkpoints exist, so the kill lands while training continues.
        while len(list_checkpoints(out / "checkpoints")) < 2:
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stdout.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared within 120 s")
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = latest_checkpoint(out / "checkpoints")
    ckpt = load_checkpoint(last)
    assert ckpt["state"]["step"] >= 2 and ckpt["state"]["step"] % 2 == 0
    from sgcvq.tokenizer_io import load_tokenizer

    model, cfg, state = load_tokenizer(last)
    assert state["step"] == ckpt["state"]["step"]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert model.decode_indices(model.encode(x)).shape == x.shape
