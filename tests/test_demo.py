"""`sgcvq train --demo` end to end at a seconds-long size: every quantizer is in the report."""
import json

import pytest

from sgcvq.report import FIGURES
from sgcvq.training.demo import DEMO_MODELS, run_demo

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model.base_channels=8", "model.embed_dim=8", "model.codebook_size=32", "model.kmeans_iters=1",
         "model.disc_channels=8", "model.disc_layers=1", "data.length=32", "data.eval_length=8",
         "data.batch_size=4", "data.video_frames=2", "log.tensorboard=false"]


def test_demo_trains_and_reports_every_quantizer(tmp_path):
    report = run_demo(tmp_path, steps=2, overrides=SMALL, progress=False)
    html = report.read_text()
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert list(metrics) == [name for name, _, _ in DEMO_MODELS]
    for name, sub, kind in DEMO_MODELS:
        assert metrics[name]["train_steps"] == 2
        assert 0 < metrics[name]["token_purity"] <= 1  # label-free, for every model
        cfg = (tmp_path / sub / "config.yaml").read_text()
        assert f"quantizer: {kind}" in cfg
    assert "group_miou" in metrics["SGC-VQGAN"] and "group_miou" not in metrics["VQGAN"]
    for key, heading, _, _ in FIGURES:
        assert f"<section id='{key}'><h2>{heading}</h2>" in html


def test_demo_command_prints_the_four_models_table(tmp_path, capsys):
    from sgcvq.cli import main

    assert main(["train", "--demo", "--out", str(tmp_path), "--max-steps", "2", "--no-progress",
                 *[a for kv in SMALL for a in ("--set", kv)]]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for name, _, _ in DEMO_MODELS:
        assert name in header
    assert "PSNR" in out and "report:" in out
