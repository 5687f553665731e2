"""The `sgcvq` command line: help, errors, and train -> eval/report/compare -> encode/decode."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sgcvq.cli import main
from sgcvq.config import save_config, smoke_config


pytestmark = pytest.mark.usefixtures("one_thread")


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "report", "compare", "encode", "decode"):
        assert cmd in out
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0


def test_python_dash_m_runs():
    proc = subprocess.run([sys.executable, "-m", "sgcvq", "train", "--help"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "--max-steps" in proc.stdout


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--max-steps", "many"])
    assert exc.value.code == 2
    assert "--max-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fly"])
    assert main(["eval", "--ckpt", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err
    assert main(["train", "--out", str(tmp_path), "--set", "train.max_stepz=3"]) == 2
    assert "train.max_stepz" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint trained through the CLI from a YAML config."""
    root = tmp_path_factory.mktemp("cli")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    save_config(smoke_config(max_steps=2, ckpt_every=2), root / "tiny.yaml")
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(root / "run"),
                 "--set", "data.length=16", "--max-steps", "2"]) == 0
    torch.set_num_threads(n)
    return root


def test_train_then_eval_report_compare(trained, capsys):
    run = trained / "run"
    assert (run / "checkpoints" / "step_00000002").is_dir()
    assert main(["eval", "--ckpt", str(run), "--out", str(trained / "eval"), "--max-images", "4"]) == 0
    assert "psnr" in (trained / "eval" / "metrics.json").read_text()
    assert main(["report", "--ckpt", str(run), "--out", str(trained / "report"), "--max-images", "4"]) == 0
    assert (trained / "report" / "report.html").stat().st_size > 0
    assert main(["compare", "--sgc", str(run), "--baseline", str(run), "--out", str(trained / "cmp"),
                 "--max-images", "4"]) == 0
    header = (trained / "cmp" / "metrics.csv").read_text().splitlines()[0]
    assert header == "metric,SGC-VQGAN,plain VQ (baseline)"
    # Each model's figures (other figures, added by the report module, may come with them).
    for kind in ("recon", "usage", "pca", "per_class"):
        assert len(list((trained / "cmp").glob(f"{kind}_*.png"))) == 2, kind


def test_encode_decode_round_trip(trained, capsys):
    from sgcvq.data import SyntheticStreetScenes

    images, labels = trained / "imgs", trained / "labels"
    images.mkdir()
    labels.mkdir()
    ds = SyntheticStreetScenes(length=3, resolution=32, seed=5)
    for i in range(3):
        item = ds[i]
        arr = ((item["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(arr).save(images / f"im{i}.png")
        Image.fromarray(item["label"].numpy().astype(np.uint8)).save(labels / f"im{i}.png")
    run = trained / "run"
    assert main(["encode", "--ckpt", str(run), "--images", str(images), "--labels", str(labels),
                 "--out", str(trained / "tok")]) == 0
    grid = np.load(trained / "tok" / "im0.npy")
    assert grid.shape == (8, 8) and grid.dtype == np.int64  # 32x32 at f=4
    assert main(["encode", "--ckpt", str(run), "--images", str(images), "--out", str(trained / "tok_st"),
                 "--format", "safetensors"]) == 0
    assert main(["decode", "--ckpt", str(run), "--tokens", str(trained / "tok"), "--out", str(trained / "dec")]) == 0
    assert main(["decode", "--ckpt", str(run), "--tokens", str(trained / "tok_st" / "tokens.safetensors"),
                 "--out", str(trained / "dec_st")]) == 0
    for i in range(3):
        for d in ("dec", "dec_st"):
            assert Image.open(trained / d / f"im{i}.png").size == (32, 32)
    # Without labels the safetensors grids are label-free tokens of the same images, same shapes.
    from safetensors.torch import load_file

    st = load_file(str(trained / "tok_st" / "tokens.safetensors"))
    assert set(st) == {"im0", "im1", "im2"} and all(v.shape == (8, 8) for v in st.values())
    # Out-of-range tokens are refused with a message naming the grid.
    np.save(trained / "bad.npy", np.full((8, 8), 10**6, dtype=np.int64))
    assert main(["decode", "--ckpt", str(run), "--tokens", str(trained / "bad.npy"), "--out", str(trained / "x")]) == 2
    assert "bad" in capsys.readouterr().err
    # Re-encoding a decoded image is not required to give the same tokens, but decoding twice is
    # deterministic.
    assert main(["decode", "--ckpt", str(run), "--tokens", str(trained / "tok"), "--out", str(trained / "dec2")]) == 0
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(trained / "dec" / f"im{i}.png")),
                              np.asarray(Image.open(trained / "dec2" / f"im{i}.png")))


def test_resume_keeps_the_saved_run_length(trained, capsys):
    run = trained / "run"
    assert main(["train", "--out", str(run), "--resume"]) == 0  # saved max_steps = 2: nothing to do
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) == 0
    assert (run / "checkpoints" / "step_00000003").is_dir()
    assert main(["train", "--out", str(run), "--max-steps", "4"]) == 2  # fresh run over checkpoints
    assert "--resume" in capsys.readouterr().err


def test_example_configs_load_and_validate():
    from pathlib import Path

    from sgcvq.config import load_config

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        cfg.model.validate()
        assert cfg.model.resolution == cfg.data.resolution, f
