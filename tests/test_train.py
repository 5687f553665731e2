"""The training loop: learning, exact resume, accumulation/EMA/bf16/discriminator paths."""
import csv
import math
import shutil

import pytest
import torch

from sgcvq.checkpoint import list_checkpoints, load_checkpoint
from sgcvq.config import load_config, smoke_config
from sgcvq.training import Trainer, train
from sgcvq.training.build import build_train_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(run_dir):
    with open(run_dir / "train_log.csv", newline="") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def _fixed_batch_l1(model, cfg):
    ds = build_train_dataset(cfg.data)
    images = torch.stack([ds[i]["image"] for i in range(8)])
    labels = torch.stack([ds[i]["label"] for i in range(8)])
    model.eval()
    with torch.no_grad():
        out = model(images, labels=labels if cfg.model.num_classes else None)
    model.train()
    return (out.recon - images).abs().mean().item()


def test_few_steps_learn_and_checkpoint(tmp_path):
    cfg = smoke_config(max_steps=8, ckpt_every=4)
    cfg.optim.lr = 3e-3
    trainer = Trainer(cfg, tmp_path / "run")
    before = _fixed_batch_l1(trainer.model, cfg)
    result = trainer.run()
    after = _fixed_batch_l1(trainer.model, cfg)
    assert result.step == 8
    assert after < 0.9 * before, (before, after)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000004",
                                                                                    "step_00000008"]
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 9)) and all(math.isfinite(v) for v in losses.values())
    assert (tmp_path / "run" / "train_summary.json").stat().st_size > 0
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_continues_exactly(tmp_path):
    cfg = smoke_config(max_steps=4, ckpt_every=2)
    cfg.data.length = 12  # 3 batches per epoch: the resumed steps cross an epoch boundary
    full = train(cfg, tmp_path / "full")
    # A second run that only has the step-2 checkpoint, as if killed after it.
    half = tmp_path / "half"
    (half / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", half / "checkpoints" / "step_00000002")
    shutil.copy(tmp_path / "full" / "train_log.csv", half / "train_log.csv")  # has rows 3, 4 to be cut
    resumed = train(smoke_config(max_steps=4), half, resume="auto")
    assert resumed.step == 4
    a, b = _losses(tmp_path / "full"), _losses(half)
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert a[step] == b[step], (step, a[step], b[step])
    wa = load_checkpoint(full.checkpoint).group("model")
    wb = load_checkpoint(resumed.checkpoint).group("model")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    state = load_checkpoint(resumed.checkpoint)["state"]
    assert state["data"] == {"epoch": 1, "batch_in_epoch": 1}


def test_fresh_run_refuses_existing_checkpoints(tmp_path):
    cfg = smoke_config(max_steps=2, ckpt_every=2)
    train(cfg, tmp_path)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path)
    assert train(cfg, tmp_path, overwrite=True).step == 2


def test_accumulation_ema_bf16_and_discriminator(tmp_path):
    cfg = smoke_config(max_steps=2, ckpt_every=2)
    cfg.train.grad_accum = 2
    cfg.train.ema_decay = 0.9
    cfg.train.amp = "bf16"  # CPU autocast
    cfg.train.disc_start = 1
    cfg.optim.name = "adamw"
    result = train(cfg, tmp_path)
    assert result.step == 2
    assert math.isfinite(result.last_logs["loss"]) and math.isfinite(result.last_logs["d_loss"])
    ckpt = load_checkpoint(result.checkpoint)
    ema, model = ckpt.group("ema"), ckpt.group("model")
    assert ema.keys() == model.keys()
    assert any(not torch.equal(ema[k], model[k]) for k in model if model[k].is_floating_point())
    assert ckpt["optim"]["opt_d"]["state"], "the discriminator was never stepped"


def test_plain_vq_baseline_trains(tmp_path):
    cfg = smoke_config(num_classes=None, max_steps=2, ckpt_every=2)
    assert train(cfg, tmp_path).step == 2


def test_unreadable_files_are_skipped_and_reported(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 9, (32, 32), dtype=np.uint8)).save(root / "labels" / f"{i}.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "labels" / "broken.png")
    cfg = smoke_config(max_steps=1, ckpt_every=1)
    cfg.data.dataset, cfg.data.root, cfg.data.layout = "folder", str(root), "plain"
    with pytest.warns(UserWarning, match="skipped"):
        result = train(cfg, tmp_path / "run")
    assert result.skipped_files == 1
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["skipped_files"] == 1 and "broken.png" in summary["skipped"][0][0]
    with open(tmp_path / "run" / "train_log.csv", newline="") as fh:
        assert [r["data/skipped_files"] for r in csv.DictReader(fh)] == ["1.0"]
    assert load_checkpoint(result.checkpoint)["state"]["skipped_files"] == 1


def test_segmenter_provides_the_labels(tmp_path, monkeypatch, capsys):
    # A folder of images without label maps: `--segmenter module:function` supplies the labels.
    import numpy as np
    from PIL import Image

    from sgcvq.cli import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    (tmp_path / "toyseg.py").write_text(
        "import torch\n"
        "CALLS = []\n"
        "def segment(images):\n"
        "    CALLS.append(images.shape[0])\n"
        "    # class = brightness bucket of the red channel: a real, image-dependent label map\n"
        "    return ((images[:, 0] + 1) * 4.5).long().clamp(0, 8)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = smoke_config(max_steps=2, ckpt_every=2)
    cfg.data.dataset, cfg.data.root, cfg.data.layout = "folder", str(root), "plain"
    cfg.data.segmenter = "toyseg:segment"
    import toyseg

    result = train(cfg, tmp_path / "run")
    assert result.step == 2 and result.skipped_files == 0
    assert sum(toyseg.CALLS) >= 2 * cfg.data.batch_size  # every training image went through it
    assert load_config(tmp_path / "run" / "config.yaml").data.segmenter == "toyseg:segment"

    # The CLI flag sets the same field; an unknown segmenter is a clear error, not a traceback.
    code = main(["train", "--out", str(tmp_path / "bad"), "--max-steps", "1", "--data-root", str(root),
                 "--set", "data.layout=plain", "--segmenter", "no_such_module:segment", "--no-progress"])
    assert code == 2
    assert "no_such_module" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_across_loader_workers_and_cache(tmp_path, workers):
    # The uninterrupted run paints scenes in the main process; the resumed one reads them from the
    # scene cache through `workers` loader processes: the same batches, the same weights, bit for bit.
    cfg = smoke_config(max_steps=4, ckpt_every=2)
    cfg.data.length, cfg.data.num_workers, cfg.data.cache = 12, 0, None
    full = train(cfg, tmp_path / "full")
    half = tmp_path / "half"
    (half / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", half / "checkpoints" / "step_00000002")
    again = smoke_config(max_steps=4)
    again.data.num_workers, again.data.cache = workers, str(tmp_path / "cache")
    resumed = train(again, half, resume="auto")
    wa = load_checkpoint(full.checkpoint).group("model")
    wb = load_checkpoint(resumed.checkpoint).group("model")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert _losses(tmp_path / "full")[4] == _losses(half)[4]


def test_step_keeps_logs_on_the_device_and_reads_them_at_log_time(tmp_path):
    from sgcvq.training.loop import read_logs

    cfg = smoke_config(max_steps=3, ckpt_every=0)
    cfg.train.disc_start = 0
    trainer = Trainer(cfg, tmp_path)
    logs = trainer.train_step()
    assert {"loss", "psnr", "grad_norm/g", "d_loss", "grad_norm/d"} <= logs.keys()
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for k, v in logs.items() if k != "g/disc_factor"), logs
    values = read_logs(logs)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    assert values["loss"] == logs["loss"].item()
    result = trainer.run()
    assert all(isinstance(v, float) for v in result.last_logs.values())
    assert any(k.startswith("vq/") for k in result.last_logs)


def test_a_non_finite_loss_stops_the_run_naming_its_step(tmp_path, monkeypatch):
    cfg = smoke_config(max_steps=6, ckpt_every=1)
    trainer = Trainer(cfg, tmp_path)
    real = trainer.loss.generator_loss

    def poisoned(images, out, last_layer, global_step, disc):
        loss, logs = real(images, out, last_layer, global_step, disc)
        return (loss * float("nan"), logs) if global_step == 3 else (loss, logs)

    monkeypatch.setattr(trainer.loss, "generator_loss", poisoned)
    with pytest.raises(FloatingPointError, match="step 3: generator loss is nan"):
        trainer.run()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step_00000003"
    # Deferred checks (GPU runs read at log time) name the first bad step of the window.
    trainer._unchecked = [(7, torch.tensor(1.0)), (8, torch.tensor(float("inf"))), (9, torch.tensor(float("nan")))]
    with pytest.raises(FloatingPointError, match="step 8: generator loss is inf"):
        trainer.check_finite()


def test_channels_last_trains_like_the_default_layout(tmp_path):
    runs = {}
    for layout in (False, True):
        cfg = smoke_config(max_steps=2, ckpt_every=2)
        cfg.train.channels_last = layout
        cfg.train.disc_start = 1
        trainer = Trainer(cfg, tmp_path / str(layout))
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == layout
        runs[layout] = trainer.run()
    a, b = runs[False].last_logs, runs[True].last_logs
    assert a.keys() == b.keys()
    for key in ("loss", "psnr", "d_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
    with pytest.raises(ValueError, match="train.channels_last"):
        cfg = smoke_config()
        cfg.train.channels_last = "sometimes"
        Trainer(cfg, tmp_path / "bad")


def test_compile_trains_and_keeps_the_checkpoint_format(tmp_path):
    # torch.compile of the encoder, pyramid, decoder and discriminator (inductor on the CPU: ~30 s).
    eager_cfg = smoke_config(max_steps=2, ckpt_every=2)
    eager_cfg.train.disc_start = 1
    eager = train(eager_cfg, tmp_path / "eager")
    cfg = smoke_config(max_steps=2, ckpt_every=2)
    cfg.train.disc_start = 1
    cfg.train.compile = True
    compiled = train(cfg, tmp_path / "compiled")
    for key in ("loss", "d_loss"):
        assert compiled.last_logs[key] == pytest.approx(eager.last_logs[key], rel=1e-2), key
    a = load_checkpoint(eager.checkpoint).group("model")
    b = load_checkpoint(compiled.checkpoint).group("model")
    assert a.keys() == b.keys()  # compiled in place: no "_orig_mod." prefixes
    # The network weights agree up to Adam's step size: an early Adam step moves a weight by about lr
    # whatever its gradient's size, so a near-zero gradient whose sign differs by rounding gives up to
    # 2 * lr per step. The quantizer's state is left out (one token's code choice flipped by rounding
    # re-seeds a different code).
    bound = 2 * cfg.optim.lr * cfg.train.max_steps * 1.01
    for k in a:
        if a[k].is_floating_point() and not k.startswith("quantizer."):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=bound, msg=k)


def test_gpu_demo_config_is_the_same_model_at_64(tmp_path):
    import dataclasses

    from sgcvq.config import demo_config
    from sgcvq.model import SGCVQGAN
    from sgcvq.training.demo import DEMO_GPU_STEPS, DEMO_STEPS, demo_run_config

    assert demo_run_config(9, torch.device("cpu")) == demo_config(9, DEMO_STEPS)
    for classes in (9, None):
        cfg = demo_run_config(classes, torch.device("cuda"))  # built without a GPU: nothing runs on it
        small = demo_config(classes, DEMO_STEPS)
        assert (cfg.data.resolution, cfg.model.resolution, cfg.data.batch_size) == (64, 64, 32)
        assert cfg.train.max_steps == DEMO_GPU_STEPS and cfg.train.time_limit_s > 0
        for key in ("base_channels", "channel_mult", "embed_dim", "codebook_size", "num_classes", "group_sizes"):
            assert getattr(cfg.model, key) == getattr(small.model, key), key
        model = SGCVQGAN(cfg.model)
        ds = build_train_dataset(dataclasses.replace(cfg.data, length=2, cache=None))
        images = torch.stack([ds[i]["image"] for i in range(2)])
        labels = torch.stack([ds[i]["label"] for i in range(2)]) if classes else None
        model.eval()
        with torch.no_grad():
            assert model(images, labels=labels).recon.shape == (2, 3, 64, 64)
